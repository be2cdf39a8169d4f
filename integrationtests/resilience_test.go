package integrationtests

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/testenv"
	"github.com/brpc-go/brpc/internal/testpb"
)

// fastBackoff keeps reconnect tests short.
var fastBackoff = backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 400 * time.Millisecond}

// restartable is a server that can be stopped and started again on the same
// address, as a restarted process would.
type restartable struct {
	t    *testing.T
	e    *testenv.Env // its ca, for certificates; its own server is stopped
	cfg  testenv.Config
	addr string

	mu  sync.Mutex
	cur *testenv.Serving
}

// restartOn stops e's own server and runs a restartable one with cfg on its
// address instead, stopped by t.Cleanup.
func restartOn(t *testing.T, e *testenv.Env, cfg testenv.Config) *restartable {
	t.Helper()
	e.Srv.Stop()
	r := &restartable{t: t, e: e, cfg: cfg, addr: e.Addr}
	r.start()
	t.Cleanup(r.stop)
	return r
}

// connectNamed connects n clients named prefix0, prefix1, … (the name also
// in their metadata, for byNameFromMetadata) that reconnect quickly.
func connectNamed(e *testenv.Env, n int, prefix string) []*testenv.Client {
	var clients []*testenv.Client
	for i := range n {
		name := fmt.Sprint(prefix, i)
		clients = append(clients, e.Connect(testenv.ClientConfig{Name: name, MD: metadata.Pairs("name", name),
			Opts: []brpc.DialOption{brpc.WithConnectBackoff(fastBackoff)}}))
	}
	return clients
}

// restartNamed starts a restartable server on transport tr that names its
// clients by their metadata, and connects n clients named prefix0,
// prefix1, … to it.
func restartNamed(t *testing.T, tr string, n int, prefix string) (*restartable, []*testenv.Client) {
	t.Helper()
	cfg := testenv.Config{Transport: tr, ServerOpts: []brpc.ServerOption{brpc.WithAuthenticator(byNameFromMetadata)}}
	e := testenv.New(t, cfg)
	r := restartOn(t, e, cfg)
	clients := connectNamed(e, n, prefix)
	testenv.WaitFor(t, 10*time.Second, "all clients to connect", func() bool { return len(r.srv().Peers()) == n })
	return r, clients
}

// srv is the server running now.
func (r *restartable) srv() *brpc.Server[testpb.EchoClient] {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cur == nil {
		return nil
	}
	return r.cur.Srv
}

func (r *restartable) start() {
	r.t.Helper()
	stls, err := r.e.CA.ServerTLS()
	if err != nil {
		r.t.Fatal(err)
	}
	var cur *testenv.Serving
	// The old socket may take a moment to be released.
	deadline := time.Now().Add(5 * time.Second)
	for {
		cur, err = testenv.StartServing(r.cfg.Transport, r.addr, stls, &testenv.Echo{Name: "server"}, nil, r.cfg.ServerOpts)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		r.t.Fatalf("listening again on %s: %v", r.addr, err)
	}
	r.mu.Lock()
	r.cur = cur
	r.mu.Unlock()
}

// stop stops the running server, if any, and waits for its Serve.
func (r *restartable) stop() {
	r.mu.Lock()
	cur := r.cur
	r.cur = nil
	r.mu.Unlock()
	if cur != nil {
		cur.Stop()
	}
}

func byNameFromMetadata(ctx context.Context, info brpc.AuthInfo) (string, error) {
	return info.Metadata.Get("name")[0], nil
}

func TestServerRestartWithManyClients(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		const n = 50
		r, clients := restartNamed(t, tr, n, "dev-")

		// A forward call that waits for ready spans the restart.
		waiting := make(chan error, 1)
		r.stop()
		for _, c := range clients[:5] {
			testenv.WaitFor(t, 5*time.Second, "a client to notice the server went away", func() bool { return c.GetState() != connectivity.Ready })
		}
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, err := clients[0].Echo.Unary(ctx, &testpb.EchoRequest{Message: "across"}, grpc.WaitForReady(true))
			waiting <- err
		}()
		// Without wait-for-ready, a call while disconnected fails fast.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := clients[1].Echo.Unary(ctx, &testpb.EchoRequest{})
		cancel()
		testenv.WantCode(t, err, codes.Unavailable, "a fail-fast call while the server is down")

		time.Sleep(300 * time.Millisecond) // clients back off while the server is down
		restarted := time.Now()
		r.start()
		// Backoff is at most MaxDelay (400ms) plus jitter: every client is
		// back within a few of those, even under the race detector.
		testenv.WaitFor(t, 10*time.Second, "all clients to reconnect", func() bool { return len(r.srv().Peers()) == n })
		t.Logf("%d clients back %v after the restart", n, time.Since(restarted).Round(time.Millisecond))

		for i, c := range clients {
			want := fmt.Sprint("dev-", i)
			if c.ID() != want {
				t.Fatalf("client %d has ID %q after reconnecting, want %q", i, c.ID(), want)
			}
			stub, err := r.srv().Client(want)
			if err != nil {
				t.Fatalf("Client(%q) after the restart: %v", want, err)
			}
			resp, err := stub.Unary(testenv.Ctx(t), &testpb.EchoRequest{Message: "again"})
			if err != nil || resp.GetMessage() != want+":again" {
				t.Fatalf("reverse call to %s after the restart: %q, %v", want, resp.GetMessage(), err)
			}
		}
		select {
		case err := <-waiting:
			if err != nil {
				t.Fatalf("wait-for-ready call across the restart: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the wait-for-ready call did not complete after the restart")
		}
		for _, c := range clients {
			if st := c.GetState(); st != connectivity.Ready {
				t.Fatalf("client %s is %v after reconnecting", c.ID(), st)
			}
		}
	})
}

