package testenv

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/certs"
	"github.com/brpc-go/brpc/internal/testpb"
)

// Env is a brpc server on a loopback listener, with helpers to connect
// clients. Everything it starts is stopped by t.Cleanup.
type Env struct {
	t   *testing.T
	CA  *certs.CA
	Srv *brpc.Server[testpb.EchoClient]
	GS  *grpc.Server
	// Echo is the server's echo service.
	Echo *Echo
	Lis  brpc.Listener
	// Addr is the listener's address.
	Addr string
	// Target is what clients dial: scheme://addr. Tests that put a relay
	// in between point it at the relay.
	Target string
}

// Endpoint is where a brpc server listens and the certificates that trust
// it: what a raw attacker, speaking QUIC or TLS itself, needs to reach it.
type Endpoint struct {
	Addr  string // host:port
	Roots *x509.CertPool
}

// Endpoint is e's server as a raw attacker reaches it (not through a relay).
func (e *Env) Endpoint() Endpoint { return Endpoint{Addr: e.Addr, Roots: e.CA.Pool} }

// Transports are the transports every conformance test runs on.
var Transports = []string{"quic", "tcp"}

// EachTransport runs fn as a subtest per transport.
func EachTransport(t *testing.T, fn func(t *testing.T, transport string)) {
	for _, tr := range Transports {
		t.Run(tr, func(t *testing.T) { fn(t, tr) })
	}
}

// Config says how New builds an Env.
type Config struct {
	Transport  string // "quic" (default) or "tcp"
	Addr       string // where to listen; default 127.0.0.1:0
	ServerOpts []brpc.ServerOption
	GRPCOpts   []grpc.ServerOption
	ServerTLS  func(*certs.CA, *tls.Config)
	// Call is the server's Unary callback; nil calls the caller back
	// (Env.CallBack).
	Call func(e *Env) func(ctx context.Context) (string, error)
}

// Listen listens on addr with transport "quic" or "tcp".
func Listen(transport, addr string, tlsConf *tls.Config) (brpc.Listener, error) {
	if transport == "tcp" {
		return brpc.ListenTCP(addr, tlsConf)
	}
	return brpc.ListenQUIC(addr, tlsConf)
}

// Serving is a brpc server with an echo service, serving one listener.
type Serving struct {
	Srv    *brpc.Server[testpb.EchoClient]
	GS     *grpc.Server
	Lis    brpc.Listener
	served chan error
}

// StartServing serves echo with a brpc server built with serverOpts (and
// a *grpc.Server built with grpcOpts) on a listener of transport ("quic"
// when empty) at addr.
func StartServing(transport, addr string, tlsConf *tls.Config, echo *Echo, grpcOpts []grpc.ServerOption, serverOpts []brpc.ServerOption) (*Serving, error) {
	lis, err := Listen(transport, addr, tlsConf)
	if err != nil {
		return nil, err
	}
	s := &Serving{GS: grpc.NewServer(grpcOpts...), Lis: lis, served: make(chan error, 1)}
	testpb.RegisterEchoServer(s.GS, echo)
	s.Srv = brpc.NewServer(s.GS, testpb.NewEchoClient, serverOpts...)
	go func() { s.served <- s.Srv.Serve(lis) }()
	return s, nil
}

// Stop stops the server now and waits for Serve to return; it returns
// Serve's error, which ErrServerStopped (stopped before Serve ran) is not.
// Only the first call returns it.
func (s *Serving) Stop() error {
	s.Srv.Stop()
	err, ok := <-s.served
	if !ok {
		return nil
	}
	close(s.served)
	if err == brpc.ErrServerStopped {
		return nil
	}
	return err
}

// New starts a server serving the echo service as "server".
func New(t *testing.T, cfg Config) *Env {
	t.Helper()
	ca, err := certs.NewCA()
	if err != nil {
		t.Fatalf("making a CA: %v", err)
	}
	stls, err := ca.ServerTLS()
	if err != nil {
		t.Fatalf("making a server certificate: %v", err)
	}
	if cfg.ServerTLS != nil {
		cfg.ServerTLS(ca, stls)
	}
	e := &Env{t: t, CA: ca, Echo: &Echo{Name: "server"}}
	if cfg.Call != nil {
		e.Echo.Call = cfg.Call(e)
	} else {
		e.Echo.Call = e.CallBack
	}
	if cfg.Transport == "" {
		cfg.Transport = "quic"
	}
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	s, err := StartServing(cfg.Transport, cfg.Addr, stls, e.Echo, cfg.GRPCOpts, cfg.ServerOpts)
	if err != nil {
		t.Fatalf("listening on %s: %v", cfg.Transport, err)
	}
	e.Srv, e.GS, e.Lis = s.Srv, s.GS, s.Lis
	e.Addr = e.Lis.Addr().String()
	e.Target = cfg.Transport + "://" + e.Addr
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("Serve returned %v after Stop, want nil", err)
		}
	})
	return e
}

