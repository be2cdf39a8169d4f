package brpc

import (
	"context"
	"encoding/base64"
	"errors"
	"sort"
	"strings"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/brpc-go/brpc/adminpb"
	"github.com/brpc-go/brpc/internal/grpcglue"
	"github.com/brpc-go/brpc/internal/server"
)

// AdminWatchBuffer is how many peer events may wait, per WatchPeers call of
// the admin service, for the caller to read them. A caller that falls
// further behind has its watch ended with codes.ResourceExhausted.
const AdminWatchBuffer = 1024

// Page sizes of the admin service's ListPeers.
const (
	adminDefaultPageSize = 1000
	adminMaxPageSize     = 10000
)

// RegisterAdmin registers brpc's admin service, brpc.admin.v1.Admin
// (adminpb/admin.proto), on r: typically the *grpc.Server that serves the
// Gateway, so that one address answers both. It reports this server's
// clients to any gRPC tool:
//
//   - ListPeers lists the connected clients (the fields of Peer), ordered by
//     ID, at most 1000 a page unless asked otherwise (10000 at most).
//   - WatchPeers streams clients connecting and disconnecting, with the kind
//     and reason of each disconnection, as they happen; asked to, it first
//     sends the clients connected already (CURRENT events). A SYNCED event
//     marks the moment the watch began: nothing after it is missed or
//     repeated. Events never wait for a watcher: each WatchPeers call has
//     AdminWatchBuffer events of room, and one that lets it fill up (it
//     stopped reading, or reads slower than clients come and go) is cut off
//     at once, even from what it had buffered (what it got is every event
//     up to some point, without a gap), and ends with
//     codes.ResourceExhausted as soon as its last send returns: watch
//     again, with include_current, to catch up. Every watch ends with codes.Unavailable once the server has
//     stopped and reported its clients' disconnections.
//   - ListClusterPeers lists the clients of every replica of the server's
//     cluster (ClusterPeers) with the replica holding each and the name of
//     the replica answering, paged as ListPeers; on a server without
//     WithCluster, its own clients with an empty replica.
//
// The admin service decides nobody's access: anyone who can call r can list
// the clients and their metadata. Guard it with r's own interceptors (or
// credentials), as for any service of the application. It uses brpc's own
// subscription to peer events, apart from WithPeerEvents, which keeps
// receiving every event.
func (s *Server[C]) RegisterAdmin(r grpc.ServiceRegistrar) {
	adminpb.RegisterAdminServer(r, &adminService{core: s.core, buffer: AdminWatchBuffer, clusterPeers: s.ClusterPeers, replica: s.replica})
}

// adminService serves brpc.admin.v1.Admin for one server.
type adminService struct {
	adminpb.UnimplementedAdminServer
	core   *server.Server
	buffer int // AdminWatchBuffer, or less in tests
	// clusterPeers is the server's ClusterPeers; replica its replica name.
	clusterPeers func() []ClusterPeer
	replica      string
}

// adminPageToken is the next_page_token of a page whose last client is
// id. IDs are any strings an authenticator returned, and a protobuf string
// must be valid UTF-8, so the token carries the ID in base64.
func adminPageToken(id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(id))
}

// adminPageAfter is the ID a page_token goes on after; "" for none.
func adminPageAfter(tok string) (string, error) {
	if tok == "" {
		return "", nil
	}
	id, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(id) == 0 {
		return "", status.Errorf(codes.InvalidArgument, "brpc admin: page_token %q is not a next_page_token of this service", tok)
	}
	return string(id), nil
}

// adminPageSize is the page size a request asks for, within bounds.
func adminPageSize(size int32) (int, error) {
	switch {
	case size < 0:
		return 0, status.Errorf(codes.InvalidArgument, "brpc admin: page_size must not be negative, not %d", size)
	case size == 0:
		return adminDefaultPageSize, nil
	case size > adminMaxPageSize:
		return adminMaxPageSize, nil
	}
	return int(size), nil
}

// ListPeers lists a page of the connected clients. The page token is the
// last ID of the previous page: the registry is ordered by ID, and a
// client that connects or leaves between pages moves no other.
func (a *adminService) ListPeers(_ context.Context, req *adminpb.ListPeersRequest) (*adminpb.ListPeersResponse, error) {
	peers := a.core.Peers()
	start, end, next, err := adminPage(req.GetPageSize(), req.GetPageToken(), len(peers), func(i int) string { return peers[i].ID })
	if err != nil {
		return nil, err
	}
	resp := &adminpb.ListPeersResponse{Peers: make([]*adminpb.Peer, 0, end-start), NextPageToken: next}
	for _, p := range peers[start:end] {
		resp.Peers = append(resp.Peers, adminPeer(p))
	}
	return resp, nil
}

