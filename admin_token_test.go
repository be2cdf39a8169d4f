package brpc

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/brpc-go/brpc/adminpb"
)

// TestAdminPageTokenOfAnyID checks that a page ending at a client whose ID
// is not valid UTF-8 (an authenticator may return any string) still has a
// next_page_token that protobuf can carry and that leads to the next page,
// and that a token that is not one of the service's is InvalidArgument.
func TestAdminPageTokenOfAnyID(t *testing.T) {
	a := &adminService{clusterPeers: func() []ClusterPeer {
		return []ClusterPeer{{ID: "a\xff", Replica: "r"}, {ID: "b", Replica: "r"}}
	}}
	ctx := context.Background()
	first, err := a.ListClusterPeers(ctx, &adminpb.ListClusterPeersRequest{PageSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := proto.Marshal(first); err != nil {
		t.Fatalf("the first page cannot be sent: %v", err)
	}
	second, err := a.ListClusterPeers(ctx, &adminpb.ListClusterPeersRequest{PageSize: 1, PageToken: first.GetNextPageToken()})
	if err != nil {
		t.Fatal(err)
	}
	if len(second.GetPeers()) != 1 || second.GetPeers()[0].GetId() != "b" || second.GetNextPageToken() != "" {
		t.Fatalf("second page %v, want b alone", second)
	}
	if _, err := a.ListClusterPeers(ctx, &adminpb.ListClusterPeersRequest{PageToken: "not a token!"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a made-up page token: %v, want InvalidArgument", err)
	}
}
