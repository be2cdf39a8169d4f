package brpc_test

import (
	"bytes"
	"context"
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
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/testenv"
	"github.com/brpc-go/brpc/internal/testpb"
)

// seen records what the client's own *grpc.Server saw of the calls that
// reached it: how many, and the metadata and deadline of the last one.
type seen struct {
	calls    atomic.Int64
	mu       sync.Mutex
	md       metadata.MD
	deadline time.Time
	hasDL    bool
}

func (s *seen) record(ctx context.Context) {
	s.calls.Add(1)
	md, _ := metadata.FromIncomingContext(ctx)
	dl, ok := ctx.Deadline()
	s.mu.Lock()
	s.md, s.deadline, s.hasDL = md.Copy(), dl, ok
	s.mu.Unlock()
}

func (s *seen) last() (metadata.MD, time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.md, s.deadline, s.hasDL
}

func (s *seen) options() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			s.record(ctx)
			return h(ctx, req)
		}),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			s.record(ss.Context())
			return h(srv, ss)
		}),
	}
}

// gatewayEnv is a brpc server with one connected client, "alice", and a
// gateway *grpc.Server on its own loopback listener that a plain grpc-go
// client (Stub) reaches.
type gatewayEnv struct {
	*testenv.Env
	Alice *testenv.Client
	Seen  *seen
	Stub  testpb.EchoClient
	// gatewayAddr is where the gateway's *grpc.Server listens.
	gatewayAddr string
}

func newGatewayEnv(t *testing.T, transport string, authorize brpc.GatewayAuthorizer, gwOpts ...grpc.ServerOption) *gatewayEnv {
	t.Helper()
	return newGatewayEnvWith(t, transport, nil, authorize, gwOpts...)
}

// newGatewayEnvWith is newGatewayEnv with srvOpts for the brpc server.
func newGatewayEnvWith(t *testing.T, transport string, srvOpts []brpc.ServerOption, authorize brpc.GatewayAuthorizer, gwOpts ...grpc.ServerOption) *gatewayEnv {
	t.Helper()
	e := testenv.New(t, testenv.Config{
		Transport:  transport,
		ServerOpts: srvOpts,
		Call:       func(*testenv.Env) func(context.Context) (string, error) { return nil },
	})
	sn := &seen{}
	alice := e.Connect(testenv.ClientConfig{Name: "alice", GRPCOpts: sn.options()})
	addr := serveGateway(t, e.Srv.Gateway(authorize), gwOpts...)
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return &gatewayEnv{Env: e, Alice: alice, Seen: sn, Stub: testpb.NewEchoClient(cc), gatewayAddr: addr}
}

// serveGateway serves handler as the unknown-service handler of a
// *grpc.Server built with opts that registers nothing else, on a loopback
// listener, and returns its address.
func serveGateway(t *testing.T, handler grpc.StreamHandler, opts ...grpc.ServerOption) string {
	t.Helper()
	return serveOnLoopback(t, grpc.NewServer(append(opts, grpc.UnknownServiceHandler(handler))...))
}

// serveOnLoopback serves gs on a loopback listener until t ends and returns
// its address.
func serveOnLoopback(t *testing.T, gs *grpc.Server) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		gs.Serve(lis)
	}()
	t.Cleanup(func() {
		gs.Stop()
		<-served
	})
	return lis.Addr().String()
}

func allowAll(context.Context, string, string) error { return nil }

// eachGatewayRelay runs fn on each transport twice: with the general relay,
// and with the echo service described (WithGatewayServices), so that its
// unary and server-streaming methods take the relay's shortcuts.
func eachGatewayRelay(t *testing.T, fn func(t *testing.T, transport string, srvOpts []brpc.ServerOption)) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		t.Run("general", func(t *testing.T) { fn(t, tr, nil) })
		t.Run("described", func(t *testing.T) {
			fn(t, tr, []brpc.ServerOption{brpc.WithGatewayServices(&testpb.Echo_ServiceDesc)})
		})
	})
}

// to is a context for a gateway call to the client with this ID, with md
// as further request headers.
func to(ctx context.Context, id string, kv ...string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, append([]string{brpc.GatewayTargetHeader, id}, kv...)...)
}

