package brpc_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/adminpb"
	"github.com/brpc-go/brpc/internal/testenv"
	"github.com/brpc-go/brpc/internal/testpb"
)

// serveAdminGateway serves, on a loopback listener, a *grpc.Server built
// with opts that relays gateway calls to srv's clients, answers reflection
// for itself and for them (RegisterGatewayReflection) and serves srv's admin
// service; it returns a plain grpc-go connection to it and its address.
func serveAdminGateway(t *testing.T, srv *brpc.Server[testpb.EchoClient], authorize brpc.GatewayAuthorizer, opts ...grpc.ServerOption) (*grpc.ClientConn, string) {
	t.Helper()
	gw := srv.Gateway(authorize)
	gs := grpc.NewServer(append(opts, grpc.UnknownServiceHandler(gw))...)
	brpc.RegisterGatewayReflection(gs, gw)
	srv.RegisterAdmin(gs)
	return serveGRPC(t, gs)
}

// serveGRPC serves gs on a loopback listener until t ends and returns a
// plain grpc-go connection to it and its address.
func serveGRPC(t *testing.T, gs *grpc.Server) (*grpc.ClientConn, string) {
	t.Helper()
	addr := serveOnLoopback(t, gs)
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc, addr
}

func TestAdminListPeers(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		e := testenv.NewPlainOn(t, tr)
		alice := e.Connect(testenv.ClientConfig{Name: "alice", MD: metadata.Pairs("name", "alice", "token-bin", "\xff\x00")})
		bob := e.Connect(testenv.ClientConfig{Name: "bob"})
		cc, _ := serveAdminGateway(t, e.Srv, allowAll)
		admin := adminpb.NewAdminClient(cc)
		ctx := testenv.Ctx(t)

		resp, err := admin.ListPeers(ctx, &adminpb.ListPeersRequest{})
		if err != nil {
			t.Fatalf("ListPeers: %v", err)
		}
		want := e.Srv.Peers()
		if len(resp.GetPeers()) != 2 || len(want) != 2 || resp.GetNextPageToken() != "" {
			t.Fatalf("ListPeers = %v, want the 2 peers of Peers() on one page", resp)
		}
		for i, p := range resp.GetPeers() {
			w := want[i]
			if p.GetId() != w.ID || p.GetTransport() != tr || p.GetRemoteAddr() != w.RemoteAddr.String() ||
				!p.GetConnectedAt().AsTime().Equal(w.ConnectedAt) {
				t.Errorf("peer %d = %v, want %+v", i, p, w)
			}
		}
		var got *adminpb.Peer
		for _, p := range resp.GetPeers() {
			if p.GetId() == alice.ID() {
				got = p
			}
		}
		if got == nil {
			t.Fatalf("ListPeers lacks alice (%s): %v", alice.ID(), resp)
		}
		if v := got.GetMetadata()["name"].GetValues(); !slices.Equal(v, []string{"alice"}) {
			t.Errorf("alice's name metadata = %q, want [alice]", v)
		}
		if v := got.GetMetadata()["token-bin"].GetValues(); !slices.Equal(v, []string{base64.StdEncoding.EncodeToString([]byte("\xff\x00"))}) {
			t.Errorf("alice's binary metadata = %q, want it in base64", v)
		}

		first, err := admin.ListPeers(ctx, &adminpb.ListPeersRequest{PageSize: 1})
		if err != nil || len(first.GetPeers()) != 1 || first.GetNextPageToken() == "" {
			t.Fatalf("ListPeers page_size 1: %v, %v; want one peer and a next page", first, err)
		}
		second, err := admin.ListPeers(ctx, &adminpb.ListPeersRequest{PageSize: 1, PageToken: first.GetNextPageToken()})
		if err != nil || len(second.GetPeers()) != 1 || second.GetNextPageToken() != "" {
			t.Fatalf("ListPeers second page: %v, %v; want the last peer", second, err)
		}
		ids := []string{first.GetPeers()[0].GetId(), second.GetPeers()[0].GetId()}
		if !slices.Equal(ids, []string{want[0].ID, want[1].ID}) {
			t.Errorf("pages list %q, want %q and %q in ID order", ids, want[0].ID, want[1].ID)
		}
		if _, err := admin.ListPeers(ctx, &adminpb.ListPeersRequest{PageSize: -1}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("ListPeers page_size -1: %v, want InvalidArgument", err)
		}
		w, err := admin.WatchPeers(ctx, &adminpb.WatchPeersRequest{})
		if err != nil {
			t.Fatal(err)
		}
		recvEvent(t, w) // SYNCED
		bob.Shutdown()
		// bob's disconnect is reported once it left Peers().
		if ev := recvEvent(t, w); ev.GetType() != adminpb.PeerEventType_PEER_EVENT_TYPE_DISCONNECTED {
			t.Fatalf("after bob closed: %v, want DISCONNECTED", ev)
		}
		resp, err = admin.ListPeers(ctx, &adminpb.ListPeersRequest{})
		if err != nil || len(resp.GetPeers()) != 1 || resp.GetPeers()[0].GetId() != alice.ID() {
			t.Errorf("ListPeers after bob left: %v, %v; want alice alone", resp, err)
		}
	})
}