// ServeAlso serves e's server on a second listener too, of transport at
// addr (empty: the port number of e's own listener, on 127.0.0.1), and
// returns its address; t.Cleanup stops the server and checks that Serve
// ended well.
func (e *Env) ServeAlso(transport, addr string) string {
	e.t.Helper()
	if addr == "" {
		_, port, _ := net.SplitHostPort(e.Addr)
		addr = "127.0.0.1:" + port
	}
	stls, err := e.CA.ServerTLS()
	if err != nil {
		e.t.Fatal(err)
	}
	lis, err := Listen(transport, addr, stls)
	if err != nil {
		e.t.Fatalf("listening on %s at %s too: %v", transport, addr, err)
	}
	e.serveOn(transport, lis)
	return lis.Addr().String()
}

// serveOn serves lis with e's server until the test ends.
func (e *Env) serveOn(transport string, lis brpc.Listener) {
	served := make(chan error, 1)
	go func() { served <- e.Srv.Serve(lis) }()
	e.t.Cleanup(func() {
		e.Srv.Stop()
		if err := <-served; err != nil && err != brpc.ErrServerStopped {
			e.t.Errorf("Serve(%s) = %v after Stop", transport, err)
		}
	})
}

// ServeOnOnePort serves, besides e's own listener, a QUIC and a TCP
// listener that share one port number, and returns their addresses. The
// port number UDP gives may be taken for TCP by another socket on the
// machine: then both are given back and another is tried.
func (e *Env) ServeOnOnePort() (quicAddr, tcpAddr string) {
	e.t.Helper()
	stls, err := e.CA.ServerTLS()
	if err != nil {
		e.t.Fatal(err)
	}
	for attempt := 0; ; attempt++ {
		ql, err := Listen("quic", "127.0.0.1:0", stls)
		if err != nil {
			e.t.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(ql.Addr().String())
		tl, err := Listen("tcp", "127.0.0.1:"+port, stls)
		if err != nil {
			ql.Close()
			if attempt < 20 {
				continue
			}
			e.t.Fatalf("no port number free for both UDP and TCP after %d tries: %v", attempt+1, err)
		}
		e.serveOn("quic", ql)
		e.serveOn("tcp", tl)
		return ql.Addr().String(), tl.Addr().String()
	}
}

// NewPlain is a QUIC Env whose server does not call back from Unary, so
// that the answer of every RPC kind is the same shape in both directions.
func NewPlain(t *testing.T) *Env {
	return NewPlainOn(t, "quic")
}

// NewPlainOn is NewPlain on transport.
func NewPlainOn(t *testing.T, transport string) *Env {
	return New(t, Config{Transport: transport, Call: func(*Env) func(context.Context) (string, error) { return nil }})
}

// CallBack is the server's default Unary callback: it calls the caller's
// own Unary through ClientFromContext and reports what answered.
func (e *Env) CallBack(ctx context.Context) (string, error) {
	c, err := e.Srv.ClientFromContext(ctx)
	if err != nil {
		return "", err
	}
	r, err := c.Unary(ctx, &testpb.EchoRequest{Message: "back"})
	if err != nil {
		return "", err
	}
	return r.GetMessage(), nil
}

// ClientConfig says how Dial connects a client.
type ClientConfig struct {
	GRPCOpts []grpc.ServerOption // for the client's own *grpc.Server
	Name     string              // the client's echo service answers as this
	MD       metadata.MD
	Opts     []brpc.DialOption
	NoServe  bool // no echo service of its own
	// Register, when set, registers further services (reflection, say) on
	// the client's own *grpc.Server before it serves.
	Register func(*grpc.Server)
	TLS      *tls.Config
	Target   string // what to dial instead of Env.Target
}

// Client is a connected brpc client serving its own echo service.
type Client struct {
	*brpc.ClientConn
	GS   *grpc.Server
	Echo testpb.EchoClient
	// Service is the client's own echo service (nil with NoServe).
	Service *Echo
}

// Dial connects a client to e.Target (or cfg.Target).
func (e *Env) Dial(cfg ClientConfig) (*Client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tlsConf := cfg.TLS
	if tlsConf == nil {
		tlsConf = e.CA.ClientTLS()
	}
	opts := []brpc.DialOption{brpc.WithTLSConfig(tlsConf)}
	if cfg.MD != nil {
		opts = append(opts, brpc.WithMetadata(cfg.MD))
	}
	var gs *grpc.Server
	var svc *Echo
	if !cfg.NoServe {
		gs = grpc.NewServer(cfg.GRPCOpts...)
		svc = &Echo{Name: cfg.Name}
		testpb.RegisterEchoServer(gs, svc)
		if cfg.Register != nil {
			cfg.Register(gs)
		}
		opts = append(opts, brpc.WithServer(gs))
	}
	opts = append(opts, cfg.Opts...)
	target := cfg.Target
	if target == "" {
		target = e.Target
	}
	cc, err := brpc.Dial(ctx, target, opts...)
	if err != nil {
		if gs != nil {
			gs.Stop()
		}
		return nil, err
	}
	return &Client{ClientConn: cc, GS: gs, Echo: testpb.NewEchoClient(cc), Service: svc}, nil
}

// Connect dials and registers the client's shutdown with t.Cleanup.
func (e *Env) Connect(cfg ClientConfig) *Client {
	e.t.Helper()
	c, err := e.Dial(cfg)
	if err != nil {
		e.t.Fatalf("Dial(%s): %v", cfg.Name, err)
	}
	e.t.Cleanup(c.Shutdown)
	return c
}

// Shutdown closes the connection and stops the client's own server.
func (c *Client) Shutdown() {
	c.Close()
	if c.GS != nil {
		c.GS.Stop()
	}
}

// WantServes connects an ordinary client named name and makes a call that
// the server answers after calling the client back (a server built with
// the default Call); it returns the client, closed by t.Cleanup.
func (e *Env) WantServes(t testing.TB, name string) *Client {
	t.Helper()
	c, err := e.Dial(ClientConfig{Name: name})
	if err != nil {
		t.Fatalf("an ordinary client cannot connect any more: %v", err)
	}
	t.Cleanup(c.Shutdown)
	CallOK(t, c, name)
	return c
}

// CallOK makes a forward call from c, whose echo service is named name,
// that the server answers after calling c back, and fails the test unless
// both directions answer within 5s.
func CallOK(t testing.TB, c *Client, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := c.Echo.Unary(ctx, &testpb.EchoRequest{Message: "hi"})
	if err != nil {
		t.Fatalf("Unary from %s: %v", name, err)
	}
	if want := "server:hi|" + name + ":back"; r.GetMessage() != want {
		t.Fatalf("Unary from %s: got %q, want %q", name, r.GetMessage(), want)
	}
}

// Direction is one way calls can go over a brpc session.
type Direction struct {
	Name     string
	Stub     testpb.EchoClient
	Answerer string // the echo service's name on the answering side
	WantPeer string // the brpc ID the answering handler sees for its caller
}

// Directions returns forward (client -> server) and reverse (server ->
// client, reached by ID) for client c, whose echo service is named name.
func Directions(t *testing.T, e *Env, c *Client, name string) []Direction {
	t.Helper()
	rev, err := e.Srv.Client(c.ID())
	if err != nil {
		t.Fatalf("Client(%q): %v", c.ID(), err)
	}
	return []Direction{
		{Name: "forward", Stub: c.Echo, Answerer: "server", WantPeer: c.ID()},
		{Name: "reverse", Stub: rev, Answerer: name, WantPeer: ""},
	}
}

// Warm makes one call on each stub, so that the gRPC connections behind
// them are up before the test's own calls.
func Warm(t testing.TB, stubs ...testpb.EchoClient) {
	t.Helper()
	for _, stub := range stubs {
		if _, err := stub.Unary(Ctx(t), &testpb.EchoRequest{}); err != nil {
			t.Fatalf("warm-up: %v", err)
		}
	}
}

// Inflight starts a slow Unary on stub and returns where its error will go.
func Inflight(stub testpb.EchoClient, sleep time.Duration) <-chan error {
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_, err := stub.Unary(ctx, &testpb.EchoRequest{Message: "slow", SleepMs: int32(sleep / time.Millisecond)})
		done <- err
	}()
	return done
}

// WaitFor polls cond until it holds or d passes.
func WaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Ctx is a context for one test's calls, canceled when the test ends.
func Ctx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// WantCode fails the test unless err has code want.
func WantCode(t testing.TB, err error, want codes.Code, what string) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("%s: got code %v (%v), want %v", what, got, err, want)
	}
}
