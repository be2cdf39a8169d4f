package session

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// relay forwards one transport's traffic between a client and a listener,
// and can be made to drop everything, both ways, as a middlebox that
// blackholes a path does: the connection stays open, nothing arrives.
type relay interface {
	addr() string
	blackhole()
}

// newRelay starts a relay to target for tr; the test's cleanup stops it.
func newRelay(t *testing.T, tr transport, target net.Addr) relay {
	t.Helper()
	if tr.name == TransportQUIC {
		return newUDPRelay(t, target.(*net.UDPAddr))
	}
	return newTCPRelay(t, target.String())
}

// udpRelay relays the datagrams of one client.
type udpRelay struct {
	front   *net.UDPConn // the client's side
	back    *net.UDPConn // the server's side
	target  *net.UDPAddr
	client  atomic.Pointer[net.UDPAddr]
	dropAll atomic.Bool
	wg      sync.WaitGroup
}

func newUDPRelay(t *testing.T, target *net.UDPAddr) *udpRelay {
	t.Helper()
	loop := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
	front, err := net.ListenUDP("udp", loop)
	if err != nil {
		t.Fatalf("relay socket: %v", err)
	}
	back, err := net.ListenUDP("udp", loop)
	if err != nil {
		front.Close()
		t.Fatalf("relay socket: %v", err)
	}
	r := &udpRelay{front: front, back: back, target: target}
	r.wg.Go(func() {
		buf := make([]byte, 64<<10)
		for {
			n, from, err := front.ReadFromUDP(buf)
			if err != nil {
				return
			}
			r.client.Store(from)
			if !r.dropAll.Load() {
				_, _ = back.WriteToUDP(buf[:n], target)
			}
		}
	})
	r.wg.Go(func() {
		buf := make([]byte, 64<<10)
		for {
			n, _, err := back.ReadFromUDP(buf)
			if err != nil {
				return
			}
			if c := r.client.Load(); c != nil && !r.dropAll.Load() {
				_, _ = front.WriteToUDP(buf[:n], c)
			}
		}
	})
	t.Cleanup(func() {
		front.Close()
		back.Close()
		r.wg.Wait()
	})
	return r
}

func (r *udpRelay) addr() string { return r.front.LocalAddr().String() }
func (r *udpRelay) blackhole()   { r.dropAll.Store(true) }

// tcpRelay relays TCP connections, copying bytes both ways.
type tcpRelay struct {
	ln      net.Listener
	target  string
	dropAll atomic.Bool
	wg      sync.WaitGroup

	mu     sync.Mutex
	conns  []net.Conn
	closed bool
}

func newTCPRelay(t *testing.T, target string) *tcpRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("relay listener: %v", err)
	}
	r := &tcpRelay{ln: ln, target: target}
	r.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			if !r.track(c, s) {
				return
			}
			r.wg.Go(func() { r.pipe(s, c) })
			r.wg.Go(func() { r.pipe(c, s) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		r.mu.Lock()
		r.closed = true
		for _, c := range r.conns {
			c.Close()
		}
		r.mu.Unlock()
		r.wg.Wait()
	})
	return r
}

// track records conns for the cleanup; false once it ran.
func (r *tcpRelay) track(conns ...net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		for _, c := range conns {
			c.Close()
		}
		return false
	}
	r.conns = append(r.conns, conns...)
	return true
}

// pipe copies from src to dst, dropping the bytes once blackholed; it
// ends when either side is closed. A blackholed path does not pass a close
// on either: the other side hears nothing more.
func (r *tcpRelay) pipe(dst, src net.Conn) {
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			if !r.dropAll.Load() {
				dst.Close()
			}
			return
		}
		if r.dropAll.Load() {
			continue
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}

func (r *tcpRelay) addr() string { return r.ln.Addr().String() }
func (r *tcpRelay) blackhole()   { r.dropAll.Store(true) }

// TestKeepaliveDetectsSilentPeer runs a session through a relay that starts
// dropping everything: each side's keepalive goes unanswered, and both end
// the session with EndKeepaliveTimeout within the idle timeout (give or
// take a probe), not later and not as a lost connection.
func TestKeepaliveDetectsSilentPeer(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		conf := Settings{KeepAlive: 50 * time.Millisecond, IdleTimeout: 500 * time.Millisecond}
		ln := listen(t, tr, conf)
		r := newRelay(t, tr, ln.Addr())
		client, server := connect(t, tr, ln, r.addr(), conf)
		o, a := streamPair(t, client, server)

		// While the relay forwards, keepalives hold a quiet session up well
		// past its idle timeout.
		select {
		case <-client.Context().Done():
			t.Fatalf("a quiet session ended through a working relay: %v", context.Cause(client.Context()))
		case <-server.Context().Done():
			t.Fatalf("a quiet session ended through a working relay: %v", context.Cause(server.Context()))
		case <-time.After(3 * conf.IdleTimeout):
		}
		if _, err := o.Write([]byte("x")); err != nil {
			t.Fatalf("Write after the quiet period: %v", err)
		}
		if _, err := a.Read(make([]byte, 1)); err != nil {
			t.Fatalf("Read after the quiet period: %v", err)
		}

		r.blackhole()
		start := time.Now()
		for _, side := range []struct {
			name string
			sess Session
		}{{"client", client}, {"server", server}} {
			e := awaitEnd(t, side.name, side.sess)
			if e.Kind != EndKeepaliveTimeout {
				t.Errorf("%s's Ending through a blackholed path = %+v (cause %v), want %v", side.name, e, context.Cause(side.sess.Context()), EndKeepaliveTimeout)
			}
		}
		t.Logf("both sides ended %v after the path went silent", time.Since(start))
	})
}
