package brpc_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	grpcstatus "google.golang.org/grpc/status"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/certs"
	"github.com/brpc-go/brpc/internal/testenv"
	"github.com/brpc-go/brpc/internal/testpb"
)

// replicaNode is one server of a test cluster: QUIC and TCP listeners for
// clients, a replica endpoint, and a gateway on a plain listener.
type replicaNode struct {
	name    string
	srv     *brpc.Server[testpb.EchoClient]
	targets map[string]string // transport -> target
	repAddr string
	gateway testpb.EchoClient // a plain grpc-go client of this replica's gateway
	events  *eventLog
	served  chan error
	stop    sync.Once
}

// eventLog records a replica's peer and cluster events, in order, and
// the presence calls of its membership (with ctlPresence).
type eventLog struct {
	mu   sync.Mutex
	list []string
	cl   []brpc.ClusterEvent
	wake chan struct{}
}

func newEventLog() *eventLog { return &eventLog{wake: make(chan struct{}, 1)} }

func (l *eventLog) add(s string) {
	l.mu.Lock()
	l.list = append(l.list, s)
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

func (l *eventLog) peer(ev brpc.PeerEvent) {
	switch ev.Type {
	case brpc.PeerConnected:
		l.add("connected " + ev.Peer.ID)
	case brpc.PeerDisconnected:
		l.add(fmt.Sprintf("disconnected %s %s", ev.Peer.ID, ev.Kind))
	}
}

func (l *eventLog) cluster(ev brpc.ClusterEvent) {
	l.mu.Lock()
	l.cl = append(l.cl, ev)
	l.mu.Unlock()
	l.add(ev.Kind.String())
}

func (l *eventLog) snapshot() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.list)
}

func (l *eventLog) clusterEvents(kind brpc.ClusterEventKind) []brpc.ClusterEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []brpc.ClusterEvent
	for _, ev := range l.cl {
		if ev.Kind == kind {
			out = append(out, ev)
		}
	}
	return out
}

// waitCount waits until n cluster events of kind were logged.
func (l *eventLog) waitCount(t *testing.T, kind brpc.ClusterEventKind, n int) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for len(l.clusterEvents(kind)) < n {
		select {
		case <-l.wake:
		case <-deadline:
			t.Fatalf("%d %v events within 10s, want %d", len(l.clusterEvents(kind)), kind, n)
		}
	}
}

// waitFor waits until an event s was logged.
func (l *eventLog) waitFor(t *testing.T, s string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for !slices.Contains(l.snapshot(), s) {
		select {
		case <-l.wake:
		case <-deadline:
			t.Fatalf("no %q event within 10s; events: %v", s, l.snapshot())
		}
	}
}

// waitForAny waits for one of the events in any.
func (l *eventLog) waitForAny(t *testing.T, any ...string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for !slices.ContainsFunc(l.snapshot(), func(e string) bool { return slices.Contains(any, e) }) {
		select {
		case <-l.wake:
		case <-deadline:
			t.Fatalf("none of %q within 10s; events: %v", any, l.snapshot())
		}
	}
}

// testCluster is n replicas sharing one presence.
type testCluster struct {
	t        *testing.T
	ca       *certs.CA
	presence brpc.Presence
	nodes    []*replicaNode
	// srvOpts are further options of every replica's brpc server.
	srvOpts []brpc.ServerOption
}

// authByName admits a client under the ID its "name" metadata gives.
func authByName(_ context.Context, info brpc.AuthInfo) (string, error) {
	if v := info.Metadata.Get("name"); len(v) == 1 {
		return v[0], nil
	}
	return "", errors.New("no name")
}

func replicaTLS(t *testing.T, ca *certs.CA, name string) *tls.Config {
	t.Helper()
	cert, err := ca.Replica(name)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: ca.Pool, ClientCAs: ca.Pool}
}

func newTestCluster(t *testing.T, n int, presence brpc.Presence, conf func(*brpc.ClusterConfig)) *testCluster {
	t.Helper()
	return newTestClusterWith(t, n, presence, conf, nil)
}

// newTestClusterWith is newTestCluster with srvOpts for every replica's
// brpc server.
func newTestClusterWith(t *testing.T, n int, presence brpc.Presence, conf func(*brpc.ClusterConfig), srvOpts []brpc.ServerOption) *testCluster {
	t.Helper()
	ca, err := certs.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	tc := &testCluster{t: t, ca: ca, presence: presence, srvOpts: srvOpts}
	for i := range n {
		tc.nodes = append(tc.nodes, tc.start(fmt.Sprintf("r%d", i), conf))
	}
	return tc
}

func (tc *testCluster) start(name string, conf func(*brpc.ClusterConfig)) *replicaNode {
	t := tc.t
	t.Helper()
	repLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	node := &replicaNode{name: name, targets: map[string]string{}, repAddr: repLis.Addr().String(), events: newEventLog(), served: make(chan error, 3)}
	cc := brpc.ClusterConfig{
		Replica:   name,
		Presence:  tc.presence,
		Advertise: node.repAddr,
		TLS:       replicaTLS(t, tc.ca, name),
	}
	if conf != nil {
		conf(&cc)
	}
	gs := grpc.NewServer()
	testpb.RegisterEchoServer(gs, &testenv.Echo{Name: name})
	node.srv = brpc.NewServer(gs, testpb.NewEchoClient, append([]brpc.ServerOption{brpc.WithAuthenticator(authByName),
		brpc.WithCluster(cc), brpc.WithPeerEvents(node.events.peer), brpc.WithClusterEvents(node.events.cluster)}, tc.srvOpts...)...)
	stls, err := tc.ca.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	for _, tr := range testenv.Transports {
		lis, err := testenv.Listen(tr, "127.0.0.1:0", stls)
		if err != nil {
			t.Fatal(err)
		}
		node.targets[tr] = tr + "://" + lis.Addr().String()
		go func() { node.served <- node.srv.Serve(lis) }()
	}
	go func() { node.served <- node.srv.ServeReplicas(repLis) }()
	gwAddr := serveGateway(t, node.srv.Gateway(allowAll))
	gcc, err := grpc.NewClient(gwAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gcc.Close() })
	node.gateway = testpb.NewEchoClient(gcc)
	t.Cleanup(func() { node.shutdown(t, false) })
	return node
}

