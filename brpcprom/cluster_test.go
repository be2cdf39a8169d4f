package brpcprom_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/brpcprom"
	"github.com/brpc-go/brpc/internal/certs"
	"github.com/brpc-go/brpc/internal/testpb"
)

// failingPresence cannot be joined.
type failingPresence struct{}

func (failingPresence) Join(context.Context, brpc.Replica, func(brpc.PresenceUpdate)) (brpc.Membership, error) {
	return nil, errors.New("presence unreachable")
}

func TestMetricsFollowTheCluster(t *testing.T) {
	ca, err := certs.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	stls, err := ca.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	presence := brpc.NewMemoryPresence()
	auth := func(_ context.Context, info brpc.AuthInfo) (string, error) { return info.Metadata.Get("name")[0], nil }
	type replica struct {
		srv    *brpc.Server[testpb.EchoClient]
		m      *brpcprom.Metrics
		reg    *prometheus.Registry
		target string
	}
	start := func(name string, p brpc.Presence) (*replica, []error) {
		r := &replica{m: brpcprom.New(), reg: prometheus.NewRegistry()}
		r.reg.MustRegister(r.m)
		repLis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		cert, err := ca.Replica(name)
		if err != nil {
			t.Fatal(err)
		}
		cc := brpc.ClusterConfig{Replica: name, Presence: p, Advertise: repLis.Addr().String(),
			TLS: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: ca.Pool}}
		r.srv = brpc.NewServer(grpc.NewServer(), testpb.NewEchoClient, append(r.m.ServerOptions(), brpc.WithAuthenticator(auth), brpc.WithCluster(cc))...)
		lis, err := brpc.ListenQUIC("127.0.0.1:0", stls)
		if err != nil {
			t.Fatal(err)
		}
		r.target = "quic://" + lis.Addr().String()
		served := make(chan error, 2)
		go func() { served <- r.srv.Serve(lis) }()
		go func() { served <- r.srv.ServeReplicas(repLis) }()
		t.Cleanup(r.srv.Stop)
		if p == presence {
			return r, nil
		}
		return r, []error{<-served, <-served}
	}
	r0, _ := start("r0", presence)
	r1, _ := start("r1", presence)

	cgs := grpc.NewServer()
	testpb.RegisterEchoServer(cgs, echo{})
	defer cgs.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cc, err := brpc.Dial(ctx, r1.target, brpc.WithTLSConfig(ca.ClientTLS()), brpc.WithServer(cgs), brpc.WithMetadata(metadata.Pairs("name", "a")))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	want(t, r1.reg, "brpc_cluster_presence_writes_total", map[string]string{"op": "claim"}, 1)
	eventually(t, "r0 to learn of a", func() bool { return len(r0.srv.ClusterPeers()) == 1 })
	a, err := r0.srv.Client("a")
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := a.Unary(ctx, &testpb.EchoRequest{Message: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Unary(ctx, &testpb.EchoRequest{FailCode: int32(codes.NotFound)}); status.Code(err) != codes.NotFound {
		t.Fatalf("failing call: %v", err)
	}
	const method = "/brpc.test.v1.Echo/Unary"
	want(t, r0.reg, "brpc_cluster_forwarded_calls_total", map[string]string{"replica": "r1", "method": method, "code": "OK"}, 2)
	want(t, r0.reg, "brpc_cluster_forwarded_calls_total", map[string]string{"replica": "r1", "method": method, "code": "NotFound"}, 1)
	want(t, r0.reg, "brpc_cluster_stale_routes_total", nil, 0)
	cc.Close()
	want(t, r1.reg, "brpc_cluster_presence_writes_total", map[string]string{"op": "release"}, 1)

	r2, errs := start("r2", failingPresence{})
	for _, err := range errs {
		if err == nil {
			t.Fatal("Serve joined a presence that cannot be joined")
		}
	}
	want(t, r2.reg, "brpc_cluster_presence_errors_total", map[string]string{"kind": "error"}, 2)
}