func TestFallbackToTCPWhenUDPIsBlocked(t *testing.T) {
	for _, udp := range []string{"dropping", "absent"} {
		t.Run(udp, func(t *testing.T) {
			var e *testenv.Env
			if udp == "dropping" {
				// A UDP socket that swallows every datagram, as a firewall
				// that drops UDP would, and the TCP listener on its port
				// number.
				blackhole, err := net.ListenPacket("udp", "127.0.0.1:0")
				if err != nil {
					t.Fatalf("binding the UDP blackhole: %v", err)
				}
				defer blackhole.Close()
				_, port, _ := net.SplitHostPort(blackhole.LocalAddr().String())
				e = testenv.New(t, testenv.Config{Transport: "tcp", Addr: "127.0.0.1:" + port,
					Call: func(*testenv.Env) func(context.Context) (string, error) { return nil }})
				go func() {
					buf := make([]byte, 2048)
					for {
						if _, _, err := blackhole.ReadFrom(buf); err != nil {
							return
						}
					}
				}()
			} else {
				e = testenv.NewPlainOn(t, "tcp")
			}

			const delay = 200 * time.Millisecond
			start := time.Now()
			e.Target = e.Addr // bare host:port: QUIC first, then TCP
			c := e.Connect(testenv.ClientConfig{Name: "behind-firewall", Opts: []brpc.DialOption{brpc.WithFallbackDelay(delay)}})
			took := time.Since(start)
			peers := e.Srv.Peers()
			if len(peers) != 1 || peers[0].Transport != "tcp" {
				t.Fatalf("Peers() = %+v, want one client over tcp", peers)
			}
			if took > delay+2*time.Second {
				t.Fatalf("connecting took %v with a %v fallback delay", took, delay)
			}
			t.Logf("connected over tcp after %v (fallback delay %v)", took.Round(time.Millisecond), delay)
			if _, err := c.Echo.Unary(testenv.Ctx(t), &testpb.EchoRequest{}); err != nil {
				t.Fatalf("call over the fallback transport: %v", err)
			}
		})
	}
}

func TestBareTargetPrefersQUIC(t *testing.T) {
	e := testenv.NewPlain(t) // QUIC
	e.Target = e.Addr
	e.Connect(testenv.ClientConfig{Name: "x"})
	if peers := e.Srv.Peers(); len(peers) != 1 || peers[0].Transport != "quic" {
		t.Fatalf("Peers() = %+v, want one client over quic", peers)
	}
}

func TestReplacedClientStopsInsteadOfFightingBack(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		same := func(context.Context, brpc.AuthInfo) (string, error) { return "device-1", nil }
		e := testenv.New(t, testenv.Config{Transport: tr, ServerOpts: []brpc.ServerOption{brpc.WithAuthenticator(same)}})
		opts := []brpc.DialOption{brpc.WithConnectBackoff(fastBackoff)}
		old := e.Connect(testenv.ClientConfig{Name: "old", Opts: opts})
		e.Connect(testenv.ClientConfig{Name: "new", Opts: opts})
		testenv.WaitFor(t, 5*time.Second, "the replaced client to stop", func() bool { return old.GetState() == connectivity.Shutdown })
		// It stays stopped: the newer client keeps the ID.
		time.Sleep(500 * time.Millisecond)
		stub, err := e.Srv.Client("device-1")
		if err != nil {
			t.Fatal(err)
		}
		r, err := stub.Unary(testenv.Ctx(t), &testpb.EchoRequest{Message: "who"})
		if err != nil || r.GetMessage() != "new:who" {
			t.Fatalf("Client(device-1) reached %q (%v), want the newer client", r.GetMessage(), err)
		}
		_, err = old.Echo.Unary(testenv.Ctx(t), &testpb.EchoRequest{})
		testenv.WantCode(t, err, codes.Unavailable, "a call on the replaced client")
	})
}

