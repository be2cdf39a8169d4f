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
// and can be made to drop everything, one way or both, as a middlebox that
// blackholes a path does: the connection stays open, nothing arrives.
type relay interface {
	addr() string
	blackhole(d direction)
}

// direction is which of a relayed path's directions a blackhole drops.
type direction int

const (
	toServer direction = 1 << iota // what the client sends
	toClient                       // what the server sends
	bothWays = toServer | toClient
)

func (d direction) String() string {
	switch d {
	case toServer:
		return "client to server"
	case toClient:
		return "server to client"
	}
	return "both ways"
}

// newRelay starts a relay to target for tr; the test's cleanup stops it.
func newRelay(t *testing.T, tr transport, target net.Addr) relay {
	t.Helper()
	if tr.name == TransportQUIC {
		return newUDPRelay(t, target.(*net.UDPAddr))
	}
	return newTCPRelay(t, target.String())
}

// blackholes is what a relay drops: the directions blackhole named.
type blackholes struct{ drop atomic.Int32 }

func (b *blackholes) blackhole(d direction)    { b.drop.Store(int32(d)) }
func (b *blackholes) dropped(d direction) bool { return direction(b.drop.Load())&d != 0 }

// udpRelay relays the datagrams of one client and counts those it passes
// to the client.
type udpRelay struct {
	blackholes
	front  *net.UDPConn // the client's side
	back   *net.UDPConn // the server's side
	target *net.UDPAddr
	client atomic.Pointer[net.UDPAddr]
	wg     sync.WaitGroup

	sentToClient atomic.Int64
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
			if !r.dropped(toServer) {
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
			if c := r.client.Load(); c != nil && !r.dropped(toClient) {
				r.sentToClient.Add(1)
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

// tcpRelay relays TCP connections, copying bytes both ways.
type tcpRelay struct {
	blackholes
	ln     net.Listener
	target string
	wg     sync.WaitGroup

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
			r.wg.Go(func() { r.pipe(s, c, toServer) })
			r.wg.Go(func() { r.pipe(c, s, toClient) })
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

// pipe copies from src to dst, direction d, dropping the bytes once d is
// blackholed; it ends when either side is closed. A blackholed direction
// does not pass a close: the side it leads to hears nothing more.
func (r *tcpRelay) pipe(dst, src net.Conn, d direction) {
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			if !r.dropped(d) {
				dst.Close()
			}
			return
		}
		if r.dropped(d) {
			continue
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}

func (r *tcpRelay) addr() string { return r.ln.Addr().String() }

// TestKeepaliveDetectsSilentPeer runs a session through a relay that starts
// dropping everything one way, or both: whichever direction goes silent,
// both sides end the session, not as a lost connection: a side that hears
// nothing with EndKeepaliveTimeout, within the idle timeout of its last
// packet give or take a probe; a side that still hears its peer by its own
// keepalive timeout or, over TCP, by the close its peer sends when it gives
// up. Over QUIC, when only what the server sends is dropped, the server
// still hears the client's probes until the client has given up (silently),
// and ends an idle timeout after that.
func TestKeepaliveDetectsSilentPeer(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		for _, d := range []direction{bothWays, toServer, toClient} {
			t.Run(d.String(), func(t *testing.T) {
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

				r.blackhole(d)
				start := time.Now()
				for _, side := range []struct {
					name string
					sess Session
					deaf bool // what it would receive is dropped
				}{{"client", client, d&toClient != 0}, {"server", server, d&toServer != 0}} {
					e := awaitEnd(t, side.name, side.sess)
					// A side that still hears its peer may also hear it close
					// (a TCP FIN) once the peer has given up.
					if e.Kind != EndKeepaliveTimeout && (side.deaf || e.Kind != EndClosed || !e.ByPeer) {
						t.Errorf("%s's Ending through a path blackholed %v = %+v (cause %v), want %v", side.name, d, e, context.Cause(side.sess.Context()), EndKeepaliveTimeout)
					}
					t.Logf("%s ended %v after the path went silent %v: %v", side.name, time.Since(start), d, e.Kind)
				}
			})
		}
	})
}

// TestQUICListenerLeavesProbingToTheClient shows that over QUIC only the
// dialing side sends keepalive probes: a client that does not probe hears
// nothing from the server while their session is quiet, however short the
// server's keepalive interval, and the server, which heard nothing either,
// declares it dead after the idle timeout. (A probing client holds the
// session up: TestKeepaliveDetectsSilentPeer.)
func TestQUICListenerLeavesProbingToTheClient(t *testing.T) {
	tr := transports[0]
	if tr.name != TransportQUIC {
		t.Fatalf("transports[0] is %s, want %s", tr.name, TransportQUIC)
	}
	conf := Settings{KeepAlive: 20 * time.Millisecond, IdleTimeout: 800 * time.Millisecond}
	ln := listen(t, tr, conf)
	r := newUDPRelay(t, ln.Addr().(*net.UDPAddr))
	client, server := connect(t, tr, ln, r.addr(), Settings{IdleTimeout: conf.IdleTimeout}) // KeepAlive 0: no probes
	streamPair(t, client, server)

	// What the handshake and the stream leave to send (acknowledgements,
	// session tickets, path MTU probes) is sent within a few round trips
	// of loopback; after that the session is quiet.
	time.Sleep(10 * conf.KeepAlive)
	quiet := r.sentToClient.Load()
	e := awaitEnd(t, "server", server)
	if e.Kind != EndKeepaliveTimeout {
		t.Errorf("server's Ending with a client that does not probe = %+v (cause %v), want %v", e, context.Cause(server.Context()), EndKeepaliveTimeout)
	}
	if n := r.sentToClient.Load() - quiet; n != 0 {
		t.Errorf("the server sent %d datagrams to a quiet client in %v; want none (keepalive probes are the client's)", n, conf.IdleTimeout)
	}
}
