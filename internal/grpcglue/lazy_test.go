package grpcglue

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/brpc-go/brpc/internal/testpb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echo answers Unary at once, except a request "block", which waits for
// release (or the call's end); BidiStream echoes until the caller
// half-closes.
type echo struct {
	testpb.UnimplementedEchoServer
	release chan struct{}
	started chan struct{} // receives once per blocked call
}

func (e *echo) Unary(ctx context.Context, req *testpb.EchoRequest) (*testpb.EchoResponse, error) {
	if req.GetMessage() == "block" {
		e.started <- struct{}{}
		select {
		case <-e.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return &testpb.EchoResponse{Message: req.GetMessage()}, nil
}

func (e *echo) BidiStream(s testpb.Echo_BidiStreamServer) error {
	for {
		req, err := s.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := s.Send(&testpb.EchoResponse{Message: req.GetMessage()}); err != nil {
			return err
		}
	}
}

// fixture is a LazyConn whose connections reach an in-memory gRPC server.
// It is made inside a synctest bubble where the test needs fake time.
type fixture struct {
	t    *testing.T
	lazy *LazyConn
	srv  *echo

	mu  sync.Mutex
	ccs []*grpc.ClientConn // every connection built, in order
}

func newFixture(t *testing.T, idle time.Duration) *fixture {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer()
	f := &fixture{t: t, srv: &echo{release: make(chan struct{}), started: make(chan struct{}, 16)}}
	testpb.RegisterEchoServer(gs, f.srv)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = gs.Serve(lis)
	}()
	f.lazy = NewLazyConn(func() (Channel, error) {
		cc, err := grpc.NewClient("passthrough:///bufconn",
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }))
		if err != nil {
			return nil, err
		}
		f.mu.Lock()
		f.ccs = append(f.ccs, cc)
		f.mu.Unlock()
		return cc, nil
	}, idle)
	t.Cleanup(func() {
		f.lazy.Close(ErrPeerGone)
		gs.Stop()
		<-served
		for _, cc := range f.built() {
			cc.Close()
		}
	})
	return f
}

func (f *fixture) built() []*grpc.ClientConn {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*grpc.ClientConn(nil), f.ccs...)
}

// call makes one unary call that must succeed.
func (f *fixture) call(msg string) {
	f.t.Helper()
	res, err := testpb.NewEchoClient(f.lazy).Unary(context.Background(), &testpb.EchoRequest{Message: msg})
	if err != nil {
		f.t.Fatalf("Unary(%q): %v", msg, err)
	}
	if res.GetMessage() != msg {
		f.t.Fatalf("Unary(%q) answered %q", msg, res.GetMessage())
	}
}

// blockedCall starts a unary call that the server holds until release,
// and returns once the handler runs; the call's error arrives on the
// channel.
func (f *fixture) blockedCall(ctx context.Context) <-chan error {
	done := make(chan error, 1)
	go func() {
		_, err := testpb.NewEchoClient(f.lazy).Unary(ctx, &testpb.EchoRequest{Message: "block"})
		done <- err
	}()
	<-f.srv.started
	return done
}

// shutdown reports whether cc has been closed.
func shutdown(cc *grpc.ClientConn) bool { return cc.GetState() == connectivity.Shutdown }

func TestLazyConnBuildsOnFirstCallOnly(t *testing.T) {
	f := newFixture(t, 0)
	if n := len(f.built()); n != 0 {
		t.Fatalf("%d connections built before any call, want 0", n)
	}
	f.call("a")
	f.call("b")
	if n := len(f.built()); n != 1 {
		t.Fatalf("%d connections built for two calls, want 1", n)
	}
}

func TestLazyConnReleasesIdleConnection(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const idle = time.Minute
		f := newFixture(t, idle)
		f.call("a")
		first := f.built()[0]

		time.Sleep(idle - time.Second)
		synctest.Wait()
		if shutdown(first) {
			t.Fatal("the connection was released before the idle time had passed")
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if !shutdown(first) {
			t.Fatal("the connection was kept past the idle time without calls")
		}

		f.call("b")
		if n := len(f.built()); n != 2 {
			t.Fatalf("%d connections built, want a new one after the release", n)
		}
	})
}

func TestLazyConnIdleTimeCountsFromTheLastCall(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const idle = time.Minute
		f := newFixture(t, idle)
		f.call("a")
		time.Sleep(idle / 2)
		f.call("b")

		time.Sleep(idle/2 + time.Second) // idle past the first call, not the second
		synctest.Wait()
		cc := f.built()[0]
		if shutdown(cc) {
			t.Fatal("the connection was released although a call ended less than the idle time ago")
		}
		time.Sleep(idle / 2)
		synctest.Wait()
		if !shutdown(cc) {
			t.Fatal("the connection was kept past the idle time after the last call")
		}
	})
}