// connectedEvents is a server option that reports each client connected
// once the server has reported it everywhere (to admin watches too).
func connectedEvents() (brpc.ServerOption, <-chan brpc.PeerEvent) {
	ch := make(chan brpc.PeerEvent, 16)
	return brpc.WithPeerEvents(func(ev brpc.PeerEvent) {
		if ev.Type == brpc.PeerConnected {
			ch <- ev
		}
	}), ch
}

// recvEvent receives the watch's next event.
func recvEvent(t *testing.T, w adminpb.Admin_WatchPeersClient) *adminpb.PeerEvent {
	t.Helper()
	ev, err := w.Recv()
	if err != nil {
		t.Fatalf("WatchPeers: %v", err)
	}
	return ev
}

func TestAdminWatchPeers(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		opt, connected := connectedEvents()
		e := testenv.New(t, testenv.Config{Transport: tr, ServerOpts: []brpc.ServerOption{opt}})
		alice := e.Connect(testenv.ClientConfig{Name: "alice"})
		// Dial returns once the welcome is read; the server reports the
		// client connected right after it wrote it.
		<-connected
		cc, _ := serveAdminGateway(t, e.Srv, allowAll)
		admin := adminpb.NewAdminClient(cc)
		ctx := testenv.Ctx(t)

		w, err := admin.WatchPeers(ctx, &adminpb.WatchPeersRequest{IncludeCurrent: true})
		if err != nil {
			t.Fatal(err)
		}
		if ev := recvEvent(t, w); ev.GetType() != adminpb.PeerEventType_PEER_EVENT_TYPE_CURRENT || ev.GetPeer().GetId() != alice.ID() || ev.GetPeer().GetTransport() != tr {
			t.Fatalf("first event %v, want alice as CURRENT", ev)
		}
		if ev := recvEvent(t, w); ev.GetType() != adminpb.PeerEventType_PEER_EVENT_TYPE_SYNCED || ev.GetPeer() != nil {
			t.Fatalf("second event %v, want SYNCED", ev)
		}
		bare, err := admin.WatchPeers(ctx, &adminpb.WatchPeersRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if ev := recvEvent(t, bare); ev.GetType() != adminpb.PeerEventType_PEER_EVENT_TYPE_SYNCED {
			t.Fatalf("a watch without include_current began with %v, want SYNCED", ev)
		}

		carol := e.Connect(testenv.ClientConfig{Name: "carol"})
		for _, watch := range []adminpb.Admin_WatchPeersClient{w, bare} {
			ev := recvEvent(t, watch)
			if ev.GetType() != adminpb.PeerEventType_PEER_EVENT_TYPE_CONNECTED || ev.GetPeer().GetId() != carol.ID() || ev.GetPeer().GetConnectedAt() == nil || ev.GetTime() == nil {
				t.Fatalf("after carol connected: %v, want CONNECTED carol with its times", ev)
			}
		}
		carol.Shutdown()
		ev := recvEvent(t, w)
		if ev.GetType() != adminpb.PeerEventType_PEER_EVENT_TYPE_DISCONNECTED || ev.GetPeer().GetId() != carol.ID() || ev.GetKind() != string(brpc.DisconnectClientClosed) || ev.GetReason() == "" {
			t.Fatalf("after carol closed: %v, want DISCONNECTED carol, kind client_closed, with a reason", ev)
		}
		recvEvent(t, bare)

		// Stopping the server reports alice's disconnect, then ends the
		// watches.
		e.Srv.Stop()
		ev = recvEvent(t, w)
		if ev.GetType() != adminpb.PeerEventType_PEER_EVENT_TYPE_DISCONNECTED || ev.GetPeer().GetId() != alice.ID() || ev.GetKind() != string(brpc.DisconnectServerStopped) {
			t.Fatalf("after Stop: %v, want DISCONNECTED alice, kind server_stopped", ev)
		}
		if _, err := w.Recv(); status.Code(err) != codes.Unavailable {
			t.Fatalf("the watch after Stop: %v, want Unavailable", err)
		}
		late, err := admin.WatchPeers(ctx, &adminpb.WatchPeersRequest{IncludeCurrent: true})
		if err != nil {
			t.Fatal(err)
		}
		if ev := recvEvent(t, late); ev.GetType() != adminpb.PeerEventType_PEER_EVENT_TYPE_SYNCED {
			t.Fatalf("a watch begun after Stop: %v, want SYNCED and no peer", ev)
		}
		if _, err := late.Recv(); status.Code(err) != codes.Unavailable {
			t.Fatalf("a watch begun after Stop: %v, want Unavailable", err)
		}
	})
}