func TestGatewayAllRPCKinds(t *testing.T) {
	eachGatewayRelay(t, func(t *testing.T, tr string, srvOpts []brpc.ServerOption) {
		g := newGatewayEnvWith(t, tr, srvOpts, allowAll)
		ctx := to(testenv.Ctx(t), g.Alice.ID(), "x-echo-k", "v")
		wantMD := func(kind, what string, md metadata.MD) {
			t.Helper()
			if got := md.Get("x-echo-k"); len(got) != 1 || got[0] != "v" {
				t.Errorf("%s: %s x-echo-k = %q, want [v]", kind, what, got)
			}
		}
		check := func(kind string, r *testpb.EchoResponse, msg string, index int32) {
			t.Helper()
			if want := "alice:" + msg; r.GetMessage() != want {
				t.Errorf("%s: message %q, want %q", kind, r.GetMessage(), want)
			}
			if r.GetIndex() != index {
				t.Errorf("%s: index %d, want %d", kind, r.GetIndex(), index)
			}
			if r.GetPeerId() != "" {
				t.Errorf("%s: the client's handler saw peer %q, want the server (\"\")", kind, r.GetPeerId())
			}
		}

		var hdr, trl metadata.MD
		r, err := g.Stub.Unary(ctx, &testpb.EchoRequest{Message: "u", Payload: []byte{0, 1, 2}}, grpc.Header(&hdr), grpc.Trailer(&trl))
		if err != nil {
			t.Fatalf("Unary: %v", err)
		}
		check("Unary", r, "u", 0)
		if string(r.GetPayload()) != "\x00\x01\x02" {
			t.Errorf("Unary: payload %q, want 00 01 02", r.GetPayload())
		}
		wantMD("Unary", "header", hdr)
		wantMD("Unary", "trailer", trl)

		ss, err := g.Stub.ServerStream(ctx, &testpb.EchoRequest{Message: "s", Count: 3})
		if err != nil {
			t.Fatalf("ServerStream: %v", err)
		}
		for i := int32(0); ; i++ {
			r, err := ss.Recv()
			if errors.Is(err, io.EOF) {
				if i != 3 {
					t.Errorf("ServerStream: %d responses, want 3", i)
				}
				break
			}
			if err != nil {
				t.Fatalf("ServerStream: %v", err)
			}
			check("ServerStream", r, "s", i)
		}
		h, _ := ss.Header()
		wantMD("ServerStream", "header", h)
		wantMD("ServerStream", "trailer", ss.Trailer())

		// The caller half-closes after three messages; the client's handler
		// answers only once it has seen that end, so the call completes only
		// if the half-close is relayed.
		cs, err := g.Stub.ClientStream(ctx)
		if err != nil {
			t.Fatalf("ClientStream: %v", err)
		}
		for _, m := range []string{"a", "b", "c"} {
			if err := cs.Send(&testpb.EchoRequest{Message: m}); err != nil {
				t.Fatalf("ClientStream Send: %v", err)
			}
		}
		r, err = cs.CloseAndRecv()
		if err != nil {
			t.Fatalf("ClientStream CloseAndRecv: %v", err)
		}
		check("ClientStream", r, "c", 3)
		h, _ = cs.Header()
		wantMD("ClientStream", "header", h)
		wantMD("ClientStream", "trailer", cs.Trailer())

		bs, err := g.Stub.BidiStream(ctx)
		if err != nil {
			t.Fatalf("BidiStream: %v", err)
		}
		// The client's handler sends its headers before any message.
		h, err = bs.Header()
		if err != nil {
			t.Fatalf("BidiStream Header: %v", err)
		}
		wantMD("BidiStream", "header", h)
		for i, m := range []string{"x", "y", "z"} {
			if err := bs.Send(&testpb.EchoRequest{Message: m}); err != nil {
				t.Fatalf("BidiStream Send: %v", err)
			}
			r, err := bs.Recv()
			if err != nil {
				t.Fatalf("BidiStream Recv: %v", err)
			}
			check("BidiStream", r, m, int32(i))
		}
		if err := bs.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := bs.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("BidiStream after CloseSend: %v, want io.EOF", err)
		}
		wantMD("BidiStream", "trailer", bs.Trailer())
	})
}

func TestGatewayRequestHeaders(t *testing.T) {
	eachGatewayRelay(t, func(t *testing.T, tr string, srvOpts []brpc.ServerOption) {
		g := newGatewayEnvWith(t, tr, srvOpts, allowAll)
		ctx := to(testenv.Ctx(t), g.Alice.ID(), "x-app", "1", "x-bin-bin", "\x00\xff", "brpc-client-id", "forged")
		if _, err := g.Stub.Unary(ctx, &testpb.EchoRequest{}); err != nil {
			t.Fatalf("Unary: %v", err)
		}
		md, _, _ := g.Seen.last()
		if got := md.Get("x-app"); len(got) != 1 || got[0] != "1" {
			t.Errorf("the client saw x-app %q, want [1]", got)
		}
		if got := md.Get("x-bin-bin"); len(got) != 1 || got[0] != "\x00\xff" {
			t.Errorf("the client saw x-bin-bin %q, want [00 ff]", got)
		}
		for _, k := range []string{brpc.GatewayTargetHeader, "brpc-client-id"} {
			if v := md.Get(k); len(v) != 0 {
				t.Errorf("the client saw the caller's %s header %q", k, v)
			}
		}
		for _, k := range []string{brpc.GatewayCallerHeader, brpc.GatewayCallerAddrHeader} {
			if v := md.Get(k); len(v) != 1 {
				t.Errorf("the client saw the gateway's %s header %q, want one value", k, v)
			}
		}
	})
}