func TestLazyConnKeepsConnectionWhileAStreamIsOpen(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const idle = time.Minute
		f := newFixture(t, idle)
		stream, err := testpb.NewEchoClient(f.lazy).BidiStream(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&testpb.EchoRequest{Message: "x"}); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
		cc := f.built()[0]

		time.Sleep(3 * idle)
		synctest.Wait()
		if shutdown(cc) {
			t.Fatal("the connection was released under an open stream")
		}

		if err := stream.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != io.EOF {
			t.Fatalf("Recv after CloseSend: %v, want io.EOF", err)
		}
		time.Sleep(idle + time.Second)
		synctest.Wait()
		if !shutdown(cc) {
			t.Fatal("the connection was kept past the idle time after the stream ended")
		}
	})
}

func TestLazyConnZeroIdleKeepsConnection(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, 0)
		f.call("a")
		time.Sleep(24 * time.Hour)
		synctest.Wait()
		if shutdown(f.built()[0]) {
			t.Fatal("an idle time of 0 released the connection")
		}
	})
}

func TestLazyConnDrainWaitsForCallsInFlight(t *testing.T) {
	f := newFixture(t, 0)
	drainErr := status.Error(codes.Unavailable, "draining")

	done := f.blockedCall(context.Background())

	drained := f.lazy.Drain(drainErr)
	select {
	case <-drained:
		t.Fatal("Drain reported no call in flight while one was")
	default:
	}
	if _, err := testpb.NewEchoClient(f.lazy).Unary(context.Background(), &testpb.EchoRequest{Message: "late"}); !errors.Is(err, drainErr) {
		t.Fatalf("a call after Drain: %v, want the drain error", err)
	}

	close(f.srv.release)
	if err := <-done; err != nil {
		t.Fatalf("the call in flight during Drain: %v, want success", err)
	}
	<-drained // closed once that call has ended
	if again := f.lazy.Drain(drainErr); again != drained {
		t.Fatal("a second Drain returned another channel")
	}
}

func TestLazyConnDrainWithNothingInFlight(t *testing.T) {
	f := newFixture(t, 0)
	select {
	case <-f.lazy.Drain(ErrPeerGone):
	default:
		t.Fatal("Drain with no call in flight did not report drained at once")
	}
}

func TestLazyConnCloseCutsCallsOffAsUnavailable(t *testing.T) {
	f := newFixture(t, 0)
	closeErr := status.Error(codes.Unavailable, "peer went away")

	done := f.blockedCall(context.Background())
	f.lazy.Close(closeErr)
	// grpc-go reports a call cut off by its connection's Close as
	// codes.Canceled; the caller did not cancel, so it must see why.
	if err := <-done; !errors.Is(err, closeErr) {
		t.Fatalf("a call cut off by Close: %v, want %v", err, closeErr)
	}
	if _, err := testpb.NewEchoClient(f.lazy).Unary(context.Background(), &testpb.EchoRequest{Message: "late"}); !errors.Is(err, closeErr) {
		t.Fatalf("a call after Close: %v, want %v", err, closeErr)
	}
	if cc := f.built()[0]; !shutdown(cc) {
		t.Fatal("Close left the gRPC connection open")
	}
}

func TestLazyConnKeepsTheCallersOwnCancellation(t *testing.T) {
	f := newFixture(t, 0)
	ctx, cancel := context.WithCancel(context.Background())
	done := f.blockedCall(ctx)
	cancel()
	if err := <-done; status.Code(err) != codes.Canceled {
		t.Fatalf("a call its caller canceled: %v, want codes.Canceled", err)
	}
}

func TestLazyConnBuildFailureIsInternal(t *testing.T) {
	l := NewLazyConn(func() (Channel, error) { return nil, errors.New("no") }, 0)
	err := l.Invoke(context.Background(), "/m", &testpb.EchoRequest{}, &testpb.EchoResponse{})
	if status.Code(err) != codes.Internal {
		t.Fatalf("a call whose connection cannot be built: %v, want codes.Internal", err)
	}
}

func TestClosedLazyConnRefusesCalls(t *testing.T) {
	err := ClosedLazyConn.Invoke(context.Background(), "/m", &testpb.EchoRequest{}, &testpb.EchoResponse{})
	if !errors.Is(err, ErrPeerGone) {
		t.Fatalf("a call on ClosedLazyConn: %v, want ErrPeerGone", err)
	}
}