func TestAdminWatchReportsRejections(t *testing.T) {
	refuse := brpc.WithAuthenticator(func(_ context.Context, info brpc.AuthInfo) (string, error) {
		if v := info.Metadata.Get("name"); len(v) == 1 && v[0] == "mallory" {
			return "", status.Error(codes.PermissionDenied, "not mallory")
		}
		return "", nil
	})
	e := testenv.New(t, testenv.Config{ServerOpts: []brpc.ServerOption{refuse}})
	cc, _ := serveAdminGateway(t, e.Srv, allowAll)
	admin := adminpb.NewAdminClient(cc)
	ctx := testenv.Ctx(t)
	all, err := admin.WatchPeers(ctx, &adminpb.WatchPeersRequest{IncludeRejected: true})
	if err != nil {
		t.Fatal(err)
	}
	quiet, err := admin.WatchPeers(ctx, &adminpb.WatchPeersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	recvEvent(t, all)
	recvEvent(t, quiet)
	if _, err := e.Dial(testenv.ClientConfig{MD: metadata.Pairs("name", "mallory")}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("mallory's Dial: %v, want PermissionDenied", err)
	}
	ev := recvEvent(t, all)
	if ev.GetType() != adminpb.PeerEventType_PEER_EVENT_TYPE_REJECTED || ev.GetPeer().GetId() != "" || ev.GetReason() != "not mallory" ||
		!slices.Equal(ev.GetPeer().GetMetadata()["name"].GetValues(), []string{"mallory"}) {
		t.Fatalf("after mallory was refused: %v, want REJECTED with her metadata and the reason", ev)
	}
	e.Srv.Stop()
	if _, err := quiet.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("a watch without include_rejected got %v, want no event and then Unavailable", err)
	}
}

// stallingSends makes a stream's sends wait, after the first n, until
// release is closed: a watcher that has stopped reading, without the
// megabytes it would take to fill the flow-control windows.
func stallingSends(n int, release <-chan struct{}) grpc.ServerOption {
	return grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if info.FullMethod != adminpb.Admin_WatchPeers_FullMethodName {
			return h(srv, ss)
		}
		md, _ := metadata.FromIncomingContext(ss.Context())
		if len(md.Get("x-stall")) == 0 {
			return h(srv, ss)
		}
		return h(srv, &stallingStream{ServerStream: ss, left: n, release: release})
	})
}

type stallingStream struct {
	grpc.ServerStream
	left    int
	release <-chan struct{}
}

func (s *stallingStream) SendMsg(m any) error {
	if s.left == 0 {
		<-s.release
	} else {
		s.left--
	}
	return s.ServerStream.SendMsg(m)
}

