package brpc_test

import (
	"context"
	"crypto/tls"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/authz"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/certs"
	"github.com/brpc-go/brpc/internal/testenv"
	"github.com/brpc-go/brpc/internal/testpb"
)

// seenPeer is what a handler's context said about its caller.
type seenPeer struct {
	method string
	grpc   peer.Peer
	brpc   brpc.Peer
	ok     bool // PeerFromContext found a brpc peer
}

// peerRecorder is a pair of server interceptors that note what every call's
// context says about its caller, as logging or authorization code would.
type peerRecorder struct {
	mu   sync.Mutex
	seen []seenPeer
}

func (r *peerRecorder) note(ctx context.Context, method string) {
	s := seenPeer{method: method}
	if p, ok := peer.FromContext(ctx); ok {
		s.grpc = *p
	}
	s.brpc, s.ok = brpc.PeerFromContext(ctx)
	r.mu.Lock()
	r.seen = append(r.seen, s)
	r.mu.Unlock()
}

func (r *peerRecorder) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	r.note(ctx, info.FullMethod)
	return h(ctx, req)
}

func (r *peerRecorder) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	r.note(ss.Context(), info.FullMethod)
	return h(srv, ss)
}

func (r *peerRecorder) options() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(r.unary), grpc.ChainStreamInterceptor(r.stream)}
}

// last returns what the latest call recorded; it fails the test if none was.
func (r *peerRecorder) last(t *testing.T) seenPeer {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.seen) == 0 {
		t.Fatal("no call reached the interceptor")
	}
	return r.seen[len(r.seen)-1]
}

// all returns what every call so far recorded.
func (r *peerRecorder) all() []seenPeer {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]seenPeer(nil), r.seen...)
}

// mutualTLS makes the server require and verify client certificates.
func mutualTLS(ca *certs.CA, c *tls.Config) {
	c.ClientAuth = tls.RequireAndVerifyClientCert
	c.ClientCAs = ca.Pool
}

// clientCert returns a client TLS config trusting e's CA that presents a
// certificate with common name cn.
func clientCert(t *testing.T, e *testenv.Env, cn string) *tls.Config {
	t.Helper()
	cert, err := e.CA.Client(cn)
	if err != nil {
		t.Fatal(err)
	}
	c := e.CA.ClientTLS()
	c.Certificates = []tls.Certificate{cert}
	return c
}

// relayed puts a relay in front of e's listener. It returns the target
// clients dial through it, the relay's address (what the client sees as the
// server) and a func that reports the relay's address toward the server
// (what the server sees as the client), once a client has connected.
func relayed(t *testing.T, e *testenv.Env, tr string) (target, front string, source func() string) {
	t.Helper()
	if tr == "quic" {
		r := testenv.NewUDPRelay(t, e.Addr, testenv.Faults{}, 1)
		return "quic://" + r.Addr(), r.Addr(), r.UpstreamAddr
	}
	r := testenv.NewTCPRelay(t, e.Addr)
	return "tcp://" + r.Addr(), r.Addr(), func() string {
		up := r.UpstreamAddrs()
		if len(up) != 1 {
			t.Fatalf("the TCP relay has %d connections to the server, want 1", len(up))
		}
		return up[0]
	}
}