// shutdown stops the replica (gracefully or not) once, and checks that its
// three Serve calls ended well.
func (n *replicaNode) shutdown(t *testing.T, graceful bool) {
	n.stop.Do(func() {
		if graceful {
			n.srv.GracefulStop()
		} else {
			n.srv.Stop()
		}
		for range 3 {
			if err := <-n.served; err != nil {
				t.Errorf("%s: Serve or ServeReplicas returned %v after stopping", n.name, err)
			}
		}
	})
}

// connect dials a client named id to node over transport; its echo
// service answers as echoName.
func (tc *testCluster) connect(node *replicaNode, transport, id, echoName string, grpcOpts ...grpc.ServerOption) *brpc.ClientConn {
	tc.t.Helper()
	cc, _ := tc.connectEcho(node, transport, id, echoName, grpcOpts...)
	return cc
}

// connectEcho is connect, returning the client's echo service too.
func (tc *testCluster) connectEcho(node *replicaNode, transport, id, echoName string, grpcOpts ...grpc.ServerOption) (*brpc.ClientConn, *testenv.Echo) {
	t := tc.t
	t.Helper()
	gs := grpc.NewServer(grpcOpts...)
	echo := &testenv.Echo{Name: echoName}
	testpb.RegisterEchoServer(gs, echo)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cc, err := brpc.Dial(ctx, node.targets[transport], brpc.WithTLSConfig(tc.ca.ClientTLS()), brpc.WithServer(gs),
		brpc.WithMetadata(metadata.Pairs("name", id)))
	if err != nil {
		gs.Stop()
		t.Fatalf("Dial %s to %s: %v", id, node.name, err)
	}
	t.Cleanup(func() {
		cc.Close()
		gs.Stop()
	})
	return cc, echo
}

// waitPeers waits until every node's ClusterPeers is want.
func (tc *testCluster) waitPeers(want []brpc.ClusterPeer, nodes ...*replicaNode) {
	tc.t.Helper()
	if nodes == nil {
		nodes = tc.nodes
	}
	for _, n := range nodes {
		testenv.WaitFor(tc.t, 10*time.Second, n.name+"'s ClusterPeers to be "+fmt.Sprint(want), func() bool {
			return slices.Equal(n.srv.ClusterPeers(), want)
		})
	}
}

// allKindsErr makes a call of every RPC kind on stub at once, each
// answered by the echo service named answerer, and reports each kind's
// outcome as it ends.
func allKindsErr(stub testpb.EchoClient, ctx context.Context, answerer string, report func(kind string, err error)) {
	var wg sync.WaitGroup
	defer wg.Wait()
	run := func(kind string, fn func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			report(kind, fn())
		}()
	}
	want := answerer + ":m"
	check := func(r *testpb.EchoResponse, err error) error {
		if err == nil && r.GetMessage() != want {
			err = fmt.Errorf("answered %q, want %q", r.GetMessage(), want)
		}
		return err
	}
	run("unary", func() error { return check(stub.Unary(ctx, &testpb.EchoRequest{Message: "m"})) })
	run("server stream", func() error {
		ss, err := stub.ServerStream(ctx, &testpb.EchoRequest{Message: "m", Count: 2})
		if err != nil {
			return err
		}
		for range 2 {
			if err := check(ss.Recv()); err != nil {
				return err
			}
		}
		if _, err := ss.Recv(); err != io.EOF {
			return fmt.Errorf("end: %v", err)
		}
		return nil
	})
	run("client stream", func() error {
		cs, err := stub.ClientStream(ctx)
		if err != nil {
			return err
		}
		for range 2 {
			cs.Send(&testpb.EchoRequest{Message: "m"})
		}
		return check(cs.CloseAndRecv())
	})
	run("bidi stream", func() error {
		bs, err := stub.BidiStream(ctx)
		if err != nil {
			return err
		}
		if err := bs.Send(&testpb.EchoRequest{Message: "m"}); err != nil {
			return err
		}
		if err := check(bs.Recv()); err != nil {
			return err
		}
		bs.CloseSend()
		if _, err := bs.Recv(); err != io.EOF {
			return fmt.Errorf("end: %v", err)
		}
		return nil
	})
}