func TestClientStateFollowsTheSession(t *testing.T) {
	// Over TCP a connection attempt to a stopped server fails at once; over
	// QUIC it waits for the handshake timeout. The states are the same.
	e := testenv.NewPlainOn(t, "tcp")
	r := restartOn(t, e, testenv.Config{Transport: "tcp"})
	c, err := e.Dial(testenv.ClientConfig{Name: "s", Opts: []brpc.DialOption{brpc.WithConnectBackoff(fastBackoff)}})
	if err != nil {
		t.Fatal(err)
	}
	if st := c.GetState(); st != connectivity.Ready {
		t.Fatalf("state after Dial = %v, want Ready", st)
	}
	ctx := testenv.Ctx(t)
	r.stop()
	if !c.WaitForStateChange(ctx, connectivity.Ready) {
		t.Fatal("no state change after the server stopped")
	}
	testenv.WaitFor(t, 5*time.Second, "TransientFailure while the server is down", func() bool { return c.GetState() == connectivity.TransientFailure })
	r.start()
	testenv.WaitFor(t, 10*time.Second, "Ready after the server is back", func() bool { return c.GetState() == connectivity.Ready })
	c.Shutdown()
	if st := c.GetState(); st != connectivity.Shutdown {
		t.Fatalf("state after Close = %v, want Shutdown", st)
	}
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if c.WaitForStateChange(short, connectivity.Shutdown) {
		t.Fatal("the state changed after Shutdown")
	}
}

func TestPeerEvents(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		var mu sync.Mutex
		var events []brpc.PeerEvent
		record := func(ev brpc.PeerEvent) {
			mu.Lock()
			events = append(events, ev)
			mu.Unlock()
		}
		count := func() int {
			mu.Lock()
			defer mu.Unlock()
			return len(events)
		}
		e := testenv.New(t, testenv.Config{Transport: tr, ServerOpts: []brpc.ServerOption{
			brpc.WithPeerEvents(record), brpc.WithKeepalive(100*time.Millisecond, 600*time.Millisecond),
		}})
		c := e.Connect(testenv.ClientConfig{Name: "a", MD: metadata.Pairs("k", "v")})
		testenv.WaitFor(t, 5*time.Second, "a connect event", func() bool { return count() == 1 })
		c.Shutdown()
		testenv.WaitFor(t, 5*time.Second, "a disconnect event", func() bool { return count() == 2 })
		mu.Lock()
		got := append([]brpc.PeerEvent(nil), events...)
		mu.Unlock()
		if got[0].Type != brpc.PeerConnected || got[0].Peer.ID != c.ID() || got[0].Peer.Transport != tr || got[0].Peer.Metadata.Get("k")[0] != "v" {
			t.Fatalf("first event %+v, want %s connected over %s with its metadata", got[0], c.ID(), tr)
		}
		if got[1].Type != brpc.PeerDisconnected || got[1].Peer.ID != c.ID() || got[1].Reason == "" {
			t.Fatalf("second event %+v, want %s disconnected with a reason", got[1], c.ID())
		}
		t.Logf("disconnect reason: %s", got[1].Reason)
	})
}

func TestReconnectTriesTheLastWinningTransportFirst(t *testing.T) {
	// One server with both transports, reached through a UDP relay and a TCP
	// relay that share a port number, so that a host:port target can use
	// either and UDP can be blocked and unblocked at will.
	quic := testenv.NewPlain(t)
	tcpAddr := quic.ServeAlso("tcp", "127.0.0.1:0")

	var udp *testenv.UDPRelay
	var tcp *testenv.TCPRelay
	testenv.WaitFor(t, 5*time.Second, "a port number free for both relays", func() bool {
		u := testenv.NewUDPRelay(t, quic.Addr, testenv.Faults{}, 0)
		_, port, _ := net.SplitHostPort(u.Addr())
		ln, err := net.Listen("tcp", "127.0.0.1:"+port)
		if err != nil {
			return false
		}
		ln.Close()
		udp, tcp = u, testenv.NewTCPRelayAt(t, "127.0.0.1:"+port, tcpAddr)
		return true
	})

	// UDP blocked: the client falls back to TCP.
	udp.Blackhole()
	quic.Target = udp.Addr()
	c := quic.Connect(testenv.ClientConfig{Name: "x", Opts: []brpc.DialOption{
		brpc.WithFallbackDelay(300 * time.Millisecond), brpc.WithConnectBackoff(fastBackoff),
	}})
	if p := quic.Srv.Peers(); len(p) != 1 || p[0].Transport != "tcp" {
		t.Fatalf("Peers() = %+v, want the client over tcp", p)
	}

	// UDP works again and the TCP connection is cut. Both transports now
	// answer at once: without a memory of the last winner, QUIC, which
	// starts first, would win the reconnect.
	first := c.ID() // without an Authenticator, each session gets a new ID
	udp.Restore()
	tcp.Cut()
	var now brpc.Peer
	testenv.WaitFor(t, 10*time.Second, "the client to reconnect", func() bool {
		for _, p := range quic.Srv.Peers() {
			if id := c.ID(); p.ID == id && id != first {
				now = p
				return true
			}
		}
		return false
	})
	if now.Transport != "tcp" {
		t.Fatalf("the client reconnected over %s, want tcp, the transport that won last time", now.Transport)
	}
	if _, err := c.Echo.Unary(testenv.Ctx(t), &testpb.EchoRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("call after reconnecting: %v", err)
	}
}
