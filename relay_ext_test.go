package brpc_test

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// udpRelay forwards datagrams between one client and a server on loopback.
// Blackhole makes it drop everything from then on, in both directions: to
// each side the other has vanished without a word.
type udpRelay struct {
	front    *net.UDPConn // the client talks to this
	back     *net.UDPConn // this talks to the server
	dropping atomic.Bool
	client   atomic.Pointer[net.UDPAddr]
	wg       sync.WaitGroup
}

func newUDPRelay(t *testing.T, server string) *udpRelay {
	t.Helper()
	front, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	sa, err := net.ResolveUDPAddr("udp", server)
	if err != nil {
		t.Fatal(err)
	}
	back, err := net.DialUDP("udp", nil, sa)
	if err != nil {
		t.Fatal(err)
	}
	r := &udpRelay{front: front, back: back}
	r.wg.Add(2)
	go r.pump(func(b []byte) (int, error) {
		n, from, err := front.ReadFromUDP(b)
		if err == nil {
			r.client.Store(from)
		}
		return n, err
	}, func(b []byte) { back.Write(b) })
	go r.pump(back.Read, func(b []byte) {
		if c := r.client.Load(); c != nil {
			front.WriteToUDP(b, c)
		}
	})
	t.Cleanup(r.close)
	return r
}

func (r *udpRelay) pump(read func([]byte) (int, error), write func([]byte)) {
	defer r.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, err := read(buf)
		if err != nil {
			return
		}
		if !r.dropping.Load() {
			write(buf[:n])
		}
	}
}

// Addr is where clients should dial.
func (r *udpRelay) Addr() string { return r.front.LocalAddr().String() }

// Blackhole drops every datagram from now on.
func (r *udpRelay) Blackhole() { r.dropping.Store(true) }

// Restore forwards datagrams again.
func (r *udpRelay) Restore() { r.dropping.Store(false) }

func (r *udpRelay) close() {
	r.front.Close()
	r.back.Close()
	r.wg.Wait()
}

// tcpRelay forwards TCP connections to a server. When one side of a
// relayed connection ends, the relay closes the other. Blackhole makes it go
// silent without closing anything: both sides keep an open socket to the
// relay, nothing arrives any more, and neither hears of the other's end
// either. Cut closes every connection relayed so far. Close also closes
// connections still being set up when it runs, so that it returns at once:
// a connection accepted while closing is closed, not left to the server's
// handshake timeout.
type tcpRelay struct {
	ln       net.Listener
	server   string
	dropping atomic.Bool

	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

func newTCPRelay(t *testing.T, server string) *tcpRelay {
	return newTCPRelayAt(t, "127.0.0.1:0", server)
}

// newTCPRelayAt starts a relay listening on addr; t.Cleanup closes it.
func newTCPRelayAt(t *testing.T, addr, server string) *tcpRelay {
	t.Helper()
	r, err := startTCPRelay(addr, server)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

// startTCPRelay starts a relay listening on addr; the caller must Close it.
func startTCPRelay(addr, server string) (*tcpRelay, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	r := &tcpRelay{ln: ln, server: server, conns: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go r.accept()
	return r, nil
}

// track registers c, or closes it and reports false once the relay is
// closed.
func (r *tcpRelay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		c.Close()
		return false
	}
	r.conns[c] = struct{}{}
	return true
}

func (r *tcpRelay) forget(c net.Conn) {
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
	c.Close()
}

func (r *tcpRelay) accept() {
	defer r.wg.Done()
	for {
		front, err := r.ln.Accept()
		if err != nil {
			return
		}
		if !r.track(front) {
			return
		}
		back, err := net.DialTimeout("tcp", r.server, 5*time.Second)
		if err != nil {
			r.forget(front)
			continue
		}
		if !r.track(back) {
			r.forget(front)
			return
		}
		r.wg.Add(2)
		go r.pump(front, back)
		go r.pump(back, front)
	}
}

// pump copies from one side to the other. When from ends, so does to,
// unless the relay has gone silent: a vanished peer's end is not passed on.
func (r *tcpRelay) pump(from, to net.Conn) {
	defer r.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, err := from.Read(buf)
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
func (r *tcpRelay) Addr() string { return r.ln.Addr().String() }

// Blackhole drops every byte from now on, keeping the connections open.
func (r *tcpRelay) Blackhole() { r.dropping.Store(true) }

// Cut closes the connections relayed so far; new ones are still accepted.
func (r *tcpRelay) Cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for c := range r.conns {
		c.Close()
	}
}

// Close stops the relay, closes every connection and waits for its
// goroutines. It may be called more than once.
func (r *tcpRelay) Close() {
	r.mu.Lock()
	if !r.closed {
		r.closed = true
		r.ln.Close()
		for c := range r.conns {
			c.Close()
		}
	}
	r.mu.Unlock()
	r.wg.Wait()
}