func TestGatewayStatusDetails(t *testing.T) {
	eachGatewayRelay(t, func(t *testing.T, tr string, srvOpts []brpc.ServerOption) {
		g := newGatewayEnvWith(t, tr, srvOpts, allowAll)
		ctx := to(testenv.Ctx(t), g.Alice.ID())
		_, err := g.Stub.Unary(ctx, &testpb.EchoRequest{FailCode: int32(codes.FailedPrecondition)})
		st := status.Convert(err)
		if st.Code() != codes.FailedPrecondition || st.Message() != "alice: failing as asked" {
			t.Fatalf("Unary: got %v, want FailedPrecondition \"alice: failing as asked\"", err)
		}
		d := st.Details()
		if len(d) != 1 {
			t.Fatalf("details %v, want one", d)
		}
		if r, ok := d[0].(*testpb.EchoResponse); !ok || r.GetMessage() != "alice:detail" {
			t.Fatalf("detail %v, want EchoResponse alice:detail", d[0])
		}
	})
}

func TestGatewayDeadline(t *testing.T) {
	eachGatewayRelay(t, func(t *testing.T, tr string, srvOpts []brpc.ServerOption) {
		g := newGatewayEnvWith(t, tr, srvOpts, allowAll)
		ctx, cancel := context.WithTimeout(to(testenv.Ctx(t), g.Alice.ID()), 5*time.Second)
		defer cancel()
		want, _ := ctx.Deadline()
		if _, err := g.Stub.Unary(ctx, &testpb.EchoRequest{}); err != nil {
			t.Fatalf("Unary: %v", err)
		}
		_, dl, ok := g.Seen.last()
		if !ok {
			t.Fatal("the client's handler saw no deadline")
		}
		// grpc-timeout is relative and rounded up, so the client's deadline
		// may fall a little after the caller's.
		if d := dl.Sub(want); d > time.Second || d < -2*time.Second {
			t.Errorf("the client's handler saw deadline %v, want about %v", dl, want)
		}

		// A call that outlives its deadline ends with DeadlineExceeded and
		// its handler stops waiting.
		short, cancel2 := context.WithTimeout(to(testenv.Ctx(t), g.Alice.ID()), 300*time.Millisecond)
		defer cancel2()
		_, err := g.Stub.Unary(short, &testpb.EchoRequest{SleepMs: 20000})
		testenv.WantCode(t, err, codes.DeadlineExceeded, "a call past its deadline")
		testenv.WaitFor(t, 5*time.Second, "the client's handler to see the deadline", func() bool {
			return g.Alice.Service.Sleeping() == 0
		})
	})
}

func TestGatewayCancel(t *testing.T) {
	eachGatewayRelay(t, func(t *testing.T, tr string, srvOpts []brpc.ServerOption) {
		g := newGatewayEnvWith(t, tr, srvOpts, allowAll)
		ctx, cancel := context.WithCancel(to(testenv.Ctx(t), g.Alice.ID()))
		done := make(chan error, 1)
		go func() {
			_, err := g.Stub.Unary(ctx, &testpb.EchoRequest{SleepMs: 20000})
			done <- err
		}()
		testenv.WaitFor(t, 5*time.Second, "the call to reach the client's handler", func() bool {
			return g.Alice.Service.Sleeping() == 1
		})
		cancel()
		testenv.WantCode(t, <-done, codes.Canceled, "a canceled call")
		testenv.WaitFor(t, 5*time.Second, "the client's handler to see the cancellation", func() bool {
			return g.Alice.Service.Sleeping() == 0
		})
	})
}

