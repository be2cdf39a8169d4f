package brpc_test

import (
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/testenv"
	"github.com/brpc-go/brpc/internal/testpb"
)

// TestForwardConnectionReleasedWhenIdle checks that the connection carrying
// a client's calls to the server is closed once it has been idle for
// WithForwardIdleTimeout, is opened again on the same session by the next
// call, and is kept while a streaming call is open; the session and the
// reverse direction go on.
func TestForwardConnectionReleasedWhenIdle(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		const idle = 200 * time.Millisecond
		var cnt connCounter
		e := testenv.New(t, testenv.Config{Transport: tr, GRPCOpts: []grpc.ServerOption{grpc.StatsHandler(&cnt)}})
		c := e.Connect(testenv.ClientConfig{Name: "device", Opts: []brpc.DialOption{brpc.WithForwardIdleTimeout(idle)}})
		ctx := testenv.Ctx(t)
		id := c.ID()
		call := func(what string) {
			t.Helper()
			if _, err := c.Echo.Unary(ctx, &testpb.EchoRequest{Message: what}); err != nil {
				t.Fatalf("forward call %s: %v", what, err)
			}
		}

		call("first")
		if got := cnt.begun.Load(); got != 1 {
			t.Fatalf("after the first forward call the server saw %d connections begin, want 1", got)
		}
		testenv.WaitFor(t, 5*time.Second, "the idle forward connection to be closed", func() bool { return cnt.ended.Load() == 1 })

		call("second")
		if got := cnt.begun.Load(); got != 2 {
			t.Fatalf("after a call following the release the server saw %d connections begin, want 2", got)
		}
		if c.ID() != id || len(e.Srv.Peers()) != 1 {
			t.Fatalf("after the release the client is %q among %d peers, want the same session (%q) alone", c.ID(), len(e.Srv.Peers()), id)
		}

		// A streaming call in flight keeps the connection however long it
		// stays quiet.
		holdStreamPastIdle(ctx, t, c.Echo, &cnt, idle, "forward")

		// The reverse direction is not affected.
		stub, err := e.Srv.Client(id)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := stub.Unary(ctx, &testpb.EchoRequest{Message: "reverse"}); err != nil {
			t.Fatalf("reverse call after the releases: %v", err)
		}
	})
}

// TestForwardIdleTimeoutZeroKeepsTheConnection checks that
// WithForwardIdleTimeout(0) keeps a client's forward connection open.
func TestForwardIdleTimeoutZeroKeepsTheConnection(t *testing.T) {
	var cnt connCounter
	e := testenv.New(t, testenv.Config{GRPCOpts: []grpc.ServerOption{grpc.StatsHandler(&cnt)}})
	c := e.Connect(testenv.ClientConfig{Name: "device", Opts: []brpc.DialOption{brpc.WithForwardIdleTimeout(0)}})
	ctx := testenv.Ctx(t)
	for i := range 3 {
		if _, err := c.Echo.Unary(ctx, &testpb.EchoRequest{Message: "x"}); err != nil {
			t.Fatal(err)
		}
		if i < 2 {
			time.Sleep(300 * time.Millisecond)
		}
	}
	if b, e := cnt.begun.Load(), cnt.ended.Load(); b != 1 || e != 0 {
		t.Fatalf("three calls 300 ms apart: %d connections begun and %d ended, want 1 and 0", b, e)
	}
}
