package grpcglue

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/brpc-go/brpc/internal/testpb"
)

// namedEcho answers every unary call with its own name.
type namedEcho struct {
	testpb.UnimplementedEchoServer
	name string
}

func (e namedEcho) Unary(context.Context, *testpb.EchoRequest) (*testpb.EchoResponse, error) {
	return &testpb.EchoResponse{Message: e.name}, nil
}

// sharedClient is one client's *grpc.Server on a pipe, reached through a
// route of a SharedConn; cnt counts the connections it was dialed.
type sharedClient struct {
	pipe  *bufconn.Listener
	cnt   connCount
	route *Route
}

// connCount counts the connections a server accepted and those that ended.
type connCount struct {
	begun, ended chan struct{}
}

func startSharedClient(t *testing.T, s *SharedConn, name string) *sharedClient {
	t.Helper()
	c := &sharedClient{cnt: connCount{begun: make(chan struct{}, 16), ended: make(chan struct{}, 16)}}
	var info *SessionInfo
	c.pipe, info = serveEchoOnPipe(t, name, func(conn net.Conn) net.Conn {
		c.cnt.begun <- struct{}{}
		return &endNotifier{Conn: conn, ended: c.cnt.ended}
	})
	r, err := s.NewRoute(func(ctx context.Context) (net.Conn, error) {
		conn, err := c.pipe.DialContext(ctx)
		if err != nil {
			return nil, err
		}
		return NewStreamConn(conn, info), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	c.route = r
	return c
}

// serveEchoOnPipe serves the echo service, answering as name, on the
// connections of a new in-memory pipe, each passed through accepted
// first, and returns the pipe and the session info of its connections;
// the server stops when the test ends.
func serveEchoOnPipe(t *testing.T, name string, accepted func(net.Conn) net.Conn) (*bufconn.Listener, *SessionInfo) {
	t.Helper()
	pipe := bufconn.Listen(1 << 16)
	info := NewSessionInfo(Peer{ID: name}, newFakeConn("127.0.0.1:1", "127.0.0.1:2"), nil)
	lis := NewListener(&net.UnixAddr{Name: name, Net: "brpc"})
	fed := make(chan struct{})
	go func() {
		defer close(fed)
		for {
			conn, err := pipe.Accept()
			if err != nil {
				return
			}
			lis.Push(context.Background(), NewStreamConn(accepted(conn), info))
		}
	}()
	gs := grpc.NewServer(grpc.Creds(Credentials{}))
	testpb.RegisterEchoServer(gs, namedEcho{name: name})
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = gs.Serve(lis)
	}()
	t.Cleanup(func() {
		gs.Stop()
		<-served
		pipe.Close()
		<-fed
	})
	return pipe, info
}

// endNotifier reports the first Close of its conn.
type endNotifier struct {
	net.Conn
	ended chan struct{}
	once  sync.Once
}

func (e *endNotifier) Close() error {
	e.once.Do(func() { e.ended <- struct{}{} })
	return e.Conn.Close()
}

func waitOne(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not happen within 10s", what)
	}
}

// TestSharedConnCallsReachTheirClient: calls on each client's route reach
// that client only, over a connection of its own; closing a route releases
// its connection and refuses its calls, and leaves the others working.
func TestSharedConnCallsReachTheirClient(t *testing.T) {
	s := NewSharedConn(nil)
	defer s.Close()
	names := []string{"a", "b", "c"}
	clients := map[string]*sharedClient{}
	for _, n := range names {
		clients[n] = startSharedClient(t, s, n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 3 {
		for _, n := range names {
			res, err := testpb.NewEchoClient(clients[n].route).Unary(ctx, &testpb.EchoRequest{})
			if err != nil {
				t.Fatalf("call to %s: %v", n, err)
			}
			if res.GetMessage() != n {
				t.Fatalf("a call on %s's route was answered by %q", n, res.GetMessage())
			}
		}
	}
	for _, n := range names {
		waitOne(t, clients[n].cnt.begun, n+"'s connection")
		if len(clients[n].cnt.begun) != 0 {
			t.Fatalf("%s was dialed more than once for sequential calls", n)
		}
	}

	if err := clients["b"].route.Close(); err != nil {
		t.Fatal(err)
	}
	waitOne(t, clients["b"].cnt.ended, "the end of b's connection after its route closed")
	_, err := testpb.NewEchoClient(clients["b"].route).Unary(ctx, &testpb.EchoRequest{})
	if !errors.Is(err, ErrPeerGone) {
		t.Fatalf("a call on a closed route: %v, want ErrPeerGone", err)
	}
	for _, n := range []string{"a", "c"} {
		if res, err := testpb.NewEchoClient(clients[n].route).Unary(ctx, &testpb.EchoRequest{}); err != nil || res.GetMessage() != n {
			t.Fatalf("call to %s after b's route closed: %q, %v", n, res.GetMessage(), err)
		}
	}
}

// TestSharedConnRouteThatCannotDial: a route whose client cannot be
// reached fails a fail-fast call with Unavailable, and a wait-for-ready
// one at its deadline, leaving other routes working.
func TestSharedConnRouteThatCannotDial(t *testing.T) {
	s := NewSharedConn(nil)
	defer s.Close()
	ok := startSharedClient(t, s, "ok")
	bad, err := s.NewRoute(func(context.Context) (net.Conn, error) { return nil, errors.New("no stream") })
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = testpb.NewEchoClient(bad).Unary(ctx, &testpb.EchoRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("a fail-fast call to an unreachable client: %v, want Unavailable", err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer wcancel()
	_, err = testpb.NewEchoClient(bad).Unary(wctx, &testpb.EchoRequest{}, grpc.WaitForReady(true))
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("a wait-for-ready call to an unreachable client: %v, want DeadlineExceeded", err)
	}
	if res, err := testpb.NewEchoClient(ok.route).Unary(ctx, &testpb.EchoRequest{}); err != nil || res.GetMessage() != "ok" {
		t.Fatalf("call to a reachable client beside it: %q, %v", res.GetMessage(), err)
	}
}

// TestSharedConnClose: closing the SharedConn fails the calls of every
// route, and a new route is refused.
func TestSharedConnClose(t *testing.T) {
	s := NewSharedConn(nil)
	c := startSharedClient(t, s, "a")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := testpb.NewEchoClient(c.route).Unary(ctx, &testpb.EchoRequest{}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := testpb.NewEchoClient(c.route).Unary(ctx, &testpb.EchoRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("a call after the SharedConn closed: %v, want Unavailable", err)
	}
	if _, err := s.NewRoute(func(context.Context) (net.Conn, error) { return nil, errors.New("unused") }); status.Code(err) != codes.Unavailable {
		t.Fatalf("NewRoute after Close: %v, want Unavailable", err)
	}
}