// ListClusterPeers lists a page of the cluster's clients, paged by ID as
// ListPeers is: ClusterPeers is ordered by ID.
func (a *adminService) ListClusterPeers(_ context.Context, req *adminpb.ListClusterPeersRequest) (*adminpb.ListClusterPeersResponse, error) {
	peers := a.clusterPeers()
	start, end, next, err := adminPage(req.GetPageSize(), req.GetPageToken(), len(peers), func(i int) string { return peers[i].ID })
	if err != nil {
		return nil, err
	}
	resp := &adminpb.ListClusterPeersResponse{Peers: make([]*adminpb.ClusterPeer, 0, end-start), Replica: validUTF8(a.replica), NextPageToken: next}
	for _, p := range peers[start:end] {
		resp.Peers = append(resp.Peers, &adminpb.ClusterPeer{Id: validUTF8(p.ID), Replica: validUTF8(p.Replica)})
	}
	return resp, nil
}

// adminPage picks, from n entries ordered by ID (idAt), the page that a
// request's size and token name: entries [start, end), and the token of
// the page after it ("" when this is the last).
func adminPage(pageSize int32, token string, n int, idAt func(int) string) (start, end int, next string, err error) {
	size, err := adminPageSize(pageSize)
	if err != nil {
		return 0, 0, "", err
	}
	after, err := adminPageAfter(token)
	if err != nil {
		return 0, 0, "", err
	}
	if after != "" {
		start = sort.Search(n, func(i int) bool { return idAt(i) > after })
	}
	end = min(start+size, n)
	if end < n {
		next = adminPageToken(idAt(end - 1))
	}
	return start, end, next, nil
}

// WatchPeers streams peer events until the caller goes away, falls behind
// or the server stops.
func (a *adminService) WatchPeers(req *adminpb.WatchPeersRequest, stream grpc.ServerStreamingServer[adminpb.PeerEvent]) error {
	current, w := a.core.Watch(server.WatchConfig{
		Buffer:   a.buffer,
		Current:  req.GetIncludeCurrent(),
		Rejected: req.GetIncludeRejected(),
	})
	defer w.Close()
	began := timestamppb.Now()
	for _, p := range current {
		if err := stream.Send(&adminpb.PeerEvent{Type: adminpb.PeerEventType_PEER_EVENT_TYPE_CURRENT, Peer: adminPeer(p), Time: began}); err != nil {
			return err
		}
	}
	if err := stream.Send(&adminpb.PeerEvent{Type: adminpb.PeerEventType_PEER_EVENT_TYPE_SYNCED, Time: began}); err != nil {
		return err
	}
	ctx := stream.Context()
	for {
		ev, err := w.Next(ctx)
		if err != nil {
			return watchEnded(ctx, err, a.buffer)
		}
		if err := stream.Send(adminEvent(ev)); err != nil {
			return err
		}
	}
}

// watchEnded is the status a watch returns when it ends.
func watchEnded(ctx context.Context, err error, buffer int) error {
	switch {
	case ctx.Err() != nil:
		return status.FromContextError(ctx.Err()).Err()
	case errors.Is(err, server.ErrWatchOverrun):
		return status.Errorf(codes.ResourceExhausted, "brpc admin: the watch fell more than %d events behind and was ended; watch again (with include_current to catch up)", buffer)
	case errors.Is(err, server.ErrWatchStopped):
		return status.Error(codes.Unavailable, "brpc admin: the server stopped")
	default:
		return status.Errorf(codes.Internal, "brpc admin: the watch ended: %v", err)
	}
}

func adminEvent(ev server.Event) *adminpb.PeerEvent {
	out := &adminpb.PeerEvent{
		Type:   adminpb.PeerEventType(ev.Type),
		Peer:   adminPeer(ev.Peer),
		Kind:   string(ev.Kind),
		Reason: validUTF8(ev.Reason),
		Time:   timestamppb.New(ev.Time),
	}
	if ev.Err != nil {
		out.Error = validUTF8(ev.Err.Error())
	}
	return out
}

func adminPeer(p grpcglue.Peer) *adminpb.Peer {
	out := &adminpb.Peer{Id: validUTF8(p.ID), Transport: p.Transport, Metadata: adminMetadata(p.Metadata)}
	if p.RemoteAddr != nil {
		out.RemoteAddr = p.RemoteAddr.String()
	}
	if !p.ConnectedAt.IsZero() {
		out.ConnectedAt = timestamppb.New(p.ConnectedAt)
	}
	return out
}

// adminMetadata converts a client's metadata for the admin service, whose
// strings must be UTF-8: binary ("-bin") values travel in base64, as gRPC
// sends them on the wire.
func adminMetadata(md metadata.MD) map[string]*adminpb.MetadataValues {
	if len(md) == 0 {
		return nil
	}
	out := make(map[string]*adminpb.MetadataValues, len(md))
	for k, vals := range md {
		bin := strings.HasSuffix(k, "-bin")
		conv := make([]string, len(vals))
		for i, v := range vals {
			if bin {
				conv[i] = base64.StdEncoding.EncodeToString([]byte(v))
			} else {
				conv[i] = validUTF8(v)
			}
		}
		out[validUTF8(k)] = &adminpb.MetadataValues{Values: conv}
	}
	return out
}

// validUTF8 keeps a string that protobuf's string fields would refuse from
// failing the whole response.
func validUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}
