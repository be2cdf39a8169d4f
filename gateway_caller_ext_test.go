package brpc_test

import (
	"context"
	"crypto/tls"
	"net"
	"net/url"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/certs"
	"github.com/brpc-go/brpc/internal/testenv"
	"github.com/brpc-go/brpc/internal/testpb"
)

// gatewayCalls records what GatewayCallFromContext said, and the caller
// headers the handler saw, for every call a *grpc.Server's handlers got.
type gatewayCalls struct {
	mu   sync.Mutex
	seen []sawCall
}

type sawCall struct {
	method  string
	call    brpc.GatewayCall
	ok      bool
	callers []string // the GatewayCallerHeader values the handler saw
}

func (g *gatewayCalls) record(ctx context.Context, method string) {
	call, ok := brpc.GatewayCallFromContext(ctx)
	g.mu.Lock()
	g.seen = append(g.seen, sawCall{method, call, ok, metadata.ValueFromIncomingContext(ctx, brpc.GatewayCallerHeader)})
	g.mu.Unlock()
}

func (g *gatewayCalls) options() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			g.record(ctx, info.FullMethod)
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			g.record(ss.Context(), info.FullMethod)
			return h(srv, ss)
		}),
	}
}

// last is what the last call's handler saw; the test fails if none ran.
func (g *gatewayCalls) last(t *testing.T) sawCall {
	t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.seen) == 0 {
		t.Fatal("no call reached the handler")
	}
	return g.seen[len(g.seen)-1]
}

// callerEnv is a brpc server with one client, alice, whose handlers
// record what GatewayCallFromContext says.
type callerEnv struct {
	*testenv.Env
	alice *testenv.Client
	calls *gatewayCalls
}

func newCallerEnv(t *testing.T, tr string) *callerEnv {
	e := testenv.NewPlainOn(t, tr)
	calls := &gatewayCalls{}
	alice := e.Connect(testenv.ClientConfig{Name: "alice", GRPCOpts: calls.options()})
	return &callerEnv{Env: e, alice: alice, calls: calls}
}

// dialGateway is a plain grpc-go client of the gateway at addr with creds;
// it returns the stub and a function reporting the local address of the
// client's last connection (the caller's address the gateway sees).
func dialGateway(t *testing.T, addr string, creds credentials.TransportCredentials) (testpb.EchoClient, func() string) {
	t.Helper()
	var mu sync.Mutex
	var local string
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			if err == nil {
				mu.Lock()
				local = c.LocalAddr().String()
				mu.Unlock()
			}
			return c, err
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return testpb.NewEchoClient(cc), func() string {
		mu.Lock()
		defer mu.Unlock()
		return local
	}
}

// wantGatewayCall fails the test unless the handler saw a gateway call for
// caller from addr, with exactly one caller header.
func wantGatewayCall(t *testing.T, got sawCall, caller, addr string) {
	t.Helper()
	if !got.ok {
		t.Fatalf("%s: GatewayCallFromContext said false for a call through the gateway", got.method)
	}
	if got.call.Caller != caller {
		t.Errorf("%s: Caller %q, want %q", got.method, got.call.Caller, caller)
	}
	if got.call.CallerAddr != addr {
		t.Errorf("%s: CallerAddr %q, want %q (the caller's own address)", got.method, got.call.CallerAddr, addr)
	}
	if len(got.callers) != 1 {
		t.Errorf("%s: the handler saw %d %s headers %q, want the gateway's one", got.method, len(got.callers), brpc.GatewayCallerHeader, got.callers)
	}
}

func TestGatewayCallerFromCertificate(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		e := newCallerEnv(t, tr)
		srvCert, err := e.CA.Server()
		if err != nil {
			t.Fatal(err)
		}
		gwTLS := func(auth tls.ClientAuthType) grpc.ServerOption {
			return grpc.Creds(credentials.NewTLS(&tls.Config{
				Certificates: []tls.Certificate{srvCert}, ClientCAs: e.CA.Pool, ClientAuth: auth,
			}))
		}
		verified := serveGateway(t, e.Srv.Gateway(allowAll), gwTLS(tls.VerifyClientCertIfGiven))
		unverified := serveGateway(t, e.Srv.Gateway(allowAll), gwTLS(tls.RequireAnyClientCert))

		cn, err := e.CA.Client("operator-1")
		if err != nil {
			t.Fatal(err)
		}
		spiffe, err := e.CA.ClientURI("ignored-cn", &url.URL{Scheme: "spiffe", Host: "ops.example", Path: "/team/oncall"})
		if err != nil {
			t.Fatal(err)
		}
		// A certificate from a CA the gateway does not trust.
		otherCA, err := certs.NewCA()
		if err != nil {
			t.Fatal(err)
		}
		stranger, err := otherCA.Client("mallory")
		if err != nil {
			t.Fatal(err)
		}
		creds := func(certs ...tls.Certificate) credentials.TransportCredentials {
			return credentials.NewTLS(&tls.Config{RootCAs: e.CA.Pool, Certificates: certs})
		}
		cases := []struct {
			name, addr string
			creds      credentials.TransportCredentials
			want       string
		}{
			{"common name", verified, creds(cn), "operator-1"},
			{"SPIFFE ID", verified, creds(spiffe), "spiffe://ops.example/team/oncall"},
			{"no certificate", verified, creds(), ""},
			{"certificate not verified", unverified, creds(stranger), ""},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				stub, local := dialGateway(t, c.addr, c.creds)
				ctx := to(testenv.Ctx(t), e.alice.ID())
				if _, err := stub.Unary(ctx, &testpb.EchoRequest{}); err != nil {
					t.Fatalf("Unary: %v", err)
				}
				wantGatewayCall(t, e.calls.last(t), c.want, local())
				ss, err := stub.ServerStream(ctx, &testpb.EchoRequest{Count: 1})
				if err == nil {
					_, err = ss.Recv()
				}
				if err != nil {
					t.Fatalf("ServerStream: %v", err)
				}
				wantGatewayCall(t, e.calls.last(t), c.want, local())
			})
		}
	})
}