// allKinds makes a call of every RPC kind on stub and checks that the
// echo service named answerer answered each.
func allKinds(t *testing.T, stub testpb.EchoClient, ctx context.Context, answerer, what string) {
	t.Helper()
	want := answerer + ":m"
	r, err := stub.Unary(ctx, &testpb.EchoRequest{Message: "m"})
	if err != nil || r.GetMessage() != want {
		t.Fatalf("%s: Unary = %q, %v; want %q", what, r.GetMessage(), err, want)
	}
	ss, err := stub.ServerStream(ctx, &testpb.EchoRequest{Message: "m", Count: 3})
	if err != nil {
		t.Fatalf("%s: ServerStream: %v", what, err)
	}
	for i := range 3 {
		r, err := ss.Recv()
		if err != nil || r.GetMessage() != want || r.GetIndex() != int32(i) {
			t.Fatalf("%s: ServerStream message %d = %v, %v", what, i, r, err)
		}
	}
	if _, err := ss.Recv(); err != io.EOF {
		t.Fatalf("%s: ServerStream end: %v, want EOF", what, err)
	}
	cs, err := stub.ClientStream(ctx)
	if err != nil {
		t.Fatalf("%s: ClientStream: %v", what, err)
	}
	for range 2 {
		if err := cs.Send(&testpb.EchoRequest{Message: "m"}); err != nil {
			t.Fatalf("%s: ClientStream send: %v", what, err)
		}
	}
	r, err = cs.CloseAndRecv()
	if err != nil || r.GetMessage() != want || r.GetIndex() != 2 {
		t.Fatalf("%s: ClientStream = %v, %v; want %q after 2 messages", what, r, err, want)
	}
	bs, err := stub.BidiStream(ctx)
	if err != nil {
		t.Fatalf("%s: BidiStream: %v", what, err)
	}
	for i := range 2 {
		if err := bs.Send(&testpb.EchoRequest{Message: "m"}); err != nil {
			t.Fatalf("%s: BidiStream send: %v", what, err)
		}
		r, err := bs.Recv()
		if err != nil || r.GetMessage() != want || r.GetIndex() != int32(i) {
			t.Fatalf("%s: BidiStream message %d = %v, %v", what, i, r, err)
		}
	}
	bs.CloseSend()
	if _, err := bs.Recv(); err != io.EOF {
		t.Fatalf("%s: BidiStream end: %v, want EOF", what, err)
	}
}

func TestClusterEveryClientFromEveryReplica(t *testing.T) {
	tc := newTestCluster(t, 3, brpc.NewMemoryPresence(), nil)
	// One client per replica, on both transports.
	clients := []struct {
		node      *replicaNode
		transport string
		id        string
	}{
		{tc.nodes[0], "quic", "c0"},
		{tc.nodes[1], "tcp", "c1"},
		{tc.nodes[2], "quic", "c2"},
		{tc.nodes[2], "tcp", "c3"},
	}
	var want []brpc.ClusterPeer
	for _, c := range clients {
		tc.connect(c.node, c.transport, c.id, "echo-"+c.id)
		want = append(want, brpc.ClusterPeer{ID: c.id, Replica: c.node.name})
	}
	tc.waitPeers(want)
	ctx := testenv.Ctx(t)
	for _, n := range tc.nodes {
		if got := len(n.srv.Peers()); got != countOn(want, n.name) {
			t.Errorf("%s: Peers() has %d clients, want only its own %d", n.name, got, countOn(want, n.name))
		}
		for _, c := range clients {
			stub, err := n.srv.Client(c.id)
			if err != nil {
				t.Fatalf("%s: Client(%s): %v", n.name, c.id, err)
			}
			allKinds(t, stub, ctx, "echo-"+c.id, n.name+" Client("+c.id+")")
			allKinds(t, n.gateway, to(ctx, c.id), "echo-"+c.id, n.name+" gateway to "+c.id)
		}
		if _, err := n.srv.Client("nobody"); codeOf(err) != "NotFound" {
			t.Errorf("%s: Client(nobody): %v, want NotFound", n.name, err)
		}
	}
	// Every call to another replica's client was forwarded and counted.
	fwd := tc.nodes[0].events.clusterEvents(brpc.ClusterForwarded)
	if len(fwd) != 2*4*3 {
		t.Errorf("r0 reported %d forwarded calls, want 24 (4 kinds, 3 remote clients, stub and gateway)", len(fwd))
	}
	for _, ev := range fwd {
		if ev.Code != "OK" || (ev.Replica != "r1" && ev.Replica != "r2") {
			t.Errorf("r0: forwarded call event %+v, want OK to r1 or r2", ev)
		}
	}
}

func countOn(list []brpc.ClusterPeer, replica string) int {
	n := 0
	for _, p := range list {
		if p.Replica == replica {
			n++
		}
	}
	return n
}

func codeOf(err error) string { return grpcstatus.Code(err).String() }

func TestClusterReplicaEndpointRefusesNonReplicas(t *testing.T) {
	isReplica := func(ctx context.Context) error {
		p, _ := peer.FromContext(ctx)
		ti, _ := p.AuthInfo.(credentials.TLSInfo)
		if cn := ti.State.PeerCertificates[0].Subject.CommonName; !strings.HasPrefix(cn, "r") {
			return fmt.Errorf("%q is a device", cn)
		}
		return nil
	}
	tc := newTestCluster(t, 1, brpc.NewMemoryPresence(), func(c *brpc.ClusterConfig) { c.IsReplica = isReplica })
	sn := &seen{}
	tc.connect(tc.nodes[0], "quic", "c0", "echo-c0", sn.options()...)
	tc.waitPeers([]brpc.ClusterPeer{{ID: "c0", Replica: "r0"}})

	other, err := certs.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	cert := func(ca *certs.CA, issue func(*certs.CA) (tls.Certificate, error)) []tls.Certificate {
		c, err := issue(ca)
		if err != nil {
			t.Fatal(err)
		}
		return []tls.Certificate{c}
	}
	cases := []struct {
		name  string
		certs []tls.Certificate
		want  codes.Code
	}{
		{"no certificate", nil, codes.Unauthenticated},
		{"a device's certificate", cert(tc.ca, func(ca *certs.CA) (tls.Certificate, error) { return ca.Client("device-1") }), codes.PermissionDenied},
		{"a certificate of another CA", cert(other, func(ca *certs.CA) (tls.Certificate, error) { return ca.Replica("r9") }), codes.Unavailable},
		{"a replica's certificate", cert(tc.ca, func(ca *certs.CA) (tls.Certificate, error) { return ca.Replica("r9") }), codes.OK},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			creds := credentials.NewTLS(&tls.Config{RootCAs: tc.ca.Pool, Certificates: c.certs})
			cc, err := grpc.NewClient(tc.nodes[0].repAddr, grpc.WithTransportCredentials(creds))
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			before := sn.calls.Load()
			r, err := testpb.NewEchoClient(cc).Unary(to(testenv.Ctx(t), "c0"), &testpb.EchoRequest{Message: "m"})
			testenv.WantCode(t, err, c.want, "a call to the replica endpoint with "+c.name)
			reached := sn.calls.Load() - before
			if c.want == codes.OK {
				if r.GetMessage() != "echo-c0:m" || reached != 1 {
					t.Fatalf("replica's call answered %q, client's handler ran %d times", r.GetMessage(), reached)
				}
			} else if reached != 0 {
				t.Fatalf("a refused call ran the client's handler %d times", reached)
			}
		})
	}
}

