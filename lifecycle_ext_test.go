package brpc_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/testenv"
	"github.com/brpc-go/brpc/internal/testpb"
)

// callsBothWays connects a client "alice" to a plain env on tr and starts
// a call of the given length in each direction; it returns once both are
// in their handlers, with where their errors will go.
func callsBothWays(t *testing.T, tr string, sleep time.Duration) (e *testenv.Env, c *testenv.Client, rev testpb.EchoClient, fwd, back <-chan error) {
	t.Helper()
	e = testenv.NewPlainOn(t, tr)
	c = e.Connect(testenv.ClientConfig{Name: "alice"})
	rev, err := e.Srv.Client(c.ID())
	if err != nil {
		t.Fatal(err)
	}
	// Warm both gRPC connections so both calls are in flight at once.
	testenv.Warm(t, c.Echo, rev)
	fwd = testenv.Inflight(c.Echo, sleep)
	back = testenv.Inflight(rev, sleep)
	testenv.WaitFor(t, 5*time.Second, "both calls to reach their handlers", func() bool {
		return e.Echo.Sleeping() == 1 && c.Service.Sleeping() == 1
	})
	return e, c, rev, fwd, back
}

func TestGracefulStopDrainsBothDirections(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		e, c, rev, fwd, back := callsBothWays(t, tr, 500*time.Millisecond)

		stopped := make(chan struct{})
		go func() { e.Srv.GracefulStop(); close(stopped) }()

		if err := <-fwd; err != nil {
			t.Errorf("forward call in flight during GracefulStop: %v, want success", err)
		}
		if err := <-back; err != nil {
			t.Errorf("reverse call in flight during GracefulStop: %v, want success", err)
		}
		select {
		case <-stopped:
		case <-time.After(10 * time.Second):
			t.Fatal("GracefulStop did not return after the calls drained")
		}
		_, err := rev.Unary(testenv.Ctx(t), &testpb.EchoRequest{})
		testenv.WantCode(t, err, codes.Unavailable, "reverse call after GracefulStop")
		_, err = c.Echo.Unary(testenv.Ctx(t), &testpb.EchoRequest{})
		testenv.WantCode(t, err, codes.Unavailable, "forward call after GracefulStop")
		if n := len(e.Srv.Peers()); n != 0 {
			t.Fatalf("%d peers listed after GracefulStop", n)
		}
	})
}

func TestStopEndsCallsWithUnavailable(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		e, _, _, fwd, back := callsBothWays(t, tr, 10*time.Second)
		start := time.Now()
		e.Srv.Stop()
		for what, ch := range map[string]<-chan error{"forward": fwd, "reverse": back} {
			select {
			case err := <-ch:
				testenv.WantCode(t, err, codes.Unavailable, what+" call in flight during Stop")
			case <-time.After(5 * time.Second):
				t.Fatalf("%s call still hanging 5s after Stop", what)
			}
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Fatalf("Stop and the end of its calls took %v", took)
		}
	})
}

func TestVanishedClientIsDroppedWithinKeepaliveTimeout(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		const timeout = 600 * time.Millisecond
		gone := make(chan brpc.PeerEvent, 1)
		e := testenv.New(t, testenv.Config{
			Transport: tr,
			ServerOpts: []brpc.ServerOption{
				brpc.WithKeepalive(100*time.Millisecond, timeout),
				brpc.WithPeerEvents(func(ev brpc.PeerEvent) {
					if ev.Type == brpc.PeerDisconnected {
						select {
						case gone <- ev:
						default: // only the first one is checked
						}
					}
				}),
			},
			Call: func(*testenv.Env) func(context.Context) (string, error) { return nil },
		})
		// The client reaches the server through a relay that can go silent.
		var relayAddr string
		var blackhole func()
		if tr == "tcp" {
			r := testenv.NewTCPRelay(t, e.Addr)
			relayAddr, blackhole = r.Addr(), r.Blackhole
		} else {
			r := testenv.NewUDPRelay(t, e.Addr, testenv.Faults{}, 0)
			relayAddr, blackhole = r.Addr(), r.Blackhole
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		gs := grpc.NewServer()
		ghost := &testenv.Echo{Name: "ghost"}
		testpb.RegisterEchoServer(gs, ghost)
		defer gs.Stop()
		cc, err := brpc.Dial(ctx, tr+"://"+relayAddr, brpc.WithTLSConfig(e.CA.ClientTLS()), brpc.WithServer(gs),
			brpc.WithKeepalive(100*time.Millisecond, timeout))
		if err != nil {
			t.Fatalf("Dial through the relay: %v", err)
		}
		defer cc.Close()
		rev, err := e.Srv.Client(cc.ID())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := rev.Unary(testenv.Ctx(t), &testpb.EchoRequest{}); err != nil {
			t.Fatalf("reverse call before vanishing: %v", err)
		}
		// Let the session stay idle past several keepalive intervals: it must
		// survive quiet periods while the network works.
		time.Sleep(3 * timeout)
		if len(e.Srv.Peers()) != 1 {
			t.Fatal("an idle but healthy client was dropped")
		}

		back := testenv.Inflight(rev, 10*time.Second)
		fwd := testenv.Inflight(testpb.NewEchoClient(cc), 10*time.Second)
		testenv.WaitFor(t, 5*time.Second, "both calls to reach their handlers", func() bool {
			return e.Echo.Sleeping() == 1 && ghost.Sleeping() == 1
		})
		blackhole()
		vanished := time.Now()

		bound := timeout + 2*time.Second // generous: timers, scheduling under -race
		for what, ch := range map[string]<-chan error{"reverse": back, "forward": fwd} {
			select {
			case err := <-ch:
				testenv.WantCode(t, err, codes.Unavailable, what+" call to a vanished peer")
			case <-time.After(bound):
				t.Fatalf("%s call still hanging %v after the peer vanished", what, bound)
			}
		}
		testenv.WaitFor(t, bound, "the vanished client to leave Peers()", func() bool { return len(e.Srv.Peers()) == 0 })
		t.Logf("vanished peer detected after %v (timeout %v)", time.Since(vanished).Round(time.Millisecond), timeout)
		select {
		case ev := <-gone:
			if ev.Kind != brpc.DisconnectKeepaliveTimeout {
				t.Errorf("disconnect of the vanished client reported as %q (%s), want %q", ev.Kind, ev.Reason, brpc.DisconnectKeepaliveTimeout)
			}
		case <-time.After(bound):
			t.Fatal("no disconnect event for the vanished client")
		}
		_, err = e.Srv.Client(cc.ID())
		testenv.WantCode(t, err, codes.NotFound, "Client of a vanished client")
		_, err = rev.Unary(testenv.Ctx(t), &testpb.EchoRequest{})
		testenv.WantCode(t, err, codes.Unavailable, "a kept stub of a vanished client")
	})
}

