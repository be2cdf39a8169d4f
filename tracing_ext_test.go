package brpc_test

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/testenv"
	"github.com/brpc-go/brpc/internal/testpb"
)

// TestOneTraceSpansForwardAndReverseCalls: with the standard otelgrpc stats
// handlers on both sides (the application's servers, and brpc's connections
// through WithGRPCDialOptions), a forward call and the reverse call its
// handler makes to the caller belong to one trace; the peer ID can be put on
// spans from PeerFromContext.
func TestOneTraceSpansForwardAndReverseCalls(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		exporter := tracetest.NewInMemoryExporter()
		tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exporter))
		defer tp.Shutdown(context.Background())
		otelOpts := []otelgrpc.Option{otelgrpc.WithTracerProvider(tp), otelgrpc.WithPropagators(propagation.TraceContext{})}

		// The server's interceptor puts the caller's brpc ID on its span.
		tagPeer := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if p, ok := brpc.PeerFromContext(ctx); ok && p.ID != "" {
				trace.SpanFromContext(ctx).SetAttributes(attribute.String("brpc.peer_id", p.ID))
			}
			return h(ctx, req)
		}
		e := testenv.New(t, testenv.Config{
			Transport:  tr,
			GRPCOpts:   []grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(otelOpts...)), grpc.ChainUnaryInterceptor(tagPeer)},
			ServerOpts: []brpc.ServerOption{brpc.WithGRPCDialOptions(grpc.WithStatsHandler(otelgrpc.NewClientHandler(otelOpts...)))},
		})
		c := e.Connect(testenv.ClientConfig{
			Name:     "traced",
			GRPCOpts: []grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(otelOpts...))},
			Opts:     []brpc.DialOption{brpc.WithGRPCDialOptions(grpc.WithStatsHandler(otelgrpc.NewClientHandler(otelOpts...)))},
		})
		if _, err := c.Echo.Unary(testenv.Ctx(t), &testpb.EchoRequest{Message: "trace me"}); err != nil {
			t.Fatal(err)
		}

		// A server span ends just after its response is sent, so the last
		// one may end a moment after the call returned.
		unarySpans := func() int {
			n := 0
			for _, s := range exporter.GetSpans() {
				if s.Name == "brpc.test.v1.Echo/Unary" {
					n++
				}
			}
			return n
		}
		testenv.WaitFor(t, 5*time.Second, "four spans", func() bool { return unarySpans() >= 4 })
		spans := exporter.GetSpans()
		kinds := map[trace.SpanKind]int{}
		var traceID trace.TraceID
		var peerTagged bool
		for i, s := range spans {
			if s.Name != "brpc.test.v1.Echo/Unary" {
				continue
			}
			kinds[s.SpanKind]++
			if i == 0 || !traceID.IsValid() {
				traceID = s.SpanContext.TraceID()
			}
			if s.SpanContext.TraceID() != traceID {
				t.Fatalf("span %s (%v) is in trace %s, want %s: the reverse call started a new trace", s.Name, s.SpanKind, s.SpanContext.TraceID(), traceID)
			}
			for _, a := range s.Attributes {
				if a.Key == "brpc.peer_id" && a.Value.AsString() == c.ID() {
					peerTagged = true
				}
			}
		}
		// Forward: client span + server span; reverse: server's client span
		// + the client's server span.
		if kinds[trace.SpanKindClient] != 2 || kinds[trace.SpanKindServer] != 2 {
			t.Fatalf("spans by kind %v over %d spans, want 2 client and 2 server spans", kinds, len(spans))
		}
		if !peerTagged {
			t.Fatal("no span carries the caller's brpc.peer_id")
		}
	})
}
