package testenv

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TCPRelay forwards TCP connections to a server. When one side of a
// relayed connection ends, the relay closes the other. Blackhole makes it go
// silent without closing anything: both sides keep an open socket to the
// relay, nothing arrives any more, and neither hears of the other's end
// either. StallTowardClients makes every client look like one that stopped
// reading its socket. Cut closes every connection relayed so far. Close also
// closes connections still being set up when it runs, so that it returns at
// once: a connection accepted while closing is closed, not left to the
// server's handshake timeout.
type TCPRelay struct {
	ln       net.Listener
	server   string
	opts     TCPRelayOptions
	dropping atomic.Bool
	stalled  atomic.Bool
	done     chan struct{} // closed by Close

	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{}
	backs  map[net.Conn]struct{} // the relay's connections to the server
	wg     sync.WaitGroup
}

// TCPRelayOptions tune a TCPRelay.
type TCPRelayOptions struct {
	// SmallServerSockets gives the relay's connections to the server a
	// small receive buffer and a small MSS (which keeps the server's send
	// buffer small too), where the platform allows: once the relay stops
	// reading them, little fills them and the server's writes block.
	SmallServerSockets bool
}

// NewTCPRelay starts a relay on an ephemeral loopback port; t.Cleanup
// closes it.
func NewTCPRelay(t testing.TB, server string, opts ...TCPRelayOptions) *TCPRelay {
	return NewTCPRelayAt(t, "127.0.0.1:0", server, opts...)
}

// NewTCPRelayAt starts a relay listening on addr; t.Cleanup closes it.
func NewTCPRelayAt(t testing.TB, addr, server string, opts ...TCPRelayOptions) *TCPRelay {
	t.Helper()
	r, err := StartTCPRelay(addr, server, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

// StartTCPRelay starts a relay listening on addr, tuned by the last of
// opts if any; the caller must Close it.
func StartTCPRelay(addr, server string, opts ...TCPRelayOptions) (*TCPRelay, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	r := &TCPRelay{ln: ln, server: server, done: make(chan struct{}), conns: map[net.Conn]struct{}{}, backs: map[net.Conn]struct{}{}}
	if len(opts) > 0 {
		r.opts = opts[len(opts)-1]
	}
	r.wg.Add(1)
	go r.accept()
	return r, nil
}

// track registers c, or closes it and reports false once the relay is
// closed.
func (r *TCPRelay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		c.Close()
		return false
	}
	r.conns[c] = struct{}{}
	return true
}

func (r *TCPRelay) forget(c net.Conn) {
	r.mu.Lock()
	delete(r.conns, c)
	delete(r.backs, c)
	r.mu.Unlock()
	c.Close()
}

func (r *TCPRelay) accept() {
	defer r.wg.Done()
	d := net.Dialer{Timeout: 5 * time.Second}
	if r.opts.SmallServerSockets {
		d.Control = smallSocket
	}
	for {
		front, err := r.ln.Accept()
		if err != nil {
			return
		}
		if !r.track(front) {
			return
		}
		back, err := d.Dial("tcp", r.server)
		if err != nil {
			r.forget(front)
			continue
		}
		if !r.track(back) {
			r.forget(front)
			return
		}
		r.mu.Lock()
		r.backs[back] = struct{}{}
		r.mu.Unlock()
		r.wg.Add(2)
		go r.pump(front, back, false)
		go r.pump(back, front, true)
	}
}

// pump copies from one side to the other. When from ends, so does to,
// unless the relay has gone silent: a vanished peer's end is not passed on.
// Once stalled, a pump toward the client stops reading and leaves both
// connections open until Close.
func (r *TCPRelay) pump(from, to net.Conn, towardClient bool) {
	defer r.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, err := from.Read(buf)
		if towardClient && r.stalled.Load() {
			// StallTowardClients cut the read short, or raced with it:
			// what it returned is dropped.
			<-r.done
			return
		}
		if err != nil {
			break
		}
		if !r.dropping.Load() {
			if _, err := to.Write(buf[:n]); err != nil {
				break
			}
		}
	}
	r.forget(from)
	if !r.dropping.Load() {
		r.forget(to)
	}
}

// Addr is where clients should dial.
func (r *TCPRelay) Addr() string { return r.ln.Addr().String() }

// UpstreamAddrs are the addresses the server sees the relayed connections
// that are open now come from: one per client connection.
func (r *TCPRelay) UpstreamAddrs() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for c := range r.conns {
		// The relay's own connections to the server are those whose far
		// end is the server.
		if c.RemoteAddr().String() == r.server {
			out = append(out, c.LocalAddr().String())
		}
	}
	return out
}

// Blackhole drops every byte from now on, keeping the connections open.
func (r *TCPRelay) Blackhole() { r.dropping.Store(true) }

// StallTowardClients stops forwarding toward the clients, at once and for
// good, without closing anything: the relay stops reading what the server
// sends (reads in progress are cut short and their data dropped), so the
// server's socket buffers fill and its writes block, as they do toward a
// client that stopped reading its socket. What the clients send still
// reaches the server.
func (r *TCPRelay) StallTowardClients() {
	r.stalled.Store(true)
	r.mu.Lock()
	defer r.mu.Unlock()
	for c := range r.backs {
		c.SetReadDeadline(time.Unix(1, 0))
	}
}

// Cut closes the connections relayed so far; new ones are still accepted.
func (r *TCPRelay) Cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for c := range r.conns {
		c.Close()
	}
}

// Close stops the relay, closes every connection and waits for its
// goroutines. It may be called more than once.
func (r *TCPRelay) Close() {
	r.mu.Lock()
	if !r.closed {
		r.closed = true
		close(r.done)
		r.ln.Close()
		for c := range r.conns {
			c.Close()
		}
	}
	r.mu.Unlock()
	r.wg.Wait()
}
