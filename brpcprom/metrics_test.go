package brpcprom_test

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/brpcprom"
	"github.com/brpc-go/brpc/internal/certs"
	"github.com/brpc-go/brpc/internal/testpb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type echo struct{ testpb.UnimplementedEchoServer }

func (echo) Unary(_ context.Context, r *testpb.EchoRequest) (*testpb.EchoResponse, error) {
	if r.GetFailCode() != 0 {
		return nil, status.Error(codes.Code(r.GetFailCode()), "as asked")
	}
	return &testpb.EchoResponse{Message: r.GetMessage()}, nil
}

func TestMetricsFollowClientsAndCalls(t *testing.T) {
	m := brpcprom.New()
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)

	ca, err := certs.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	stls, err := ca.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	auth := func(_ context.Context, info brpc.AuthInfo) (string, error) {
		name := info.Metadata.Get("name")[0]
		if name == "bad" {
			return "", status.Error(codes.PermissionDenied, "no")
		}
		return name, nil
	}
	gs := grpc.NewServer()
	const reverseIdle = 300 * time.Millisecond
	srv := brpc.NewServer(gs, testpb.NewEchoClient, append(m.ServerOptions(), brpc.WithAuthenticator(auth), brpc.WithReverseIdleTimeout(reverseIdle))...)
	targets := map[string]string{}
	for tr, listen := range map[string]func(string, *tls.Config) (brpc.Listener, error){"quic": brpc.ListenQUIC, "tcp": brpc.ListenTCP} {
		lis, err := listen("127.0.0.1:0", stls)
		if err != nil {
			t.Fatal(err)
		}
		targets[tr] = tr + "://" + lis.Addr().String()
		go srv.Serve(lis)
	}
	defer srv.Stop()

	dial := func(tr, name string) (*brpc.ClientConn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cgs := grpc.NewServer()
		testpb.RegisterEchoServer(cgs, echo{})
		t.Cleanup(cgs.Stop)
		return brpc.Dial(ctx, targets[tr], brpc.WithTLSConfig(ca.ClientTLS()), brpc.WithServer(cgs),
			brpc.WithMetadata(metadata.Pairs("name", name)))
	}
	var conns []*brpc.ClientConn
	for _, c := range []struct{ tr, name string }{{"quic", "a"}, {"quic", "b"}, {"tcp", "c"}} {
		cc, err := dial(c.tr, c.name)
		if err != nil {
			t.Fatalf("Dial %s: %v", c.name, err)
		}
		conns = append(conns, cc)
	}
	defer func() {
		for _, cc := range conns {
			cc.Close()
		}
	}()
	if _, err := dial("tcp", "bad"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("Dial bad: %v, want PermissionDenied", err)
	}

	want(t, reg, "brpc_connected_clients", map[string]string{"transport": "quic"}, 2)
	want(t, reg, "brpc_connected_clients", map[string]string{"transport": "tcp"}, 1)
	want(t, reg, "brpc_handshakes_total", map[string]string{"transport": "quic", "result": "OK"}, 2)
	want(t, reg, "brpc_handshakes_total", map[string]string{"transport": "tcp", "result": "OK"}, 1)
	want(t, reg, "brpc_handshakes_total", map[string]string{"transport": "tcp", "result": "PermissionDenied"}, 1)

	a, err := srv.Client("a")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := 0; i < 2; i++ {
		if _, err := a.Unary(ctx, &testpb.EchoRequest{Message: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Unary(ctx, &testpb.EchoRequest{FailCode: int32(codes.NotFound)}); status.Code(err) != codes.NotFound {
		t.Fatalf("failing call: %v", err)
	}
	const method = "/brpc.test.v1.Echo/Unary"
	want(t, reg, "brpc_reverse_calls_total", map[string]string{"method": method, "code": "OK"}, 2)
	want(t, reg, "brpc_reverse_calls_total", map[string]string{"method": method, "code": "NotFound"}, 1)
	want(t, reg, "brpc_reverse_call_duration_seconds", map[string]string{"method": method, "code": "OK"}, 2)
	want(t, reg, "brpc_reverse_call_duration_seconds", map[string]string{"method": method, "code": "NotFound"}, 1)
	// One connection carried the three calls; it is closed once idle.
	want(t, reg, "brpc_reverse_connections_opened_total", nil, 1)
	want(t, reg, "brpc_reverse_connections", nil, 0)
	if _, err := a.Unary(ctx, &testpb.EchoRequest{Message: "again"}); err != nil {
		t.Fatal(err)
	}
	want(t, reg, "brpc_reverse_connections_opened_total", nil, 2)
	want(t, reg, "brpc_reverse_connections", nil, 0)

	conns[0].Close()
	want(t, reg, "brpc_connected_clients", map[string]string{"transport": "quic"}, 1)
	want(t, reg, "brpc_sessions_closed_total", map[string]string{"transport": "quic", "reason": "client_closed"}, 1)
	want(t, reg, "brpc_session_duration_seconds", map[string]string{"transport": "quic"}, 1)
}

// want scrapes reg and checks the value (or, for histograms, the sample
// count) of the series name with labels.
func want(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string, v float64) {
	t.Helper()
	eventually(t, name, func() bool { return value(t, reg, name, labels) == v })
}

func value(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	metrics:
		for _, m := range f.GetMetric() {
			for _, lp := range m.GetLabel() {
				if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
					continue metrics
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return -1
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
