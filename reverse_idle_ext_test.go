package brpc_test

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/stats"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/testenv"
	"github.com/brpc-go/brpc/internal/testpb"
)

// connCounter is a stats.Handler that counts the gRPC connections a
// *grpc.Server has seen begin and end.
type connCounter struct {
	begun, ended atomic.Int64
}

func (c *connCounter) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (c *connCounter) HandleRPC(context.Context, stats.RPCStats)                       {}
func (c *connCounter) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}

func (c *connCounter) HandleConn(_ context.Context, s stats.ConnStats) {
	switch s.(type) {
	case *stats.ConnBegin:
		c.begun.Add(1)
	case *stats.ConnEnd:
		c.ended.Add(1)
	}
}

// holdStreamPastIdle opens a bidirectional stream on echo, keeps it quiet
// for four idle timeouts and checks that the connection under it, counted by
// cnt, stays open and usable, then ends the stream and waits for that
// connection to be released. dir names the direction in failures.
func holdStreamPastIdle(ctx context.Context, t *testing.T, echo testpb.EchoClient, cnt *connCounter, idle time.Duration, dir string) {
	t.Helper()
	st, err := echo.BidiStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&testpb.EchoRequest{Message: "hold"}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	// Nothing is awaited here: the check is that no release happens while
	// the stream is open.
	time.Sleep(4 * idle)
	if b, e := cnt.begun.Load(), cnt.ended.Load(); b-e != 1 {
		t.Fatalf("with a stream open for 4x the idle timeout, %d connections begun and %d ended: want the stream's one still open", b, e)
	}
	if err := st.Send(&testpb.EchoRequest{Message: "still there"}); err != nil {
		t.Fatalf("sending on the held stream: %v", err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatalf("receiving on the held stream: %v", err)
	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("end of the held stream: got %v, want io.EOF", err)
	}
	testenv.WaitFor(t, 5*time.Second, "the "+dir+" connection to be closed after the stream ended", func() bool { return cnt.ended.Load() == cnt.begun.Load() })
}

// TestReverseConnectionReleasedWhenIdle checks that the connection carrying
// the server's calls to a client is closed once it has been idle for
// WithReverseIdleTimeout, is rebuilt by the next call, and is kept while a
// streaming call is open.
func TestReverseConnectionReleasedWhenIdle(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		const idle = 200 * time.Millisecond
		e := testenv.New(t, testenv.Config{Transport: tr, ServerOpts: []brpc.ServerOption{brpc.WithReverseIdleTimeout(idle)}})
		var cnt connCounter
		c := e.Connect(testenv.ClientConfig{Name: "device", GRPCOpts: []grpc.ServerOption{grpc.StatsHandler(&cnt)}})
		ctx := testenv.Ctx(t)
		stub, err := e.Srv.Client(c.ID())
		if err != nil {
			t.Fatal(err)
		}
		call := func(what string) {
			t.Helper()
			if _, err := stub.Unary(ctx, &testpb.EchoRequest{Message: what}); err != nil {
				t.Fatalf("reverse call %s: %v", what, err)
			}
		}

		call("first")
		if got := cnt.begun.Load(); got != 1 {
			t.Fatalf("after the first reverse call the client saw %d connections begin, want 1", got)
		}
		testenv.WaitFor(t, 5*time.Second, "the idle reverse connection to be closed", func() bool { return cnt.ended.Load() == 1 })

		call("second")
		if got := cnt.begun.Load(); got != 2 {
			t.Fatalf("after a call following the release the client saw %d connections begin, want 2", got)
		}

		// A streaming call in flight keeps the connection however long it
		// stays quiet.
		holdStreamPastIdle(ctx, t, stub, &cnt, idle, "reverse")

		// The forward direction is not affected.
		if _, err := c.Echo.Unary(ctx, &testpb.EchoRequest{Message: "forward"}); err != nil {
			t.Fatalf("forward call after the releases: %v", err)
		}
	})
}

// TestReverseIdleTimeoutZeroKeepsTheConnection checks that
// WithReverseIdleTimeout(0) keeps a client's reverse connection open.
func TestReverseIdleTimeoutZeroKeepsTheConnection(t *testing.T) {
	e := testenv.New(t, testenv.Config{ServerOpts: []brpc.ServerOption{brpc.WithReverseIdleTimeout(0)}})
	var cnt connCounter
	c := e.Connect(testenv.ClientConfig{Name: "device", GRPCOpts: []grpc.ServerOption{grpc.StatsHandler(&cnt)}})
	ctx := testenv.Ctx(t)
	stub, err := e.Srv.Client(c.ID())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := stub.Unary(ctx, &testpb.EchoRequest{Message: "x"}); err != nil {
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
