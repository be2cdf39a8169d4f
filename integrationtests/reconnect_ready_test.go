package integrationtests

import (
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/testenv"
	"github.com/brpc-go/brpc/internal/testpb"
)

// TestFailFastCallSucceedsOnceReconnected: while a client is disconnected,
// fail-fast calls fail at once with Unavailable and wait-for-ready calls
// wait; once the ClientConn reports Ready again after a server restart, a
// fail-fast call goes through at once: there is no window in which grpc-go
// is still backing off from the failures of the gap.
func TestFailFastCallSucceedsOnceReconnected(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		cfg := testenv.Config{Transport: tr, ServerOpts: []brpc.ServerOption{brpc.WithAuthenticator(byNameFromMetadata)}}
		e := testenv.New(t, cfg)
		r := restartOn(t, e, cfg)
		c := connectNamed(e, 1, "dev-")[0]
		ctx := testenv.Ctx(t)
		if _, err := c.Echo.Unary(ctx, &testpb.EchoRequest{Message: "before"}); err != nil {
			t.Fatalf("a call before the restart: %v", err)
		}
		for round := range 3 {
			r.stop()
			for c.GetState() == connectivity.Ready {
				c.WaitForStateChange(ctx, connectivity.Ready)
			}
			// Fail-fast calls fail fast while there is no session; this
			// also puts grpc-go's connection in TRANSIENT_FAILURE.
			start := time.Now()
			_, err := c.Echo.Unary(ctx, &testpb.EchoRequest{Message: "gap"})
			if status.Code(err) != codes.Unavailable || time.Since(start) > 2*time.Second {
				t.Fatalf("round %d: a fail-fast call while disconnected: %v after %v, want Unavailable at once", round, err, time.Since(start))
			}
			waiting := make(chan error, 1)
			go func() {
				_, err := c.Echo.Unary(ctx, &testpb.EchoRequest{Message: "waits"}, grpc.WaitForReady(true))
				waiting <- err
			}()

			r.start()
			for c.GetState() != connectivity.Ready {
				if !c.WaitForStateChange(ctx, c.GetState()) {
					t.Fatalf("round %d: the client did not reconnect", round)
				}
			}
			if _, err := c.Echo.Unary(ctx, &testpb.EchoRequest{Message: "right after Ready"}); err != nil {
				t.Fatalf("round %d: a fail-fast call right after the ClientConn reported Ready: %v", round, err)
			}
			select {
			case err := <-waiting:
				if err != nil {
					t.Fatalf("round %d: a wait-for-ready call across the restart: %v", round, err)
				}
			case <-ctx.Done():
				t.Fatalf("round %d: the wait-for-ready call never finished", round)
			}
		}
	})
}
