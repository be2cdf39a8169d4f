package brpc_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/testenv"
	"github.com/brpc-go/brpc/internal/testpb"
)

// limitsEnv is a brpc server whose gateway relays at most 2 calls to a
// client and 3 in all, with three clients whose handlers count their calls.
type limitsEnv struct {
	*testenv.Env
	addr             string
	stub             testpb.EchoClient
	alice, bob, carl *testenv.Client
	seen             map[string]*seen
}

const limitPerClient, limitTotal = 2, 3

func newLimitsEnv(t *testing.T, tr string, srvOpts ...brpc.ServerOption) *limitsEnv {
	e := testenv.New(t, testenv.Config{
		Transport:  tr,
		ServerOpts: append([]brpc.ServerOption{brpc.WithGatewayLimits(limitPerClient, limitTotal)}, srvOpts...),
		Call:       func(*testenv.Env) func(context.Context) (string, error) { return nil },
	})
	l := &limitsEnv{Env: e, seen: map[string]*seen{}}
	for _, c := range []struct {
		name string
		to   **testenv.Client
	}{{"alice", &l.alice}, {"bob", &l.bob}, {"carl", &l.carl}} {
		sn := &seen{}
		*c.to = e.Connect(testenv.ClientConfig{Name: c.name, GRPCOpts: sn.options()})
		l.seen[(*c.to).ID()] = sn
	}
	l.addr = serveGateway(t, e.Srv.Gateway(allowAll))
	l.stub = l.caller(t)
	return l
}

// caller is a new plain grpc-go client of the gateway, on a connection of
// its own; it is closed when the test ends.
func (l *limitsEnv) caller(t *testing.T) testpb.EchoClient {
	stub, _ := l.callerConn(t)
	return stub
}

func (l *limitsEnv) callerConn(t *testing.T) (testpb.EchoClient, *grpc.ClientConn) {
	t.Helper()
	cc, err := grpc.NewClient(l.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return testpb.NewEchoClient(cc), cc
}

// hold opens a bidi call to id through stub and returns it once the
// client's handler runs (it answers with its headers first), or the
// refusal.
func hold(ctx context.Context, stub testpb.EchoClient, id string) (testpb.Echo_BidiStreamClient, error) {
	bs, err := stub.BidiStream(to(ctx, id, "x-echo-k", "v"))
	if err != nil {
		return nil, err
	}
	if h, _ := bs.Header(); len(h.Get("x-echo-k")) == 1 {
		return bs, nil
	}
	_, err = bs.Recv()
	if err == nil {
		err = errors.New("the call answered without the client's headers")
	}
	return nil, err
}

// end ends a held call the ordinary way: the caller half-closes, the
// client's handler returns.
func end(t *testing.T, bs testpb.Echo_BidiStreamClient) {
	t.Helper()
	if err := bs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := bs.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("a held call after CloseSend: %v, want io.EOF", err)
	}
}

// wantRefused fails the test unless err is the gateway's ResourceExhausted
// naming what.
func wantRefused(t *testing.T, err error, what, kind string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), what) {
		t.Fatalf("%s beyond the bound: %v, want ResourceExhausted about %q", kind, err, what)
	}
}

// wantFullCapacity waits until the gateway admits as many calls as its
// bounds allow again, to alice and bob, and ends them: whatever ended
// before left no slot taken.
func (l *limitsEnv) wantFullCapacity(t *testing.T, after string, ids ...string) {
	t.Helper()
	if len(ids) == 0 {
		ids = []string{l.alice.ID(), l.alice.ID(), l.bob.ID()}
	}
	ctx := testenv.Ctx(t)
	testenv.WaitFor(t, 10*time.Second, "every slot to be free after "+after, func() bool {
		var held []testpb.Echo_BidiStreamClient
		defer func() {
			for _, bs := range held {
				end(t, bs)
			}
		}()
		for _, id := range ids {
			bs, err := hold(ctx, l.stub, id)
			if err != nil {
				if status.Code(err) != codes.ResourceExhausted {
					t.Fatalf("a call to %s after %s: %v", id, after, err)
				}
				return false
			}
			held = append(held, bs)
		}
		return true
	})
}

func TestGatewayLimits(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		l := newLimitsEnv(t, tr)
		ctx := testenv.Ctx(t)
		a1, err := hold(ctx, l.stub, l.alice.ID())
		if err != nil {
			t.Fatal(err)
		}
		a2ctx, cancelA2 := context.WithCancel(ctx)
		if _, err := hold(a2ctx, l.stub, l.alice.ID()); err != nil {
			t.Fatal(err)
		}

		// Alice is at her bound: every kind of call to her is refused
		// before it reaches her, while bob's calls still go through.
		aliceCalls := l.seen[l.alice.ID()].calls.Load()
		_, err = hold(ctx, l.stub, l.alice.ID())
		wantRefused(t, err, "per client", "a third call to alice")
		_, err = l.stub.Unary(to(ctx, l.alice.ID()), &testpb.EchoRequest{})
		wantRefused(t, err, "per client", "a Unary to alice")
		if n := l.seen[l.alice.ID()].calls.Load(); n != aliceCalls {
			t.Fatalf("alice's handlers ran for %d refused calls", n-aliceCalls)
		}
		if _, err := l.stub.Unary(to(ctx, l.bob.ID()), &testpb.EchoRequest{}); err != nil {
			t.Fatalf("a Unary to bob while alice is at her bound: %v", err)
		}

		// The third call in flight takes the gateway to its total: bob and
		// carl are refused too, though neither is at his own bound.
		vanishing, vanishingConn := l.callerConn(t)
		if _, err := hold(ctx, vanishing, l.bob.ID()); err != nil {
			t.Fatal(err)
		}
		bobCalls, carlCalls := l.seen[l.bob.ID()].calls.Load(), l.seen[l.carl.ID()].calls.Load()
		_, err = hold(ctx, l.stub, l.bob.ID())
		wantRefused(t, err, "the most this server allows", "a call to bob")
		_, err = l.stub.Unary(to(ctx, l.carl.ID()), &testpb.EchoRequest{})
		wantRefused(t, err, "the most this server allows", "a Unary to carl")
		if l.seen[l.bob.ID()].calls.Load() != bobCalls || l.seen[l.carl.ID()].calls.Load() != carlCalls {
			t.Fatal("a handler ran for a call refused at the total bound")
		}

		// One held call ends normally, one is canceled, and the third's
		// caller goes away: every slot comes back.
		end(t, a1)
		cancelA2()
		vanishingConn.Close()
		l.wantFullCapacity(t, "an ended, a canceled and an abandoned call")
	})
}