func TestClusterForwardedCallHeaders(t *testing.T) {
	tc := newTestCluster(t, 2, brpc.NewMemoryPresence(), nil)
	sn := &seen{}
	tc.connect(tc.nodes[1], "tcp", "c1", "echo-c1", sn.options()...)
	tc.waitPeers([]brpc.ClusterPeer{{ID: "c1", Replica: "r1"}})
	stub, err := tc.nodes[0].srv.Client("c1")
	if err != nil {
		t.Fatal(err)
	}
	// A plain call of the server's own: what its context carries reaches
	// the client as on a local call; the target header it needed on the
	// way does not, whatever the caller put there.
	// A forged gateway caller header is dropped as on a local call.
	ctx := metadata.AppendToOutgoingContext(testenv.Ctx(t), "x-app", "v", "brpc-note", "n", brpc.GatewayTargetHeader, "c2",
		brpc.GatewayCallerHeader, "forged")
	ctx, cancel := context.WithTimeout(ctx, 7*time.Second)
	defer cancel()
	var hdr, tr metadata.MD
	if _, err := stub.Unary(ctx, &testpb.EchoRequest{Message: "m"}, grpc.Header(&hdr), grpc.Trailer(&tr)); err != nil {
		t.Fatal(err)
	}
	md, dl, hasDL := sn.last()
	if got := md.Get("x-app"); len(got) != 1 || got[0] != "v" {
		t.Errorf("client saw x-app %v, want [v]", got)
	}
	if got := md.Get("brpc-note"); len(got) != 1 || got[0] != "n" {
		t.Errorf("client saw brpc-note %v, want the origin's [n]", got)
	}
	for k := range md {
		if k == brpc.GatewayTargetHeader || strings.HasPrefix(k, "brpc-gateway") || strings.HasPrefix(k, "brpc-cluster") {
			t.Errorf("a plain forwarded call reached the client with %s: %v", k, md[k])
		}
	}
	if !hasDL || time.Until(dl) > 7*time.Second || time.Until(dl) < 5*time.Second {
		t.Errorf("client's deadline %v (set: %v), want the caller's, about 7s away", time.Until(dl), hasDL)
	}
	// The echo service returns x-echo-* headers; nothing of the relay's
	// own shows in the trailers the caller gets.
	for k := range tr {
		if strings.HasPrefix(k, "brpc-") {
			t.Errorf("forwarded call's trailers hold %s", k)
		}
	}
	// Through the gateway: the caller's own headers arrive, the target
	// header is consumed.
	if _, err := tc.nodes[0].gateway.Unary(to(testenv.Ctx(t), "c1", "x-echo-k", "v"), &testpb.EchoRequest{Message: "m"}, grpc.Header(&hdr)); err != nil {
		t.Fatal(err)
	}
	md, _, _ = sn.last()
	if got := md.Get("x-echo-k"); len(got) != 1 || got[0] != "v" || len(md.Get(brpc.GatewayTargetHeader)) != 0 {
		t.Errorf("client saw x-echo-k %v and target %v through the gateway, want [v] and none", got, md.Get(brpc.GatewayTargetHeader))
	}
	// The caller headers the origin replica's gateway set reach the
	// client through the replica endpoint as they were set: an anonymous
	// caller (plaintext gateway) and its address.
	if got := md.Get(brpc.GatewayCallerHeader); len(got) != 1 || got[0] != "" {
		t.Errorf("client saw %s %q through a forwarding gateway, want one empty value", brpc.GatewayCallerHeader, got)
	}
	if got := md.Get(brpc.GatewayCallerAddrHeader); len(got) != 1 || !strings.HasPrefix(got[0], "127.0.0.1:") {
		t.Errorf("client saw %s %q through a forwarding gateway, want the caller's address", brpc.GatewayCallerAddrHeader, got)
	}
	if got := hdr.Get("x-echo-k"); len(got) != 1 || got[0] != "v" {
		t.Errorf("gateway caller got response header x-echo-k %v, want [v]", got)
	}
}