func TestGatewayRefusals(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		type call struct {
			id, method string
		}
		var mu sync.Mutex
		var calls []call
		authorize := func(ctx context.Context, id, method string) error {
			mu.Lock()
			calls = append(calls, call{id, method})
			mu.Unlock()
			md, _ := metadata.FromIncomingContext(ctx)
			switch md.Get("x-refuse")[0] {
			case "status":
				return status.Error(codes.Unauthenticated, "who are you")
			case "plain":
				return errors.New("not you")
			}
			return nil
		}
		g := newGatewayEnv(t, tr, authorize)
		nilAuth := newGatewayEnv(t, tr, nil)
		base := testenv.Ctx(t)
		cases := []struct {
			name string
			stub testpb.EchoClient
			ctx  context.Context
			want codes.Code
		}{
			{"no target header", g.Stub, metadata.AppendToOutgoingContext(base, "x-refuse", "no"), codes.InvalidArgument},
			{"empty target header", g.Stub, to(base, "", "x-refuse", "no"), codes.InvalidArgument},
			{"no such client", g.Stub, to(base, "nobody", "x-refuse", "no"), codes.NotFound},
			{"refused with a status", g.Stub, to(base, g.Alice.ID(), "x-refuse", "status"), codes.Unauthenticated},
			{"refused with a plain error", g.Stub, to(base, g.Alice.ID(), "x-refuse", "plain"), codes.PermissionDenied},
			{"nil authorizer", nilAuth.Stub, to(base, nilAuth.Alice.ID(), "x-refuse", "no"), codes.PermissionDenied},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				_, err := c.stub.Unary(c.ctx, &testpb.EchoRequest{})
				testenv.WantCode(t, err, c.want, "Unary")
				bs, err := c.stub.BidiStream(c.ctx)
				if err == nil {
					_, err = bs.Recv()
				}
				testenv.WantCode(t, err, c.want, "BidiStream")
			})
		}
		if n := g.Seen.calls.Load() + nilAuth.Seen.calls.Load(); n != 0 {
			t.Errorf("the client's handler ran for %d refused calls", n)
		}
		mu.Lock()
		defer mu.Unlock()
		want := []call{
			{"nobody", "/brpc.test.v1.Echo/Unary"}, {"nobody", "/brpc.test.v1.Echo/BidiStream"},
			{g.Alice.ID(), "/brpc.test.v1.Echo/Unary"}, {g.Alice.ID(), "/brpc.test.v1.Echo/BidiStream"},
			{g.Alice.ID(), "/brpc.test.v1.Echo/Unary"}, {g.Alice.ID(), "/brpc.test.v1.Echo/BidiStream"},
		}
		if len(calls) != len(want) {
			t.Fatalf("the authorizer was called with %v, want %v", calls, want)
		}
		for i := range want {
			if calls[i] != want[i] {
				t.Errorf("authorizer call %d: %v, want %v", i, calls[i], want[i])
			}
		}
	})
}

func TestGatewayLargeMessages(t *testing.T) {
	eachGatewayRelay(t, func(t *testing.T, tr string, srvOpts []brpc.ServerOption) {
		g := newGatewayEnvWith(t, tr, srvOpts, allowAll)
		payload := make([]byte, 3<<20)
		for i := range payload {
			payload[i] = byte(i * 7)
		}
		r, err := g.Stub.Unary(to(testenv.Ctx(t), g.Alice.ID()), &testpb.EchoRequest{Payload: payload})
		if err != nil {
			t.Fatalf("Unary with 3 MiB each way: %v", err)
		}
		if !bytes.Equal(r.GetPayload(), payload) {
			t.Fatalf("the 3 MiB payload came back changed (%d bytes)", len(r.GetPayload()))
		}
	})
}

// A relayed call the client's side cuts off (its session ends) ends for
// the caller too, with Unavailable, instead of hanging.
func TestGatewayClientGoneEndsCall(t *testing.T) {
	eachGatewayRelay(t, func(t *testing.T, tr string, srvOpts []brpc.ServerOption) {
		g := newGatewayEnvWith(t, tr, srvOpts, allowAll)
		done := make(chan error, 1)
		go func() {
			_, err := g.Stub.Unary(to(testenv.Ctx(t), g.Alice.ID()), &testpb.EchoRequest{SleepMs: 20000})
			done <- err
		}()
		testenv.WaitFor(t, 5*time.Second, "the call to reach the client's handler", func() bool {
			return g.Alice.Service.Sleeping() == 1
		})
		g.Alice.Shutdown()
		select {
		case err := <-done:
			testenv.WantCode(t, err, codes.Unavailable, "a call whose client went away")
		case <-time.After(10 * time.Second):
			t.Fatal("the caller's call still runs 10s after its client went away")
		}
	})
}

