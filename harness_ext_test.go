package brpc_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/certs"
	"github.com/brpc-go/brpc/internal/testpb"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// echoService implements testpb.Echo the same way on both sides. Each
// response carries who answered (name) and the brpc ID the handler saw for
// its caller. call, when set, is run by Unary and its result appended: the
// server uses it to call its caller back.
type echoService struct {
	testpb.UnimplementedEchoServer
	name string
	call func(ctx context.Context) (string, error)
}

func (e *echoService) respond(ctx context.Context, r *testpb.EchoRequest, i int32) (*testpb.EchoResponse, error) {
	if r.GetSleepMs() > 0 {
		select {
		case <-time.After(time.Duration(r.GetSleepMs()) * time.Millisecond):
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	if r.GetFailCode() != 0 {
		st, err := status.New(codes.Code(r.GetFailCode()), e.name+": failing as asked").
			WithDetails(&testpb.EchoResponse{Message: e.name + ":detail"})
		if err != nil {
			return nil, err
		}
		return nil, st.Err()
	}
	p, _ := brpc.PeerFromContext(ctx)
	return &testpb.EchoResponse{Message: e.name + ":" + r.GetMessage(), Payload: r.GetPayload(), PeerId: p.ID, Index: i}, nil
}

// echoMetadata returns the caller's "x-echo-*" metadata, which handlers send
// back as both header and trailer.
func echoMetadata(ctx context.Context) metadata.MD {
	in, _ := metadata.FromIncomingContext(ctx)
	out := metadata.MD{}
	for k, v := range in {
		if len(k) > 7 && k[:7] == "x-echo-" {
			out[k] = v
		}
	}
	return out
}

func (e *echoService) Unary(ctx context.Context, r *testpb.EchoRequest) (*testpb.EchoResponse, error) {
	md := echoMetadata(ctx)
	grpc.SetHeader(ctx, md)
	grpc.SetTrailer(ctx, md)
	resp, err := e.respond(ctx, r, 0)
	if err != nil || e.call == nil {
		return resp, err
	}
	extra, err := e.call(ctx)
	if err != nil {
		return nil, err
	}
	resp.Message += "|" + extra
	return resp, nil
}

func (e *echoService) ServerStream(r *testpb.EchoRequest, st testpb.Echo_ServerStreamServer) error {
	md := echoMetadata(st.Context())
	st.SetHeader(md)
	st.SetTrailer(md)
	for i := int32(0); i < r.GetCount(); i++ {
		resp, err := e.respond(st.Context(), r, i)
		if err != nil {
			return err
		}
		if err := st.Send(resp); err != nil {
			return err
		}
	}
	return nil
}

func (e *echoService) ClientStream(st testpb.Echo_ClientStreamServer) error {
	md := echoMetadata(st.Context())
	st.SetHeader(md)
	st.SetTrailer(md)
	var n int32
	var last *testpb.EchoRequest
	for {
		r, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		n++
		last = r
	}
	if last == nil {
		last = &testpb.EchoRequest{}
	}
	resp, err := e.respond(st.Context(), last, n)
	if err != nil {
		return err
	}
	return st.SendAndClose(resp)
}

func (e *echoService) BidiStream(st testpb.Echo_BidiStreamServer) error {
	md := echoMetadata(st.Context())
	if err := st.SendHeader(md); err != nil {
		return err
	}
	st.SetTrailer(md)
	for i := int32(0); ; i++ {
		r, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		resp, err := e.respond(st.Context(), r, i)
		if err != nil {
			return err
		}
		if err := st.Send(resp); err != nil {
			return err
		}
	}
}

// env is a brpc server on a QUIC loopback listener, with helpers to connect
// clients. Everything it starts is stopped by t.Cleanup.
type env struct {
	t    *testing.T
	ca   *certs.CA
	srv  *brpc.Server[testpb.EchoClient]
	gs   *grpc.Server
	lis  brpc.Listener
	addr string
	// target is what clients dial: scheme://addr.
	target string
}

// transports are the transports every conformance test runs on.
var transports = []string{"quic", "tcp"}

// eachTransport runs fn as a subtest per transport.
func eachTransport(t *testing.T, fn func(t *testing.T, transport string)) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) { fn(t, tr) })
	}
}