func TestClusterApplicationNotFoundIsNotRetried(t *testing.T) {
	tc := newTestCluster(t, 2, brpc.NewMemoryPresence(), nil)
	sn := &seen{}
	tc.connect(tc.nodes[1], "quic", "c1", "echo-c1", sn.options()...)
	tc.waitPeers([]brpc.ClusterPeer{{ID: "c1", Replica: "r1"}})
	stub, err := tc.nodes[0].srv.Client("c1")
	if err != nil {
		t.Fatal(err)
	}
	_, err = stub.Unary(testenv.Ctx(t), &testpb.EchoRequest{FailCode: int32(codes.NotFound)})
	st := grpcstatus.Convert(err)
	if st.Code() != codes.NotFound || st.Message() != "echo-c1: failing as asked" || len(st.Details()) != 1 {
		t.Fatalf("client's own NotFound arrived as %v (details %v)", err, st.Details())
	}
	if n := sn.calls.Load(); n != 1 {
		t.Fatalf("the client's handler ran %d times, want once", n)
	}
	if stale := tc.nodes[0].events.clusterEvents(brpc.ClusterStaleRoute); len(stale) != 0 {
		t.Fatalf("an application NotFound was taken for a stale route: %v", stale)
	}
}

func TestClusterDuplicateIDNewestWins(t *testing.T) {
	tc := newTestCluster(t, 3, brpc.NewMemoryPresence(), nil)
	r0, r1, r2 := tc.nodes[0], tc.nodes[1], tc.nodes[2]
	tc.connect(r0, "quic", "dup", "old")
	tc.waitPeers([]brpc.ClusterPeer{{ID: "dup", Replica: "r0"}})
	tc.connect(r1, "tcp", "dup", "new")
	r0.events.waitFor(t, "disconnected dup replaced")
	tc.waitPeers([]brpc.ClusterPeer{{ID: "dup", Replica: "r1"}})
	for _, n := range []*replicaNode{r0, r2, r1} {
		stub, err := n.srv.Client("dup")
		if err != nil {
			t.Fatalf("%s: Client(dup): %v", n.name, err)
		}
		if r, err := stub.Unary(testenv.Ctx(t), &testpb.EchoRequest{Message: "m"}); err != nil || r.GetMessage() != "new:m" {
			t.Fatalf("%s: Client(dup) answered %q, %v; want the newer session", n.name, r.GetMessage(), err)
		}
	}
	if got := r1.events.snapshot(); slices.Contains(got, "disconnected dup replaced") {
		t.Fatalf("r1 closed the newer session too: %v", got)
	}
}