// The methods WithGatewayServices describes reach the client as calls of
// their kind: a unary method as a unary call, a server-streaming one as a
// stream without client streams; the others, and every method of a
// service not described, as the general relay's bidirectional stream.
func TestGatewayDescribedMethodsCallTheirKind(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		var mu sync.Mutex
		var kinds []string
		record := func(k string) {
			mu.Lock()
			kinds = append(kinds, k)
			mu.Unlock()
		}
		dial := brpc.WithGRPCDialOptions(
			grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, inv grpc.UnaryInvoker, opts ...grpc.CallOption) error {
				record("unary " + method)
				return inv(ctx, method, req, reply, cc, opts...)
			}),
			grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, st grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
				record(fmt.Sprintf("stream client=%v server=%v %s", desc.ClientStreams, desc.ServerStreams, method))
				return st(ctx, desc, cc, method, opts...)
			}),
		)
		for _, c := range []struct {
			name string
			opts []brpc.ServerOption
			want []string
		}{
			{"general", []brpc.ServerOption{dial}, []string{
				"stream client=true server=true /brpc.test.v1.Echo/Unary",
				"stream client=true server=true /brpc.test.v1.Echo/ServerStream",
				"stream client=true server=true /brpc.test.v1.Echo/ClientStream",
			}},
			{"described", []brpc.ServerOption{dial, brpc.WithGatewayServices(&testpb.Echo_ServiceDesc)}, []string{
				"unary /brpc.test.v1.Echo/Unary",
				"stream client=false server=true /brpc.test.v1.Echo/ServerStream",
				"stream client=true server=true /brpc.test.v1.Echo/ClientStream",
			}},
		} {
			t.Run(c.name, func(t *testing.T) {
				mu.Lock()
				kinds = nil
				mu.Unlock()
				g := newGatewayEnvWith(t, tr, c.opts, allowAll)
				ctx := to(testenv.Ctx(t), g.Alice.ID())
				if _, err := g.Stub.Unary(ctx, &testpb.EchoRequest{Message: "u"}); err != nil {
					t.Fatalf("Unary: %v", err)
				}
				ss, err := g.Stub.ServerStream(ctx, &testpb.EchoRequest{Message: "s", Count: 2})
				if err != nil {
					t.Fatalf("ServerStream: %v", err)
				}
				for n := 0; ; n++ {
					if _, err := ss.Recv(); err != nil {
						if !errors.Is(err, io.EOF) || n != 2 {
							t.Fatalf("ServerStream: %v after %d responses, want io.EOF after 2", err, n)
						}
						break
					}
				}
				cs, err := g.Stub.ClientStream(ctx)
				if err != nil {
					t.Fatalf("ClientStream: %v", err)
				}
				if err := cs.Send(&testpb.EchoRequest{Message: "c"}); err != nil {
					t.Fatalf("ClientStream Send: %v", err)
				}
				if _, err := cs.CloseAndRecv(); err != nil {
					t.Fatalf("ClientStream: %v", err)
				}
				mu.Lock()
				got := slices.Clone(kinds)
				mu.Unlock()
				if !slices.Equal(got, c.want) {
					t.Fatalf("the client was called with\n%q\nwant\n%q", got, c.want)
				}
			})
		}
	})
}

// A caller that sends no request, or two, to a described method without
// client streams gets Internal from the gateway, as from a gRPC server,
// and the client's handler never runs.
func TestGatewayDescribedMethodCardinality(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		g := newGatewayEnvWith(t, tr, []brpc.ServerOption{brpc.WithGatewayServices(&testpb.Echo_ServiceDesc)}, allowAll)
		cc, err := grpc.NewClient(g.gatewayAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		ctx := to(testenv.Ctx(t), g.Alice.ID())
		both := &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}
		for _, method := range []string{"/brpc.test.v1.Echo/Unary", "/brpc.test.v1.Echo/ServerStream"} {
			for _, n := range []int{0, 2} {
				cs, err := cc.NewStream(ctx, both, method)
				if err != nil {
					t.Fatalf("%s: %v", method, err)
				}
				for range n {
					if err := cs.SendMsg(&testpb.EchoRequest{Message: "m"}); err != nil {
						t.Fatalf("%s: send: %v", method, err)
					}
				}
				cs.CloseSend()
				err = cs.RecvMsg(new(testpb.EchoResponse))
				if status.Code(err) != codes.Internal || !strings.Contains(status.Convert(err).Message(), "brpc gateway: cardinality violation") {
					t.Errorf("%s with %d requests: %v, want the gateway's Internal", method, n, err)
				}
			}
		}
		if n := g.Seen.calls.Load(); n != 0 {
			t.Errorf("the client's handler ran %d times, want never", n)
		}
	})
}
