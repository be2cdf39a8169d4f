package brpc_test

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"slices"
	"sort"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/testenv"
	"github.com/brpc-go/brpc/internal/testpb"
)

// TestClusterMeasure prints the figures of docs/cluster.md: the unary
// round trip to a client on this replica, on another replica (through
// Client(id) and through the gateway) and of plain grpc-go over TLS on
// loopback, and how long a graceful stop of a replica takes to reach the
// others. It runs only with BRPC_CLUSTER_MEASURE=1, or =described (the
// figures need a quiet machine, not a test run).
func TestClusterMeasure(t *testing.T) {
	if os.Getenv("BRPC_CLUSTER_MEASURE") == "" {
		t.Skip("set BRPC_CLUSTER_MEASURE=1 to measure")
	}
	const calls = 3000
	// BRPC_CLUSTER_MEASURE=described describes the echo service to the
	// replicas (WithGatewayServices): the gateway and the replica
	// endpoints relay its unary calls as unary calls.
	var srvOpts []brpc.ServerOption
	if os.Getenv("BRPC_CLUSTER_MEASURE") == "described" {
		srvOpts = append(srvOpts, brpc.WithGatewayServices(&testpb.Echo_ServiceDesc))
	}
	tc := newTestClusterWith(t, 3, brpc.NewMemoryPresence(), nil, srvOpts)
	r0, r1, r2 := tc.nodes[0], tc.nodes[1], tc.nodes[2]
	tc.connect(r0, "quic", "near", "near")
	tc.connect(r1, "quic", "far", "far")
	tc.waitPeers([]brpc.ClusterPeer{{ID: "far", Replica: "r1"}, {ID: "near", Replica: "r0"}})
	ctx := testenv.Ctx(t)
	near, _ := r0.srv.Client("near")
	far, _ := r0.srv.Client("far")
	plain := plainTLSStub(t, tc)
	for _, row := range []struct {
		name string
		call func() error
	}{
		{"plain grpc-go, TLS over loopback TCP", func() error { _, err := plain.Unary(ctx, &testpb.EchoRequest{Message: "m"}); return err }},
		{"Client(id), client on this replica (QUIC)", func() error { _, err := near.Unary(ctx, &testpb.EchoRequest{Message: "m"}); return err }},
		{"Client(id), client on another replica (QUIC)", func() error { _, err := far.Unary(ctx, &testpb.EchoRequest{Message: "m"}); return err }},
		{"gateway, client on this replica", func() error {
			_, err := r0.gateway.Unary(to(ctx, "near"), &testpb.EchoRequest{Message: "m"})
			return err
		}},
		{"gateway, client on another replica", func() error {
			_, err := r0.gateway.Unary(to(ctx, "far"), &testpb.EchoRequest{Message: "m"})
			return err
		}},
	} {
		lat := make([]time.Duration, 0, calls)
		for i := range calls + 200 {
			start := time.Now()
			if err := row.call(); err != nil {
				t.Fatalf("%s: %v", row.name, err)
			}
			if i >= 200 {
				lat = append(lat, time.Since(start))
			}
		}
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		t.Logf("| %s | %v | %v |", row.name, lat[len(lat)/2].Round(time.Microsecond), lat[len(lat)*99/100].Round(time.Microsecond))
	}

	// A graceful stop of a replica with 100 clients.
	const n = 100
	var want []brpc.ClusterPeer
	for i := range n {
		id := fmt.Sprintf("m%03d", i)
		tc.connect(r1, testenv.Transports[i%2], id, id)
		want = append(want, brpc.ClusterPeer{ID: id, Replica: "r1"})
	}
	all := append(slices.Clone(want), brpc.ClusterPeer{ID: "far", Replica: "r1"}, brpc.ClusterPeer{ID: "near", Replica: "r0"})
	sort.Slice(all, func(i, j int) bool { return all[i].ID < all[j].ID })
	tc.waitPeers(all, r0)
	start := time.Now()
	gone := make(chan time.Duration, 1)
	go func() {
		for len(r0.srv.ClusterPeers()) != 1 {
			time.Sleep(100 * time.Microsecond)
		}
		gone <- time.Since(start)
	}()
	r1.shutdown(t, true)
	stopped := time.Since(start)
	t.Logf("graceful stop of a replica with %d clients: its records gone from another replica's cache after %v; GracefulStop returned after %v", n+1, (<-gone).Round(time.Microsecond), stopped.Round(time.Millisecond))

	start = time.Now()
	for i := range n {
		id := fmt.Sprintf("m%03d", i)
		tc.connect(r2, testenv.Transports[i%2], id, id)
	}
	dialed := time.Since(start)
	testenv.WaitFor(t, 10*time.Second, "r0 to see the clients on r2", func() bool { return len(r0.srv.ClusterPeers()) == n+1 })
	t.Logf("%d clients dialed to another replica in %v, all in r0's cache after %v", n, dialed.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))

	start = time.Now()
	for range calls {
		if _, err := r0.srv.Client("nobody"); err == nil {
			t.Fatal("Client(nobody) found someone")
		}
	}
	t.Logf("Client(id) of an unknown ID: %v a lookup", (time.Since(start) / calls).Round(time.Nanosecond))
}

// plainTLSStub is a plain grpc-go echo server and client over TLS on
// loopback TCP, as the replicas talk to each other.
func plainTLSStub(t *testing.T, tc *testCluster) testpb.EchoClient {
	t.Helper()
	stls, err := tc.ca.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(stls)))
	testpb.RegisterEchoServer(gs, &testenv.Echo{Name: "plain"})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: tc.ca.Pool})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return testpb.NewEchoClient(cc)
}