// wantTLSInfo checks that p carries a session's TLS state as grpc-go's own
// TLS credentials report it, with a verified chain that ends at ca's root and
// starts at a certificate named leafCN (when leafCN is not empty).
func wantTLSInfo(t *testing.T, side string, p peer.Peer, ca *certs.CA, leafCN string) {
	t.Helper()
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		t.Fatalf("%s: peer.AuthInfo is %T, want credentials.TLSInfo", side, p.AuthInfo)
	}
	if info.AuthType() != "tls" || info.SecurityLevel != credentials.PrivacyAndIntegrity {
		t.Fatalf("%s: AuthType %q, SecurityLevel %v; want tls, PrivacyAndIntegrity", side, info.AuthType(), info.SecurityLevel)
	}
	st := info.State
	if !st.HandshakeComplete || st.Version != tls.VersionTLS13 {
		t.Fatalf("%s: TLS state: handshake complete %v, version %#x; want a completed TLS 1.3 handshake", side, st.HandshakeComplete, st.Version)
	}
	if len(st.VerifiedChains) == 0 || len(st.VerifiedChains[0]) < 2 {
		t.Fatalf("%s: no verified chain in the TLS state (%d chains)", side, len(st.VerifiedChains))
	}
	chain := st.VerifiedChains[0]
	if !chain[len(chain)-1].Equal(ca.Cert) {
		t.Fatalf("%s: the verified chain ends at %v, want the test CA", side, chain[len(chain)-1].Subject)
	}
	if leafCN != "" && chain[0].Subject.CommonName != leafCN {
		t.Fatalf("%s: the verified chain starts at %q, want %q", side, chain[0].Subject.CommonName, leafCN)
	}
}

// TestGRPCPeerDescribesTheSession checks what the application's own gRPC
// code sees of the other end, in the server's interceptors and in the
// client's interceptors of the reverse call the server's handler makes:
// peer.Addr is the network address as that side sees it (through a relay,
// so that it is known independently of brpc), and with the *grpc.Server
// built with brpc.TransportCredentials, peer.AuthInfo is a TLSInfo with the
// verified chain; without them AuthInfo is nil and calls are served as
// before. PeerFromContext works either way.
func TestGRPCPeerDescribesTheSession(t *testing.T) {
	for _, withCreds := range []bool{true, false} {
		name := "with-credentials"
		if !withCreds {
			name = "without-credentials"
		}
		t.Run(name, func(t *testing.T) {
			testenv.EachTransport(t, func(t *testing.T, tr string) {
				testGRPCPeer(t, tr, withCreds)
			})
		})
	}
}

