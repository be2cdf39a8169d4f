package integrationtests

import (
	"bytes"
	"context"
	"runtime"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/brpc-go/brpc/internal/testenv"
	"github.com/brpc-go/brpc/internal/testpb"
)

// TestClientThatNeverReadsIsContained: a client asks for a large stream of
// responses and never reads them. Flow control must stop the server's
// handler rather than let the server buffer without bound, and other
// clients must be served meanwhile.
func TestClientThatNeverReadsIsContained(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		watch := newHandlerWatch("/brpc.test.v1.Echo/ServerStream")
		e := testenv.New(t, testenv.Config{
			Transport: tr,
			GRPCOpts:  []grpc.ServerOption{grpc.ChainStreamInterceptor(watch.intercept)},
			Call:      func(*testenv.Env) func(context.Context) (string, error) { return nil },
		})
		greedy := e.Connect(testenv.ClientConfig{Name: "greedy"})
		polite := e.Connect(testenv.ClientConfig{Name: "polite"})

		var before runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)

		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		payload := bytes.Repeat([]byte("x"), 256<<10)
		// 400 responses of 256 KiB: 100 MiB that nobody reads.
		if _, err := greedy.Echo.ServerStream(ctx, &testpb.EchoRequest{Payload: payload, Count: 400}); err != nil {
			t.Fatalf("ServerStream: %v", err)
		}
		h := watch.next(t)
		testenv.WaitFor(t, 10*time.Second, "flow control to stop the server's handler", func() bool { return stuck(&h.sends) })
		t.Logf("the handler sent %d responses before flow control stopped it", h.sends.Load())

		for i := 0; i < 20; i++ {
			cctx, ccancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err := polite.Echo.Unary(cctx, &testpb.EchoRequest{Message: "still there?"})
			ccancel()
			if err != nil {
				t.Fatalf("another client's call while one never reads: %v", err)
			}
		}
		var after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&after)
		grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
		t.Logf("%s: heap grew by %.1f MiB with 100 MiB of unread responses", tr, float64(grown)/(1<<20))
		// What may be buffered is bounded by the flow-control windows of
		// grpc-go's HTTP/2 and of the session's stream, far below 100 MiB.
		if grown > 48<<20 {
			t.Fatalf("the heap grew by %d MiB: unread responses are not bounded by flow control", grown>>20)
		}
	})
}