type envConfig struct {
	transport  string // "quic" (default) or "tcp"
	addr       string // where to listen; default 127.0.0.1:0
	serverOpts []brpc.ServerOption
	grpcOpts   []grpc.ServerOption
	serverTLS  func(*certs.CA, *tls.Config)
	// call is the server's Unary callback; defaults to calling the caller back.
	call func(e *env) func(ctx context.Context) (string, error)
}

func newEnv(t *testing.T, cfg envConfig) *env {
	t.Helper()
	ca, err := certs.NewCA()
	if err != nil {
		t.Fatalf("making a CA: %v", err)
	}
	stls, err := ca.ServerTLS()
	if err != nil {
		t.Fatalf("making a server certificate: %v", err)
	}
	if cfg.serverTLS != nil {
		cfg.serverTLS(ca, stls)
	}
	e := &env{t: t, ca: ca}
	e.gs = grpc.NewServer(cfg.grpcOpts...)
	svc := &echoService{name: "server"}
	if cfg.call != nil {
		svc.call = cfg.call(e)
	} else {
		svc.call = e.callBack
	}
	testpb.RegisterEchoServer(e.gs, svc)
	e.srv = brpc.NewServer(e.gs, testpb.NewEchoClient, cfg.serverOpts...)
	listen := brpc.ListenQUIC
	if cfg.transport == "" {
		cfg.transport = "quic"
	}
	if cfg.transport == "tcp" {
		listen = brpc.ListenTCP
	}
	if cfg.addr == "" {
		cfg.addr = "127.0.0.1:0"
	}
	e.lis, err = listen(cfg.addr, stls)
	if err != nil {
		t.Fatalf("listening on %s: %v", cfg.transport, err)
	}
	e.addr = e.lis.Addr().String()
	e.target = cfg.transport + "://" + e.addr
	served := make(chan error, 1)
	go func() { served <- e.srv.Serve(e.lis) }()
	t.Cleanup(func() {
		e.srv.Stop()
		// ErrServerStopped: the test stopped the server before Serve ran.
		if err := <-served; err != nil && err != brpc.ErrServerStopped {
			t.Errorf("Serve returned %v after Stop, want nil", err)
		}
	})
	return e
}

// callBack is the server's default Unary callback: it calls the caller's own
// Unary through ClientFromContext and reports what answered.
func (e *env) callBack(ctx context.Context) (string, error) {
	c, err := e.srv.ClientFromContext(ctx)
	if err != nil {
		return "", err
	}
	r, err := c.Unary(ctx, &testpb.EchoRequest{Message: "back"})
	if err != nil {
		return "", err
	}
	return r.GetMessage(), nil
}

type clientConfig struct {
	grpcOpts []grpc.ServerOption // for the client's own *grpc.Server
	name     string              // the client's echo service answers as this
	md       metadata.MD
	opts     []brpc.DialOption
	noServe  bool
	tls      *tls.Config
}

// client is a connected brpc client serving its own echo service.
type client struct {
	*brpc.ClientConn
	gs   *grpc.Server
	echo testpb.EchoClient
}

func (e *env) dial(cfg clientConfig) (*client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tlsConf := cfg.tls
	if tlsConf == nil {
		tlsConf = e.ca.ClientTLS()
	}
	opts := []brpc.DialOption{brpc.WithTLSConfig(tlsConf)}
	if cfg.md != nil {
		opts = append(opts, brpc.WithMetadata(cfg.md))
	}
	var gs *grpc.Server
	if !cfg.noServe {
		gs = grpc.NewServer(cfg.grpcOpts...)
		testpb.RegisterEchoServer(gs, &echoService{name: cfg.name})
		opts = append(opts, brpc.WithServer(gs))
	}
	opts = append(opts, cfg.opts...)
	cc, err := brpc.Dial(ctx, e.target, opts...)
	if err != nil {
		if gs != nil {
			gs.Stop()
		}
		return nil, err
	}
	return &client{ClientConn: cc, gs: gs, echo: testpb.NewEchoClient(cc)}, nil
}

// connect dials and registers the client's shutdown with t.Cleanup.
func (e *env) connect(cfg clientConfig) *client {
	e.t.Helper()
	c, err := e.dial(cfg)
	if err != nil {
		e.t.Fatalf("Dial(%s): %v", cfg.name, err)
	}
	e.t.Cleanup(c.close)
	return c
}

func (c *client) close() {
	c.Close()
	if c.gs != nil {
		c.gs.Stop()
	}
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func wantCode(t *testing.T, err error, want codes.Code, what string) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("%s: got code %v (%v), want %v", what, got, err, want)
	}
}
