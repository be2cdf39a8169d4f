package integrationtests

import (
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/brpc-go/brpc/internal/testenv"
	"github.com/brpc-go/brpc/internal/testpb"
)

// The default stream cap leaves grpc-go room to redial while an old HTTP/2
// connection drains: a server whose *grpc.Server ages connections out
// (GOAWAY) keeps answering at once while a long call holds each old
// connection open.
func TestRedialWhileDrainingWithinTheStreamCap(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		e := testenv.New(t, testenv.Config{Transport: tr, GRPCOpts: []grpc.ServerOption{
			grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionAge: 100 * time.Millisecond, MaxConnectionAgeGrace: 5 * time.Second}),
		}})
		c := e.Connect(testenv.ClientConfig{Name: "c"})
		slow := testenv.Inflight(c.Echo, 1500*time.Millisecond)
		testenv.WaitFor(t, 5*time.Second, "the slow call to reach its handler", func() bool { return e.Echo.Sleeping() == 1 })
		start := time.Now()
		for time.Since(start) < time.Second {
			t0 := time.Now()
			if _, err := c.Echo.Unary(testenv.Ctx(t), &testpb.EchoRequest{Message: "x"}); err != nil {
				t.Fatalf("a call while an aged-out connection drains: %v", err)
			}
			if d := time.Since(t0); d > 500*time.Millisecond {
				t.Fatalf("a call while an aged-out connection drains took %v: no stream left to redial on", d)
			}
		}
		if err := <-slow; err != nil {
			t.Fatalf("the slow call on the draining connection: %v", err)
		}
	})
}
