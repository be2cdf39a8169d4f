package brpc_test

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
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

// tcpRelay forwards one TCP connection at a time to a server. Blackhole
// makes it stop forwarding without closing anything: both sides keep an
// open socket to the relay, and nothing arrives any more.
type tcpRelay struct {
	ln       net.Listener
	server   string
	dropping atomic.Bool
	mu       sync.Mutex
	closed   bool
	conns    []net.Conn
	wg       sync.WaitGroup
}

func newTCPRelay(t *testing.T, server string) *tcpRelay {
	return newTCPRelayAt(t, "127.0.0.1:0", server)
}

// newTCPRelayAt is a tcpRelay listening on addr.
func newTCPRelayAt(t *testing.T, addr, server string) *tcpRelay {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	r := &tcpRelay{ln: ln, server: server}
	r.wg.Add(1)
	go r.accept()
	t.Cleanup(r.close)
	return r
}

func (r *tcpRelay) accept() {
	defer r.wg.Done()
	for {
		front, err := r.ln.Accept()
		if err != nil {
			return
		}
		back, err := net.Dial("tcp", r.server)
		if err != nil {
			front.Close()
			continue
		}
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			front.Close()
			back.Close()
			return
		}
		r.conns = append(r.conns, front, back)
		r.mu.Unlock()
		r.wg.Add(2)
		go r.pump(front, back)
		go r.pump(back, front)
	}
}

func (r *tcpRelay) pump(from, to net.Conn) {
	defer r.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, err := from.Read(buf)
		if err != nil {
			return
		}
		if !r.dropping.Load() {
			if _, err := to.Write(buf[:n]); err != nil {
				return
			}
		}
	}
}

// Addr is where clients should dial.
func (r *tcpRelay) Addr() string { return r.ln.Addr().String() }

// Blackhole drops every byte from now on.
func (r *tcpRelay) Blackhole() { r.dropping.Store(true) }

// Cut closes the connections relayed so far; new ones are still accepted.
func (r *tcpRelay) Cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.conns {
		c.Close()
	}
	r.conns = nil
}

func (r *tcpRelay) close() {
	r.ln.Close()
	r.mu.Lock()
	r.closed = true
	for _, c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}
