package brpc_test

import (
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/adminpb"
	"github.com/brpc-go/brpc/internal/testenv"
)

func TestAdminListClusterPeers(t *testing.T) {
	tc := newTestCluster(t, 2, brpc.NewMemoryPresence(), nil)
	r0, r1 := tc.nodes[0], tc.nodes[1]
	tc.connect(r0, "quic", "c0", "c0")
	tc.connect(r1, "tcp", "c1", "c1")
	tc.connect(r1, "quic", "c2", "c2")
	want := []brpc.ClusterPeer{{ID: "c0", Replica: "r0"}, {ID: "c1", Replica: "r1"}, {ID: "c2", Replica: "r1"}}
	tc.waitPeers(want, r0)
	cc, _ := serveAdminGateway(t, r0.srv, allowAll)
	admin := adminpb.NewAdminClient(cc)
	ctx := testenv.Ctx(t)

	resp, err := admin.ListClusterPeers(ctx, &adminpb.ListClusterPeersRequest{})
	if err != nil {
		t.Fatalf("ListClusterPeers: %v", err)
	}
	if resp.GetReplica() != "r0" || resp.GetNextPageToken() != "" || len(resp.GetPeers()) != len(want) {
		t.Fatalf("ListClusterPeers at r0 = %v, want replica r0 and the %d clients %v on one page", resp, len(want), want)
	}
	for i, p := range resp.GetPeers() {
		if p.GetId() != want[i].ID || p.GetReplica() != want[i].Replica {
			t.Errorf("peer %d = %v, want %+v", i, p, want[i])
		}
	}
	// Pages of two: c0 and c1, then c2.
	first, err := admin.ListClusterPeers(ctx, &adminpb.ListClusterPeersRequest{PageSize: 2})
	if err != nil || len(first.GetPeers()) != 2 || first.GetNextPageToken() == "" {
		t.Fatalf("ListClusterPeers page_size 2: %v, %v; want two clients and a next page", first, err)
	}
	second, err := admin.ListClusterPeers(ctx, &adminpb.ListClusterPeersRequest{PageSize: 2, PageToken: first.GetNextPageToken()})
	if err != nil || len(second.GetPeers()) != 1 || second.GetPeers()[0].GetId() != "c2" || second.GetNextPageToken() != "" {
		t.Fatalf("ListClusterPeers second page: %v, %v; want c2 alone", second, err)
	}
	if _, err := admin.ListClusterPeers(ctx, &adminpb.ListClusterPeersRequest{PageSize: -1}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("ListClusterPeers page_size -1: %v, want InvalidArgument", err)
	}
	// ListPeers keeps its local meaning.
	local, err := admin.ListPeers(ctx, &adminpb.ListPeersRequest{})
	if err != nil || len(local.GetPeers()) != 1 || local.GetPeers()[0].GetId() != "c0" {
		t.Errorf("ListPeers at r0: %v, %v; want c0 alone", local, err)
	}
}

func TestAdminListClusterPeersWithoutACluster(t *testing.T) {
	e := testenv.NewPlainOn(t, "quic")
	alice := e.Connect(testenv.ClientConfig{Name: "alice"})
	cc, _ := serveAdminGateway(t, e.Srv, allowAll)
	resp, err := adminpb.NewAdminClient(cc).ListClusterPeers(testenv.Ctx(t), &adminpb.ListClusterPeersRequest{})
	if err != nil {
		t.Fatalf("ListClusterPeers: %v", err)
	}
	if resp.GetReplica() != "" || len(resp.GetPeers()) != 1 || resp.GetPeers()[0].GetId() != alice.ID() || resp.GetPeers()[0].GetReplica() != "" {
		t.Errorf("ListClusterPeers without a cluster = %v, want alice (%s) alone, no replica", resp, alice.ID())
	}
}