func TestGatewayCallerNamedByAuthorizer(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		e := newCallerEnv(t, tr)
		late := make(chan bool, 1)
		var mu sync.Mutex
		var lateCtx context.Context
		authorize := func(ctx context.Context, _, _ string) error {
			md, _ := metadata.FromIncomingContext(ctx)
			if v := md.Get("x-as-bin"); len(v) == 1 {
				if !brpc.SetGatewayCaller(ctx, "first") || !brpc.SetGatewayCaller(ctx, v[0]) {
					t.Error("SetGatewayCaller in the authorizer reported false")
				}
			}
			mu.Lock()
			lateCtx = ctx
			mu.Unlock()
			return nil
		}
		stub, local := dialGateway(t, serveGateway(t, e.Srv.Gateway(authorize)), insecure.NewCredentials())
		base := testenv.Ctx(t)
		// Any string, bytes a header cannot carry as they are included.
		for _, name := range []string{"team:ops/alice", "Jürgen 100% \x00\n", ""} {
			if _, err := stub.Unary(to(base, e.alice.ID(), "x-as-bin", name), &testpb.EchoRequest{}); err != nil {
				t.Fatalf("Unary as %q: %v", name, err)
			}
			wantGatewayCall(t, e.calls.last(t), name, local())
		}
		// An authorizer that names nobody leaves a plaintext caller anonymous.
		if _, err := stub.Unary(to(base, e.alice.ID()), &testpb.EchoRequest{}); err != nil {
			t.Fatalf("Unary: %v", err)
		}
		wantGatewayCall(t, e.calls.last(t), "", local())

		// Once the authorizer has returned, and anywhere else, it does nothing.
		mu.Lock()
		ctx := lateCtx
		mu.Unlock()
		go func() { late <- brpc.SetGatewayCaller(ctx, "too late") }()
		if <-late {
			t.Error("SetGatewayCaller after the authorizer returned reported true")
		}
		if brpc.SetGatewayCaller(base, "nobody") {
			t.Error("SetGatewayCaller outside an authorizer reported true")
		}
	})
}

// A caller's own caller headers never reach the client: the gateway's
// replace them.
func TestGatewayCallerHeadersReplaced(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		e := newCallerEnv(t, tr)
		stub, local := dialGateway(t, serveGateway(t, e.Srv.Gateway(allowAll)), insecure.NewCredentials())
		ctx := to(testenv.Ctx(t), e.alice.ID(),
			brpc.GatewayCallerHeader, "root", brpc.GatewayCallerHeader, "admin",
			brpc.GatewayCallerAddrHeader, "10.0.0.1:1")
		if _, err := stub.Unary(ctx, &testpb.EchoRequest{}); err != nil {
			t.Fatalf("Unary: %v", err)
		}
		wantGatewayCall(t, e.calls.last(t), "", local())
		bs, err := stub.BidiStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := bs.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := bs.Recv(); err == nil {
			t.Fatal("BidiStream: a response to no request")
		}
		wantGatewayCall(t, e.calls.last(t), "", local())
	})
}

// Calls that did not come through the gateway are not gateway calls,
// whatever headers they carry: the server's own calls to the client, and a
// client's calls to the server.
func TestGatewayCallOnlyThroughTheGateway(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		srvCalls := &gatewayCalls{}
		e := testenv.New(t, testenv.Config{
			Transport: tr, GRPCOpts: srvCalls.options(),
			Call: func(*testenv.Env) func(context.Context) (string, error) { return nil },
		})
		calls := &gatewayCalls{}
		alice := e.Connect(testenv.ClientConfig{Name: "alice", GRPCOpts: calls.options()})
		forged := metadata.AppendToOutgoingContext(testenv.Ctx(t),
			brpc.GatewayCallerHeader, "root", brpc.GatewayCallerAddrHeader, "10.0.0.1:1")

		stub, err := e.Srv.Client(alice.ID())
		if err != nil {
			t.Fatal(err)
		}
		for _, ctx := range []context.Context{testenv.Ctx(t), forged} {
			if _, err := stub.Unary(ctx, &testpb.EchoRequest{}); err != nil {
				t.Fatalf("Client(id).Unary: %v", err)
			}
			if got := calls.last(t); got.ok || len(got.callers) != 0 {
				t.Fatalf("a direct reverse call: GatewayCallFromContext %v %+v, caller headers %q; want false and none", got.ok, got.call, got.callers)
			}
			bs, err := stub.BidiStream(ctx)
			if err == nil {
				err = bs.CloseSend()
			}
			if err == nil {
				_, err = bs.Recv()
			}
			if got := calls.last(t); got.ok || len(got.callers) != 0 {
				t.Fatalf("a direct reverse stream: GatewayCallFromContext %v %+v, caller headers %q; want false and none", got.ok, got.call, got.callers)
			}
		}

		// The server's handler of a client's forward call sees the forged
		// headers as sent, and GatewayCallFromContext does not believe them.
		if _, err := alice.Echo.Unary(forged, &testpb.EchoRequest{}); err != nil {
			t.Fatalf("forward Unary: %v", err)
		}
		if got := srvCalls.last(t); got.ok || len(got.callers) != 1 {
			t.Fatalf("a forward call with forged headers: GatewayCallFromContext %v %+v (headers %q); want false", got.ok, got.call, got.callers)
		}
	})
}