func TestClusterGracefulStopLeavesFirst(t *testing.T) {
	var logs sync.Map // replica name -> *eventLog
	presence := newCtlPresence(func(name string) {
		if l, ok := logs.Load(name); ok {
			l.(*eventLog).add("left presence")
		}
	})
	tc := newTestCluster(t, 3, presence, nil)
	for _, n := range tc.nodes {
		logs.Store(n.name, n.events)
	}
	r0, r1, r2 := tc.nodes[0], tc.nodes[1], tc.nodes[2]
	tc.connect(r0, "quic", "c0", "echo-c0")
	tc.connect(r1, "tcp", "c1", "echo-c1")
	tc.waitPeers([]brpc.ClusterPeer{{ID: "c0", Replica: "r0"}, {ID: "c1", Replica: "r1"}})
	kept, err := r0.srv.Client("c1")
	if err != nil {
		t.Fatal(err)
	}
	testenv.Warm(t, kept)

	r1.shutdown(t, true)
	events := r1.events.snapshot()
	left := slices.Index(events, "left presence")
	gone := slices.Index(events, "disconnected c1 server_stopped")
	if left < 0 || gone < 0 || left > gone {
		t.Fatalf("r1's events %v: want it to leave the presence before its client is disconnected", events)
	}
	tc.waitPeers([]brpc.ClusterPeer{{ID: "c0", Replica: "r0"}}, r0, r2)
	// Neither a new lookup nor the stub kept from before hangs.
	for _, n := range []*replicaNode{r0, r2} {
		start := time.Now()
		if _, err := n.srv.Client("c1"); codeOf(err) != "NotFound" {
			t.Errorf("%s: Client(c1) after r1 stopped: %v, want NotFound", n.name, err)
		}
		if d := time.Since(start); d > 100*time.Millisecond {
			t.Errorf("%s: Client(c1) took %v", n.name, d)
		}
	}
	start := time.Now()
	_, err = kept.Unary(testenv.Ctx(t), &testpb.EchoRequest{Message: "m"})
	if c := codeOf(err); c != "NotFound" && c != "Unavailable" {
		t.Errorf("the stub kept from before: %v, want NotFound or Unavailable", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the stub kept from before took %v to fail", d)
	}
	// The client, once it dials another replica, is reachable from all,
	// the stub kept from before included.
	tc.connect(r2, "quic", "c1", "echo-c1-again")
	tc.waitPeers([]brpc.ClusterPeer{{ID: "c0", Replica: "r0"}, {ID: "c1", Replica: "r2"}}, r0, r2)
	for _, n := range []*replicaNode{r0, r2} {
		stub, err := n.srv.Client("c1")
		if err != nil {
			t.Fatalf("%s: Client(c1): %v", n.name, err)
		}
		allKinds(t, stub, testenv.Ctx(t), "echo-c1-again", n.name+" Client(c1) on r2")
	}
	if r, err := kept.Unary(testenv.Ctx(t), &testpb.EchoRequest{Message: "m"}); err != nil || r.GetMessage() != "echo-c1-again:m" {
		t.Fatalf("the stub kept from before answered %q, %v; want the client on r2", r.GetMessage(), err)
	}
}

// With the echo service described (WithGatewayServices), the gateway and
// the replica endpoints relay its unary calls as unary calls, which the
// stale route retries too.
func TestClusterStaleRouteRetried(t *testing.T) {
	t.Run("general", func(t *testing.T) { testClusterStaleRouteRetried(t, nil) })
	t.Run("described", func(t *testing.T) {
		testClusterStaleRouteRetried(t, []brpc.ServerOption{brpc.WithGatewayServices(&testpb.Echo_ServiceDesc)})
	})
}

func testClusterStaleRouteRetried(t *testing.T, srvOpts []brpc.ServerOption) {
	presence := newCtlPresence(nil)
	tc := newTestClusterWith(t, 3, presence, nil, srvOpts)
	r0, r1, r2 := tc.nodes[0], tc.nodes[1], tc.nodes[2]
	mover := tc.connect(r1, "quic", "mover", "on-r1")
	tc.waitPeers([]brpc.ClusterPeer{{ID: "mover", Replica: "r1"}})
	stub, err := r0.srv.Client("mover")
	if err != nil {
		t.Fatal(err)
	}
	testenv.Warm(t, stub)

	// r0 hears nothing while the client moves from r1 to r2.
	r0ctl := presence.member("r0")
	r0ctl.hold()
	mover.Close()
	r1.events.waitFor(t, "disconnected mover client_closed")
	moved := tc.connect(r2, "tcp", "mover", "on-r2")
	tc.waitPeers([]brpc.ClusterPeer{{ID: "mover", Replica: "r2"}}, r1, r2)

	// Calls of every kind, through the stub and through r0's gateway
	// (which relays them as bidirectional streams, or as calls of their
	// kind when described), are each made
	// once more when the cache catches up.
	type result struct {
		what string
		err  error
	}
	results := make(chan result, 8)
	ctx := testenv.Ctx(t)
	for what, stub := range map[string]testpb.EchoClient{"stub": stub, "gateway": r0.gateway} {
		go allKindsErr(stub, to(ctx, "mover"), "on-r2", func(kind string, err error) { results <- result{what + " " + kind, err} })
	}
	r0.events.waitCount(t, brpc.ClusterStaleRoute, 8)
	r0ctl.release()
	for range 8 {
		if r := <-results; r.err != nil {
			t.Errorf("%s on a stale route: %v; want one retry that reaches r2", r.what, r.err)
		}
	}
	if n := len(r0.events.clusterEvents(brpc.ClusterStaleRoute)); n != 8 {
		t.Fatalf("%d stale routes reported, want 8", n)
	}
	if t.Failed() {
		return
	}

	// When the cache does not catch up, the call ends with NotFound
	// after a bounded wait, and so does a stream, as it opens: the replica
	// says the client is gone before anything of the call is sent.
	r0ctl.hold()
	moved.Close()
	// A TCP client that closes while transport traffic of r0's tunnel is
	// still arriving (window updates, pings) can reset its connection
	// rather than close it: r2 then sees the connection lost.
	r2.events.waitForAny(t, "disconnected mover client_closed", "disconnected mover connection_lost")
	start := time.Now()
	_, err = stub.Unary(testenv.Ctx(t), &testpb.EchoRequest{Message: "m"})
	testenv.WantCode(t, err, codes.NotFound, "a unary call whose cache does not catch up")
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("the unary call took %v to give up", d)
	}
	start = time.Now()
	_, err = stub.ServerStream(testenv.Ctx(t), &testpb.EchoRequest{Message: "m", Count: 1})
	testenv.WantCode(t, err, codes.NotFound, "a server stream whose cache does not catch up")
	_, err = stub.BidiStream(testenv.Ctx(t))
	testenv.WantCode(t, err, codes.NotFound, "a bidi stream whose cache does not catch up")
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the streams took %v to give up", d)
	}
	r0ctl.release()
	tc.waitPeers(nil, r0)
	_, err = r0.srv.Client("mover")
	testenv.WantCode(t, err, codes.NotFound, "Client(mover) once the cache caught up")
}

func TestClusterPresenceDown(t *testing.T) {
	presence := newCtlPresence(nil)
	tc := newTestCluster(t, 2, presence, nil)
	r0, r1 := tc.nodes[0], tc.nodes[1]
	tc.connect(r0, "tcp", "c0", "echo-c0")
	tc.connect(r1, "quic", "c1", "echo-c1")
	tc.waitPeers([]brpc.ClusterPeer{{ID: "c0", Replica: "r0"}, {ID: "c1", Replica: "r1"}})
	kept, err := r0.srv.Client("c1")
	if err != nil {
		t.Fatal(err)
	}

	presence.member("r0").cut(errors.New("etcd unreachable"))
	r0.events.waitFor(t, "presence_down")
	ctx := testenv.Ctx(t)
	local, err := r0.srv.Client("c0")
	if err != nil {
		t.Fatalf("r0: Client(c0), its own client, while the presence is down: %v", err)
	}
	allKinds(t, local, ctx, "echo-c0", "r0's own client while the presence is down")
	_, err = r0.srv.Client("c1")
	testenv.WantCode(t, err, codes.Unavailable, "r0: Client(c1) while the presence is down")
	_, err = kept.Unary(ctx, &testpb.EchoRequest{Message: "m"})
	testenv.WantCode(t, err, codes.Unavailable, "r0: the stub for c1 kept from before, while the presence is down")
	_, err = r0.gateway.Unary(to(ctx, "c1"), &testpb.EchoRequest{Message: "m"})
	testenv.WantCode(t, err, codes.Unavailable, "r0's gateway to c1 while the presence is down")
	// r1's presence is up: it reaches r0's client through r0's endpoint.
	stub, err := r1.srv.Client("c0")
	if err != nil {
		t.Fatal(err)
	}
	allKinds(t, stub, ctx, "echo-c0", "r1 to c0 while r0's presence is down")

	presence.member("r0").restore()
	r0.events.waitFor(t, "presence_up")
	allKinds(t, kept, ctx, "echo-c1", "r0's stub for c1 once the presence is back")
}