func testGRPCPeer(t *testing.T, tr string, withCreds bool) {
	var srec, crec peerRecorder
	sopts, copts := srec.options(), crec.options()
	if withCreds {
		sopts = append(sopts, grpc.Creds(brpc.TransportCredentials()))
		copts = append(copts, grpc.Creds(brpc.TransportCredentials()))
	}
	e := testenv.New(t, testenv.Config{Transport: tr, GRPCOpts: sopts, ServerTLS: mutualTLS})
	target, front, source := relayed(t, e, tr)
	c := e.Connect(testenv.ClientConfig{Name: "device", TLS: clientCert(t, e, "device-1"), GRPCOpts: copts, Target: target})

	// The server's handler calls the client back: both sides' interceptors run.
	r, err := c.Echo.Unary(testenv.Ctx(t), &testpb.EchoRequest{Message: "m"})
	if err != nil || r.GetMessage() != "server:m|device:back" {
		t.Fatalf("Unary = %q, %v; want server:m|device:back", r.GetMessage(), err)
	}
	st, err := c.Echo.ServerStream(testenv.Ctx(t), &testpb.EchoRequest{Message: "s", Count: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatalf("ServerStream: %v", err)
	}

	network := map[string]string{"quic": "udp", "tcp": "tcp"}[tr]
	src := source()
	for _, s := range srec.all() {
		if got := s.grpc.Addr; got == nil || got.String() != src || got.Network() != network {
			t.Fatalf("server, %s: peer.Addr = %v, want %s/%s (where the client's packets come from)", s.method, got, network, src)
		}
		if got := s.grpc.LocalAddr; got == nil || got.String() != e.Addr {
			t.Fatalf("server, %s: peer.LocalAddr = %v, want the listener's %s", s.method, got, e.Addr)
		}
		if !s.ok || s.brpc.ID != c.ID() || s.brpc.RemoteAddr.String() != src {
			t.Fatalf("server, %s: PeerFromContext = %+v, %v; want ID %q from %s", s.method, s.brpc, s.ok, c.ID(), src)
		}
		if withCreds {
			wantTLSInfo(t, "server, "+s.method, s.grpc, e.CA, "device-1")
		} else if s.grpc.AuthInfo != nil {
			t.Fatalf("server, %s: peer.AuthInfo = %#v without transport credentials, want nil", s.method, s.grpc.AuthInfo)
		}
	}
	if n := len(srec.all()); n != 2 {
		t.Fatalf("the server's interceptors saw %d calls, want 2", n)
	}

	cs := crec.last(t)
	if got := cs.grpc.Addr; got == nil || got.String() != front || got.Network() != network {
		t.Fatalf("client, reverse call: peer.Addr = %v, want %s/%s (the server's address as the client dialed it)", got, network, front)
	}
	if !cs.ok || cs.brpc.ID != "" || cs.brpc.RemoteAddr.String() != front {
		t.Fatalf("client, reverse call: PeerFromContext = %+v, %v; want the server at %s with ID \"\"", cs.brpc, cs.ok, front)
	}
	if withCreds {
		wantTLSInfo(t, "client, reverse call", cs.grpc, e.CA, "")
	} else if cs.grpc.AuthInfo != nil {
		t.Fatalf("client, reverse call: peer.AuthInfo = %#v without transport credentials, want nil", cs.grpc.AuthInfo)
	}
	if p := e.Srv.Peers(); len(p) != 1 || p[0].RemoteAddr.String() != src {
		t.Fatalf("Peers() = %+v, want one client at %s", p, src)
	}
}

// TestAuthzPolicyOnClientCertificates enforces a grpc-go authz static policy,
// written as for plain grpc-go over mTLS, on forward calls: it allows one
// client certificate's principal and denies another's.
func TestAuthzPolicyOnClientCertificates(t *testing.T) {
	const policy = `{
		"name": "brpc-test",
		"allow_rules": [{"name": "allow-device-ok", "source": {"principals": ["CN=device-ok"]}}],
		"deny_rules": [{"name": "deny-device-bad", "source": {"principals": ["CN=device-bad"]}}]
	}`
	az, err := authz.NewStatic(policy)
	if err != nil {
		t.Fatalf("authz.NewStatic: %v", err)
	}
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		e := testenv.New(t, testenv.Config{
			Transport: tr,
			ServerTLS: mutualTLS,
			GRPCOpts: []grpc.ServerOption{
				grpc.Creds(brpc.TransportCredentials()),
				grpc.ChainUnaryInterceptor(az.UnaryInterceptor),
				grpc.ChainStreamInterceptor(az.StreamInterceptor),
			},
			Call: func(*testenv.Env) func(context.Context) (string, error) { return nil },
		})
		for _, tc := range []struct {
			cn   string
			want codes.Code
		}{
			{"device-ok", codes.OK},
			{"device-bad", codes.PermissionDenied},
		} {
			c := e.Connect(testenv.ClientConfig{Name: tc.cn, TLS: clientCert(t, e, tc.cn)})
			_, err := c.Echo.Unary(testenv.Ctx(t), &testpb.EchoRequest{Message: "m"})
			testenv.WantCode(t, err, tc.want, tc.cn+": Unary")
			st, err := c.Echo.ServerStream(testenv.Ctx(t), &testpb.EchoRequest{Message: "s", Count: 1})
			if err == nil {
				_, err = st.Recv()
			}
			testenv.WantCode(t, err, tc.want, tc.cn+": ServerStream")
		}
	})
}