// Every kind of call, however it ends, gives its slot back.
func TestGatewayLimitsReleasedByEveryEnd(t *testing.T) {
	eachGatewayRelay(t, func(t *testing.T, tr string, srvOpts []brpc.ServerOption) {
		l := newLimitsEnv(t, tr, srvOpts...)
		alice := l.alice.ID()
		// Each scenario runs limitPerClient calls to alice, one after the
		// other or at once, that end one way.
		scenarios := []struct {
			name string
			run  func(t *testing.T, ctx context.Context)
		}{
			{"unary", func(t *testing.T, ctx context.Context) {
				if _, err := l.stub.Unary(to(ctx, alice), &testpb.EchoRequest{}); err != nil {
					t.Fatal(err)
				}
			}},
			{"unary for no such client", func(t *testing.T, ctx context.Context) {
				_, err := l.stub.Unary(to(ctx, "nobody"), &testpb.EchoRequest{})
				testenv.WantCode(t, err, codes.NotFound, "a Unary for no such client")
			}},
			{"unary the client fails", func(t *testing.T, ctx context.Context) {
				_, err := l.stub.Unary(to(ctx, alice), &testpb.EchoRequest{FailCode: int32(codes.Aborted)})
				testenv.WantCode(t, err, codes.Aborted, "a failing Unary")
			}},
			{"unary past its deadline", func(t *testing.T, ctx context.Context) {
				dctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
				defer cancel()
				_, err := l.stub.Unary(to(dctx, alice), &testpb.EchoRequest{SleepMs: 20000})
				testenv.WantCode(t, err, codes.DeadlineExceeded, "a Unary past its deadline")
			}},
			{"unary canceled", func(t *testing.T, ctx context.Context) {
				cctx, cancel := context.WithCancel(ctx)
				done := make(chan error, 1)
				go func() {
					_, err := l.stub.Unary(to(cctx, alice), &testpb.EchoRequest{SleepMs: 20000})
					done <- err
				}()
				testenv.WaitFor(t, 5*time.Second, "the call to reach alice", func() bool { return l.alice.Service.Sleeping() > 0 })
				cancel()
				testenv.WantCode(t, <-done, codes.Canceled, "a canceled Unary")
			}},
			{"server stream read to its end", func(t *testing.T, ctx context.Context) {
				ss, err := l.stub.ServerStream(to(ctx, alice), &testpb.EchoRequest{Count: 3})
				if err != nil {
					t.Fatal(err)
				}
				for err == nil {
					_, err = ss.Recv()
				}
				if !errors.Is(err, io.EOF) {
					t.Fatal(err)
				}
			}},
			{"server stream abandoned", func(t *testing.T, ctx context.Context) {
				cctx, cancel := context.WithCancel(ctx)
				defer cancel()
				ss, err := l.stub.ServerStream(to(cctx, alice), &testpb.EchoRequest{Count: 1000, SleepMs: 50})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := ss.Recv(); err != nil {
					t.Fatal(err)
				}
			}},
			{"client stream", func(t *testing.T, ctx context.Context) {
				cs, err := l.stub.ClientStream(to(ctx, alice))
				if err != nil {
					t.Fatal(err)
				}
				for range 3 {
					if err := cs.Send(&testpb.EchoRequest{}); err != nil {
						t.Fatal(err)
					}
				}
				if _, err := cs.CloseAndRecv(); err != nil {
					t.Fatal(err)
				}
			}},
			{"bidi canceled", func(t *testing.T, ctx context.Context) {
				cctx, cancel := context.WithCancel(ctx)
				defer cancel()
				if _, err := hold(cctx, l.stub, alice); err != nil {
					t.Fatal(err)
				}
			}},
			{"bidi whose caller goes away", func(t *testing.T, ctx context.Context) {
				stub, cc := l.callerConn(t)
				if _, err := hold(ctx, stub, alice); err != nil {
					t.Fatal(err)
				}
				cc.Close()
			}},
		}
		for _, s := range scenarios {
			t.Run(s.name, func(t *testing.T) {
				ctx := testenv.Ctx(t)
				for range limitPerClient {
					s.run(t, ctx)
				}
				l.wantFullCapacity(t, s.name)
			})
		}

		// Calls to a client that goes away end, and their slots come back.
		for range limitPerClient {
			if _, err := hold(testenv.Ctx(t), l.stub, alice); err != nil {
				t.Fatal(err)
			}
		}
		l.alice.Shutdown()
		l.wantFullCapacity(t, "alice went away", l.bob.ID(), l.bob.ID(), l.carl.ID())
	})
}