func TestClusterReconnectToSameReplicaKeepsRecord(t *testing.T) {
	tc := newTestCluster(t, 2, brpc.NewMemoryPresence(), nil)
	r0, r1 := tc.nodes[0], tc.nodes[1]
	tc.connect(r0, "quic", "x", "first")
	tc.waitPeers([]brpc.ClusterPeer{{ID: "x", Replica: "r0"}})
	tc.connect(r0, "tcp", "x", "second")
	r0.events.waitFor(t, "disconnected x replaced")
	// The replaced session released nothing: the newer one's record stays,
	// and r1 reaches it.
	if n := len(r0.events.clusterEvents(brpc.ClusterRelease)); n != 0 {
		t.Fatalf("r0 released %d records when x replaced itself, want none", n)
	}
	stub, err := r1.srv.Client("x")
	if err != nil {
		t.Fatal(err)
	}
	if r, err := stub.Unary(testenv.Ctx(t), &testpb.EchoRequest{Message: "m"}); err != nil || r.GetMessage() != "second:m" {
		t.Fatalf("r1 reached %q, %v; want the newer session", r.GetMessage(), err)
	}
	tc.waitPeers([]brpc.ClusterPeer{{ID: "x", Replica: "r0"}})
}

func TestClusterConfigErrors(t *testing.T) {
	ca, err := certs.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	good := brpc.ClusterConfig{Replica: "r", Presence: brpc.NewMemoryPresence(), Advertise: "127.0.0.1:1", TLS: replicaTLS(t, ca, "r")}
	cases := map[string]func(*brpc.ClusterConfig){
		"no name":              func(c *brpc.ClusterConfig) { c.Replica = "" },
		"no presence":          func(c *brpc.ClusterConfig) { c.Presence = nil },
		"no advertise address": func(c *brpc.ClusterConfig) { c.Advertise = "" },
		"a bad address":        func(c *brpc.ClusterConfig) { c.Advertise = "nowhere" },
		"no TLS":               func(c *brpc.ClusterConfig) { c.TLS = nil },
		"no certificate":       func(c *brpc.ClusterConfig) { c.TLS = &tls.Config{RootCAs: ca.Pool} },
		"no CA":                func(c *brpc.ClusterConfig) { c.TLS = &tls.Config{Certificates: c.TLS.Certificates} },
	}
	stls, err := ca.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			conf := good
			mutate(&conf)
			srv := brpc.NewServer(grpc.NewServer(), testpb.NewEchoClient, brpc.WithCluster(conf))
			defer srv.Stop()
			lis, err := brpc.ListenTCP("127.0.0.1:0", stls)
			if err != nil {
				t.Fatal(err)
			}
			if err := srv.Serve(lis); err == nil || err == brpc.ErrServerStopped {
				t.Fatalf("Serve with %s: %v, want the configuration's error", name, err)
			}
			rl, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			if err := srv.ServeReplicas(rl); err == nil {
				t.Fatalf("ServeReplicas with %s: nil error", name)
			}
		})
	}
	t.Run("no cluster", func(t *testing.T) {
		srv := brpc.NewServer(grpc.NewServer(), testpb.NewEchoClient)
		defer srv.Stop()
		rl, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.ServeReplicas(rl); err == nil {
			t.Fatal("ServeReplicas without WithCluster: nil error")
		}
	})
}

// blockingPresence never answers Join until its context ends.
type blockingPresence struct{ entered chan struct{} }

func (p blockingPresence) Join(ctx context.Context, _ brpc.Replica, _ func(brpc.PresenceUpdate)) (brpc.Membership, error) {
	close(p.entered)
	<-ctx.Done()
	return nil, ctx.Err()
}

func TestClusterStopWhileJoining(t *testing.T) {
	for _, graceful := range []bool{false, true} {
		t.Run(fmt.Sprintf("graceful=%v", graceful), func(t *testing.T) {
			ca, err := certs.NewCA()
			if err != nil {
				t.Fatal(err)
			}
			p := blockingPresence{entered: make(chan struct{})}
			srv := brpc.NewServer(grpc.NewServer(), testpb.NewEchoClient, brpc.WithCluster(brpc.ClusterConfig{
				Replica: "r", Presence: p, Advertise: "127.0.0.1:1", TLS: replicaTLS(t, ca, "r"),
			}))
			stls, err := ca.ServerTLS()
			if err != nil {
				t.Fatal(err)
			}
			lis, err := brpc.ListenQUIC("127.0.0.1:0", stls)
			if err != nil {
				t.Fatal(err)
			}
			served := make(chan error, 1)
			go func() { served <- srv.Serve(lis) }()
			<-p.entered
			stopped := make(chan struct{})
			go func() {
				if graceful {
					srv.GracefulStop()
				} else {
					srv.Stop()
				}
				close(stopped)
			}()
			select {
			case <-stopped:
			case <-time.After(5 * time.Second):
				t.Fatal("stopping waited for a Join that does not end")
			}
			if err := <-served; err != brpc.ErrServerStopped {
				t.Fatalf("Serve, stopped while joining: %v, want ErrServerStopped", err)
			}
		})
	}
}