// A watcher that lets its buffer fill up is ended with ResourceExhausted;
// the server and another watcher go on.
func TestAdminWatchThatFallsBehindEndsWithResourceExhausted(t *testing.T) {
	e := testenv.New(t, testenv.Config{})
	release := make(chan struct{})
	gs := grpc.NewServer(stallingSends(1, release))
	const buffer = 2
	brpc.RegisterAdminWithBuffer(e.Srv, gs, buffer)
	cc, _ := serveGRPC(t, gs)
	admin := adminpb.NewAdminClient(cc)
	ctx := testenv.Ctx(t)
	slow, err := admin.WatchPeers(metadata.AppendToOutgoingContext(ctx, "x-stall", "1"), &adminpb.WatchPeersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	fast, err := admin.WatchPeers(ctx, &adminpb.WatchPeersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	recvEvent(t, slow) // SYNCED; the slow watch's next send stalls
	recvEvent(t, fast)
	// One event may wait in the stalled send, buffer more in the buffer;
	// the one after that overruns it.
	for i := range buffer + 2 {
		c := e.Connect(testenv.ClientConfig{Name: fmt.Sprint("c", i)})
		if ev := recvEvent(t, fast); ev.GetType() != adminpb.PeerEventType_PEER_EVENT_TYPE_CONNECTED || ev.GetPeer().GetId() != c.ID() {
			t.Fatalf("the other watch got %v, want CONNECTED %s", ev, c.ID())
		}
	}
	close(release)
	var got int
	for {
		_, err := slow.Recv()
		if err == nil {
			got++
			continue
		}
		if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "watch again") {
			t.Fatalf("the overrun watch ended with %v, want ResourceExhausted saying to watch again", err)
		}
		break
	}
	if got > 1 {
		t.Errorf("the overrun watch delivered %d more events; want at most the one its stalled send held", got)
	}
	e.Connect(testenv.ClientConfig{Name: "after"})
	if ev := recvEvent(t, fast); ev.GetType() != adminpb.PeerEventType_PEER_EVENT_TYPE_CONNECTED {
		t.Fatalf("after the overrun the other watch got %v, want CONNECTED", ev)
	}
}

// Reflection on a gateway with RegisterGatewayReflection: without a target
// header the gateway's own services, with one the client's.
func TestGatewayReflectionOwnAndClients(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		e := testenv.NewPlainOn(t, tr)
		alice := e.Connect(testenv.ClientConfig{Name: "alice", Register: func(gs *grpc.Server) { reflection.Register(gs) }})
		var authorized []string
		authorize := func(_ context.Context, id, method string) error {
			authorized = append(authorized, id+" "+method)
			if id == "nobody-allowed" {
				return status.Error(codes.PermissionDenied, "no")
			}
			return nil
		}
		cc, _ := serveAdminGateway(t, e.Srv, authorize)
		ctx := testenv.Ctx(t)
		gatewayOwn := []string{"brpc.admin.v1.Admin", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}
		alices := []string{"brpc.test.v1.Echo", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}
		for _, version := range []string{"v1", "v1alpha"} {
			if got := listServices(t, ctx, cc, version); !slices.Equal(got, gatewayOwn) {
				t.Errorf("%s list without a target: %q, want the gateway's own %q", version, got, gatewayOwn)
			}
			if got := listServices(t, to(ctx, alice.ID()), cc, version); !slices.Equal(got, alices) {
				t.Errorf("%s list for alice: %q, want alice's %q", version, got, alices)
			}
		}
		wantAuth := []string{
			alice.ID() + " /grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
			alice.ID() + " /grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
		}
		if !slices.Equal(authorized, wantAuth) {
			t.Errorf("the authorizer saw %q, want only the relayed calls %q", authorized, wantAuth)
		}
		for _, c := range []struct {
			ctx  context.Context
			code codes.Code
		}{
			{metadata.AppendToOutgoingContext(ctx, brpc.GatewayTargetHeader, ""), codes.InvalidArgument},
			{to(ctx, "nobody-allowed"), codes.PermissionDenied},
			{to(ctx, "nobody"), codes.NotFound},
		} {
			_, err := listServicesErr(c.ctx, cc, "v1")
			if status.Code(err) != c.code {
				md, _ := metadata.FromOutgoingContext(c.ctx)
				t.Errorf("list with %v: %v, want %v", md, err, c.code)
			}
		}
	})
}

func listServices(t *testing.T, ctx context.Context, cc *grpc.ClientConn, version string) []string {
	t.Helper()
	names, err := listServicesErr(ctx, cc, version)
	if err != nil {
		t.Fatalf("%s reflection list: %v", version, err)
	}
	return names
}

// listServicesErr asks reflection of the given version for the services,
// sorted. Both versions' messages are the same on the wire, so the v1
// messages are sent on the v1alpha method too.
func listServicesErr(ctx context.Context, cc *grpc.ClientConn, version string) ([]string, error) {
	if version != "v1" {
		version = "v1alpha"
	}
	desc := &grpc.StreamDesc{StreamName: "ServerReflectionInfo", ServerStreams: true, ClientStreams: true}
	st, err := cc.NewStream(ctx, desc, "/grpc.reflection."+version+".ServerReflection/ServerReflectionInfo")
	if err != nil {
		return nil, err
	}
	// A refused call's send may fail with io.EOF; its receive tells the
	// status.
	_ = st.SendMsg(&reflectionv1.ServerReflectionRequest{MessageRequest: &reflectionv1.ServerReflectionRequest_ListServices{}})
	var r reflectionv1.ServerReflectionResponse
	if err := st.RecvMsg(&r); err != nil {
		return nil, err
	}
	var names []string
	for _, s := range r.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	st.CloseSend()
	slices.Sort(names)
	return names, nil
}