func TestDuplicateIDReplacesOlderSession(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		same := func(ctx context.Context, info brpc.AuthInfo) (string, error) { return "device-1", nil }
		e := testenv.New(t, testenv.Config{
			Transport:  tr,
			ServerOpts: []brpc.ServerOption{brpc.WithAuthenticator(same)},
			Call:       func(*testenv.Env) func(context.Context) (string, error) { return nil },
		})
		old := e.Connect(testenv.ClientConfig{Name: "old"})
		oldStub, _ := e.Srv.Client("device-1")
		if _, err := oldStub.Unary(testenv.Ctx(t), &testpb.EchoRequest{}); err != nil {
			t.Fatal(err)
		}
		pending := testenv.Inflight(oldStub, 10*time.Second)
		testenv.WaitFor(t, 5*time.Second, "the call to reach the old client's handler", func() bool { return old.Service.Sleeping() == 1 })

		e.Connect(testenv.ClientConfig{Name: "new"})
		select {
		case err := <-pending:
			testenv.WantCode(t, err, codes.Unavailable, "pending call of the replaced session")
		case <-time.After(5 * time.Second):
			t.Fatal("the replaced session's pending call did not end")
		}
		stub, err := e.Srv.Client("device-1")
		if err != nil {
			t.Fatal(err)
		}
		r, err := stub.Unary(testenv.Ctx(t), &testpb.EchoRequest{Message: "who"})
		if err != nil || r.GetMessage() != "new:who" {
			t.Fatalf("Client(device-1) reached %q (%v), want the newer session", r.GetMessage(), err)
		}
		if peers := e.Srv.Peers(); len(peers) != 1 {
			t.Fatalf("Peers() = %+v, want one entry", peers)
		}
		_ = old
	})
}

func TestGRPCDialOptionsReachBrpcConnections(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		var serverSide, clientSide atomic.Int32
		var mu sync.Mutex
		var peerIDs []string
		count := func(n *atomic.Int32) grpc.UnaryClientInterceptor {
			return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
				n.Add(1)
				return invoker(metadata.AppendToOutgoingContext(ctx, "x-echo-intercepted", "yes"), method, req, reply, cc, opts...)
			}
		}
		// The application's own server interceptor sees brpc's peer.
		seePeer := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			if p, ok := brpc.PeerFromContext(ctx); ok {
				mu.Lock()
				peerIDs = append(peerIDs, p.ID)
				mu.Unlock()
			}
			return handler(ctx, req)
		}
		e := testenv.New(t, testenv.Config{
			Transport:  tr,
			ServerOpts: []brpc.ServerOption{brpc.WithGRPCDialOptions(grpc.WithChainUnaryInterceptor(count(&serverSide)))},
			GRPCOpts:   []grpc.ServerOption{grpc.ChainUnaryInterceptor(seePeer)},
		})
		c := e.Connect(testenv.ClientConfig{Name: "alice", Opts: []brpc.DialOption{
			brpc.WithGRPCDialOptions(grpc.WithChainUnaryInterceptor(count(&clientSide))),
		}})
		var header metadata.MD
		if _, err := c.Echo.Unary(testenv.Ctx(t), &testpb.EchoRequest{}, grpc.Header(&header)); err != nil {
			t.Fatal(err)
		}
		if clientSide.Load() != 1 || serverSide.Load() != 1 {
			t.Fatalf("interceptor calls: client side %d, server side (reverse) %d; want 1 and 1", clientSide.Load(), serverSide.Load())
		}
		if got := header.Get("x-echo-intercepted"); len(got) != 1 {
			t.Fatalf("the client interceptor's metadata did not reach the server: header %v", header)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(peerIDs) != 1 || peerIDs[0] != c.ID() {
			t.Fatalf("application interceptor saw peers %v, want [%s]", peerIDs, c.ID())
		}
	})
}