func TestClusterReplicaGoneWithoutLeaving(t *testing.T) {
	presence := newCtlPresence(nil)
	tc := newTestCluster(t, 2, presence, nil)
	r0, r1 := tc.nodes[0], tc.nodes[1]
	tc.connect(r1, "quic", "c1", "echo-c1")
	tc.waitPeers([]brpc.ClusterPeer{{ID: "c1", Replica: "r1"}})
	stub, err := r0.srv.Client("c1")
	if err != nil {
		t.Fatal(err)
	}
	testenv.Warm(t, stub)
	// r1 stops without its records leaving the presence, as a killed
	// replica's stay until its lease expires.
	presence.crash(t, "r1")
	r1.shutdown(t, false)
	if got := r0.srv.ClusterPeers(); !slices.Equal(got, []brpc.ClusterPeer{{ID: "c1", Replica: "r1"}}) {
		t.Fatalf("r0's ClusterPeers %v, want c1 still on r1", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start := time.Now()
	_, err = stub.Unary(ctx, &testpb.EchoRequest{Message: "m"})
	testenv.WantCode(t, err, codes.Unavailable, "a call forwarded to a replica that is gone")
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the call took %v to fail", d)
	}
	_, err = r0.gateway.Unary(to(ctx, "c1"), &testpb.EchoRequest{Message: "m"})
	testenv.WantCode(t, err, codes.Unavailable, "a gateway call for a client of a replica that is gone")
}

func TestClusterForwardedCancelAndLargeMessages(t *testing.T) {
	tc := newTestCluster(t, 2, brpc.NewMemoryPresence(), nil)
	_, echo := tc.connectEcho(tc.nodes[1], "tcp", "c1", "echo-c1")
	tc.waitPeers([]brpc.ClusterPeer{{ID: "c1", Replica: "r1"}})
	stub, err := tc.nodes[0].srv.Client("c1")
	if err != nil {
		t.Fatal(err)
	}
	// 3 MiB each way, under grpc-go's default 4 MiB limits on every hop.
	big := bytes.Repeat([]byte("x"), 3<<20)
	r, err := stub.Unary(testenv.Ctx(t), &testpb.EchoRequest{Message: "m", Payload: big})
	if err != nil || !bytes.Equal(r.GetPayload(), big) {
		t.Fatalf("a 3 MiB forwarded call: %d bytes back, %v", len(r.GetPayload()), err)
	}
	// The caller's cancellation reaches the client's handler.
	ctx, cancel := context.WithCancel(testenv.Ctx(t))
	done := make(chan error, 1)
	go func() {
		_, err := stub.Unary(ctx, &testpb.EchoRequest{Message: "slow", SleepMs: 20000})
		done <- err
	}()
	testenv.WaitFor(t, 5*time.Second, "the slow call to reach the client's handler", func() bool { return echo.Sleeping() == 1 })
	cancel()
	testenv.WantCode(t, <-done, codes.Canceled, "a canceled forwarded call")
	testenv.WaitFor(t, 5*time.Second, "the client's handler to see the cancellation", func() bool { return echo.Sleeping() == 0 })
}

func TestClusterOptionsKeepBrpcCredentials(t *testing.T) {
	var intercepted, dialed atomic.Int64
	tc := newTestCluster(t, 2, brpc.NewMemoryPresence(), func(c *brpc.ClusterConfig) {
		c.ServerOptions = []grpc.ServerOption{
			grpc.Creds(insecure.NewCredentials()),
			grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
				intercepted.Add(1)
				return h(srv, ss)
			}),
		}
		c.DialOptions = []grpc.DialOption{
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
				dialed.Add(1)
				return invoker(ctx, method, req, reply, cc, opts...)
			}),
		}
	})
	tc.connect(tc.nodes[1], "quic", "c1", "echo-c1")
	tc.waitPeers([]brpc.ClusterPeer{{ID: "c1", Replica: "r1"}})
	stub, err := tc.nodes[0].srv.Client("c1")
	if err != nil {
		t.Fatal(err)
	}
	if r, err := stub.Unary(testenv.Ctx(t), &testpb.EchoRequest{Message: "m"}); err != nil || r.GetMessage() != "echo-c1:m" {
		t.Fatalf("forwarded call with the application's options: %q, %v", r.GetMessage(), err)
	}
	// The forwarded call ran the dial options' interceptor on the origin
	// and went through a tunnel: no *grpc.Server on r1 saw it.
	if intercepted.Load() != 0 || dialed.Load() != 1 {
		t.Fatalf("the application's interceptors saw %d forwarded calls on the endpoint and %d on the origin, want 0 and 1", intercepted.Load(), dialed.Load())
	}
	// A gRPC caller of the endpoint (with a replica's certificate) goes
	// through the server options' interceptor.
	cert, err := tc.ca.Replica("r9")
	if err != nil {
		t.Fatal(err)
	}
	rcc, err := grpc.NewClient(tc.nodes[1].repAddr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: tc.ca.Pool, Certificates: []tls.Certificate{cert}})))
	if err != nil {
		t.Fatal(err)
	}
	defer rcc.Close()
	if _, err := testpb.NewEchoClient(rcc).Unary(to(testenv.Ctx(t), "c1"), &testpb.EchoRequest{Message: "m"}); err != nil {
		t.Fatalf("a replica's call to the endpoint: %v", err)
	}
	if intercepted.Load() != 1 {
		t.Fatalf("the endpoint's interceptor saw %d calls, want 1", intercepted.Load())
	}
	// The endpoint still speaks TLS only: a plaintext caller gets nowhere.
	cc, err := grpc.NewClient(tc.nodes[1].repAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	_, err = testpb.NewEchoClient(cc).Unary(to(testenv.Ctx(t), "c1"), &testpb.EchoRequest{Message: "m"})
	testenv.WantCode(t, err, codes.Unavailable, "a plaintext call to the replica endpoint")
}