// TestTransportCredentialsRefuseOtherConnections checks that brpc's
// credentials never report a connection that is not a brpc stream as secure:
// on a plain TCP listener, the server refuses every connection and no
// handler runs; a grpc-go client dialing with them refuses to connect.
func TestTransportCredentialsRefuseOtherConnections(t *testing.T) {
	creds := brpc.TransportCredentials()
	if info := creds.Info(); info.SecurityProtocol != "tls" {
		t.Fatalf("Info().SecurityProtocol = %q, want tls", info.SecurityProtocol)
	}

	called := make(chan struct{}, 1)
	gs := grpc.NewServer(grpc.Creds(creds))
	testpb.RegisterEchoServer(gs, &testenv.Echo{Name: "plain", Call: func(context.Context) (string, error) {
		called <- struct{}{}
		return "", nil
	}})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- gs.Serve(lis) }()
	defer func() {
		gs.Stop()
		<-served
	}()

	cc, err := grpc.NewClient("passthrough:///"+lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = testpb.NewEchoClient(cc).Unary(ctx, &testpb.EchoRequest{Message: "m"})
	testenv.WantCode(t, err, codes.Unavailable, "a plaintext call to a server with brpc's credentials on a TCP listener")
	select {
	case <-called:
		t.Fatal("the handler ran for a connection that is not a brpc stream")
	default:
	}

	// As dial credentials, they refuse a plain TCP connection just the same.
	plain := grpc.NewServer()
	testpb.RegisterEchoServer(plain, &testenv.Echo{Name: "plain"})
	lis2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served2 := make(chan error, 1)
	go func() { served2 <- plain.Serve(lis2) }()
	defer func() {
		plain.Stop()
		<-served2
	}()
	cc2, err := grpc.NewClient("passthrough:///"+lis2.Addr().String(), grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer cc2.Close()
	_, err = testpb.NewEchoClient(cc2).Unary(ctx, &testpb.EchoRequest{Message: "m"})
	testenv.WantCode(t, err, codes.Unavailable, "a call dialed with brpc's credentials over plain TCP")

	// And directly: no AuthInfo for a connection of another kind.
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, info, err := creds.ServerHandshake(a); err == nil || info != nil {
		t.Fatalf("ServerHandshake on a pipe = %v, %v; want an error and no AuthInfo", info, err)
	}
	if _, info, err := creds.ClientHandshake(context.Background(), "x", a); err == nil || info != nil {
		t.Fatalf("ClientHandshake on a pipe = %v, %v; want an error and no AuthInfo", info, err)
	}
}

// TestTLSInfoNamesTheSPIFFEID checks that a client certificate's SPIFFE ID
// reaches TLSInfo.SPIFFEID, as with grpc-go's own TLS credentials (authz's
// audit loggers report it as the principal), and that a certificate without
// one leaves it nil.
func TestTLSInfoNamesTheSPIFFEID(t *testing.T) {
	id, err := url.Parse("spiffe://example.org/device/7")
	if err != nil {
		t.Fatal(err)
	}
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		var rec peerRecorder
		e := testenv.New(t, testenv.Config{
			Transport: tr,
			ServerTLS: mutualTLS,
			GRPCOpts:  append(rec.options(), grpc.Creds(brpc.TransportCredentials())),
			Call:      func(*testenv.Env) func(context.Context) (string, error) { return nil },
		})
		cert, err := e.CA.ClientURI("device-7", id)
		if err != nil {
			t.Fatal(err)
		}
		withID := e.CA.ClientTLS()
		withID.Certificates = []tls.Certificate{cert}
		for _, tc := range []struct {
			tls  *tls.Config
			want string
		}{
			{withID, id.String()},
			{clientCert(t, e, "device-8"), ""},
		} {
			c := e.Connect(testenv.ClientConfig{Name: "device", TLS: tc.tls})
			if _, err := c.Echo.Unary(testenv.Ctx(t), &testpb.EchoRequest{Message: "m"}); err != nil {
				t.Fatal(err)
			}
			info, ok := rec.last(t).grpc.AuthInfo.(credentials.TLSInfo)
			if !ok {
				t.Fatalf("peer.AuthInfo is not a credentials.TLSInfo")
			}
			got := ""
			if info.SPIFFEID != nil {
				got = info.SPIFFEID.String()
			}
			if got != tc.want {
				t.Fatalf("TLSInfo.SPIFFEID = %q, want %q", got, tc.want)
			}
		}
	})
}
