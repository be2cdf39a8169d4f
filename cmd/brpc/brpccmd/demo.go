package brpccmd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/adminpb"
	"github.com/brpc-go/brpc/brpcprom"
	"github.com/brpc-go/brpc/examples/greeter/greeterpb"
)

// demoNames name the demo's clients, in order.
var demoNames = []string{"alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"}

// demoConfig holds the demo's flags.
type demoConfig struct {
	clients     int
	timeout     time.Duration
	logs        bool
	metricsAddr string
}

// demoFlags defines the demo's flags and returns what runs it.
func demoFlags(Extensions) (*flag.FlagSet, func(stdout io.Writer) error) {
	var cfg demoConfig
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.IntVar(&cfg.clients, "clients", 3, fmt.Sprintf("how many clients to connect (1 to %d)", len(demoNames)))
	fs.DurationVar(&cfg.timeout, "timeout", 10*time.Second, "give up if the demo takes longer than this")
	fs.BoolVar(&cfg.logs, "log", true, "show brpc's own log records (slog) among the story")
	fs.StringVar(&cfg.metricsAddr, "metrics-addr", "", "serve Prometheus metrics at http://ADDR/metrics while the demo runs, e.g. 127.0.0.1:9090, and show them at the end")
	return fs, func(stdout io.Writer) error {
		if cfg.clients < 1 || cfg.clients > len(demoNames) {
			return &badUsage{fmt.Sprintf("-clients must be between 1 and %d, not %d", len(demoNames), cfg.clients)}
		}
		if cfg.timeout <= 0 {
			return &badUsage{fmt.Sprintf("-timeout must be positive, not %v", cfg.timeout)}
		}
		ctx, cancel := context.WithTimeout(context.Background(), cfg.timeout)
		defer cancel()
		return demo(ctx, cfg, stdout)
	}
}

// narrator prints the demo's story; the server's handlers tell part of it
// from their own goroutines.
type narrator struct {
	mu sync.Mutex
	w  io.Writer
}

// Write lets brpc's log records join the story, each on its own line.
func (n *narrator) Write(p []byte) (int, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, err := io.WriteString(n.w, "  log: "); err != nil {
		return 0, err
	}
	return n.w.Write(p)
}

func (n *narrator) printf(format string, args ...any) {
	n.mu.Lock()
	defer n.mu.Unlock()
	fmt.Fprintf(n.w, format, args...)
}

// demoClient is one of the demo's clients: its connection to the server and
// the grpc.Server with its own Namer service.
type demoClient struct {
	name    string
	cc      *brpc.ClientConn
	gs      *grpc.Server
	greeter greeterpb.GreeterClient
}

func (c *demoClient) close() {
	c.cc.Close()
	c.gs.Stop()
}

// demo runs a server and cfg.clients clients, makes calls both ways and
// tells w what happened. Everything it starts has stopped when it returns.
func demo(ctx context.Context, cfg demoConfig, w io.Writer) (err error) {
	began := time.Now()
	out := &narrator{w: w}

	cert, caPEM, err := throwawayCertificate()
	if err != nil {
		return fmt.Errorf("making a throwaway certificate: %w", err)
	}
	serverTLS := &tls.Config{Certificates: []tls.Certificate{cert}}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)

	// Limits on what one client's calls can make the server hold
	// (docs/security.md): calls at once per HTTP/2 connection, and static
	// receive windows instead of grpc-go's BDP-sized ones.
	gs := grpc.NewServer(
		grpc.Creds(brpc.TransportCredentials()),
		grpc.MaxConcurrentStreams(16),
		grpc.InitialWindowSize(256<<10),
		grpc.InitialConnWindowSize(4<<20),
	)
	greeter := &demoGreeter{out: out}
	greeterpb.RegisterGreeterServer(gs, greeter)
	var opts []brpc.ServerOption
	if cfg.logs {
		opts = append(opts, brpc.WithLogger(slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{
			ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
				if a.Key == slog.TimeKey {
					return slog.Attr{} // the story has its own times
				}
				return a
			},
		}))))
	}
	var metricsURL string // empty: no metrics
	if cfg.metricsAddr != "" {
		m := brpcprom.New()
		reg := prometheus.NewRegistry()
		reg.MustRegister(m)
		opts = append(opts, m.ServerOptions()...)
		var stopMetrics func()
		if metricsURL, stopMetrics, err = serveMetrics(cfg.metricsAddr, reg); err != nil {
			return err
		}
		defer stopMetrics()
	}
	srv := brpc.NewServer(gs, greeterpb.NewNamerClient, opts...)
	greeter.srv = srv
	lis, err := brpc.ListenQUIC("127.0.0.1:0", serverTLS)
	if err != nil {
		gs.Stop()
		return err
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()

	var clients []*demoClient
	stopped := false
	defer func() {
		// On the happy path the shutdown below has run already; on an error
		// path, stop everything now.
		if !stopped {
			srv.Stop()
			for _, c := range clients {
				c.close()
			}
		}
		if serr := <-served; serr != nil && err == nil {
			err = fmt.Errorf("serving: %w", serr)
		}
	}()

	out.printf("brpc demo: one server and %d client(s) in this process, over QUIC on loopback.\n", cfg.clients)
	out.printf("The server listens on quic://%s with a certificate from a throwaway in-memory CA.\n", lis.Addr())
	if metricsURL != "" {
		out.printf("Its metrics are at %s while the demo runs.\n", metricsURL)
	}
	out.printf("\n")

	out.printf("Connect: each client dials, serves its own Namer service over the connection, and gets an ID.\n")
	for _, name := range demoNames[:cfg.clients] {
		start := time.Now()
		c, err := connect(ctx, lis.Addr().String(), roots, name)
		if err != nil {
			return fmt.Errorf("connecting %s: %w", name, err)
		}
		clients = append(clients, c)
		out.printf("  %-6s connected in %s; the server gave it ID %s\n", name, ms(time.Since(start)), c.cc.ID())
	}

	out.printf("\nForward calls (client -> server): each client calls Greeter.SayHello. The handler gets its\n")
	out.printf("caller's stub from ClientFromContext (identity from the connection, not metadata) and calls it back.\n")
	for _, c := range clients {
		out.printf("  %-6s -> server  Greeter.SayHello(%q)\n", c.name, "hi from "+c.name)
		start := time.Now()
		r, err := c.greeter.SayHello(ctx, &greeterpb.HelloRequest{Greeting: "hi from " + c.name})
		if err != nil {
			return fmt.Errorf("%s: SayHello: %w", c.name, err)
		}
		rtt := time.Since(start)
		if !strings.Contains(r.GetMessage(), c.name) {
			return fmt.Errorf("%s: the reply %q does not name it", c.name, r.GetMessage())
		}
		out.printf("  %-6s <- server  %q after a %s round trip\n", c.name, r.GetMessage(), ms(rtt))
	}

	out.printf("\nReverse calls (server -> client): the server lists Peers() and calls each client by ID\n")
	out.printf("through Client(id), without being called first.\n")
	peers := srv.Peers()
	out.printf("  server: Peers() lists %d connected client(s)\n", len(peers))
	if len(peers) != len(clients) {
		return fmt.Errorf("Peers() lists %d clients, want %d", len(peers), len(clients))
	}
	for _, p := range peers {
		out.printf("    %s  name=%-6s %s %s\n", p.ID, first(p.Metadata, "name"), p.Transport, p.RemoteAddr)
	}
	for _, p := range peers {
		namer, err := srv.Client(p.ID)
		if err != nil {
			return fmt.Errorf("Client(%s): %w", p.ID, err)
		}
		start := time.Now()
		r, err := namer.GetName(ctx, &greeterpb.NameRequest{})
		if err != nil {
			return fmt.Errorf("calling client %s: %w", p.ID, err)
		}
		if want := first(p.Metadata, "name"); r.GetName() != want {
			return fmt.Errorf("client %s answered %q, want %q", p.ID, r.GetName(), want)
		}
		out.printf("  server -> %s  Namer.GetName() = %q in %s, on Client(%s)'s stub\n", pad(r.GetName()), r.GetName(), ms(time.Since(start)), short(p.ID))
	}
	if _, err := srv.Client("no-such-id"); err != nil {
		out.printf("  server: Client(%q) fails with %v: %s\n", "no-such-id", status.Code(err), status.Convert(err).Message())
	} else {
		return errors.New(`Client("no-such-id") found a client`)
	}

	if err := demoGateway(ctx, out, srv, peers[0]); err != nil {
		return err
	}

	if metricsURL != "" {
		if err := showMetrics(ctx, out, metricsURL); err != nil {
			return err
		}
	}

	out.printf("\nShutdown:\n")
	start := time.Now()
	srv.GracefulStop()
	stopped = true
	out.printf("  server: GracefulStop() let calls in both directions finish and closed %d session(s) in %s\n", len(clients), ms(time.Since(start)))
	for _, c := range clients {
		c.close()
	}
	out.printf("  clients closed; Peers() now lists %d client(s)\n", len(srv.Peers()))
	out.printf("\nDone in %s: %d forward calls, each with a call back, %d reverse calls by ID and one through the gateway.\n",
		ms(time.Since(began)), len(clients), len(clients))
	return nil
}

// demoGateway serves the server's gateway and admin service on a loopback
// listener of their own, and makes a plain grpc-go client (no brpc in it:
// grpcurl or a script in another language would do the same) list the
// clients and call one of them through it.
func demoGateway(ctx context.Context, out *narrator, srv *brpc.Server[greeterpb.NamerClient], p brpc.Peer) error {
	// In-process and on loopback, every caller is admitted; a gateway that
	// others can reach needs credentials and an authorizer.
	relay := srv.Gateway(func(context.Context, string, string) error { return nil })
	gs := grpc.NewServer(grpc.UnknownServiceHandler(relay))
	brpc.RegisterGatewayReflection(gs, relay)
	srv.RegisterAdmin(gs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = gs.Serve(lis)
	}()
	defer func() {
		gs.Stop()
		<-served
	}()
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()

	out.printf("\nGateway (any gRPC client -> server -> client): the server serves Gateway and the admin service on\n")
	out.printf("its own *grpc.Server at %s; a plain grpc-go client, which links no brpc, calls through it.\n", lis.Addr())
	list, err := adminpb.NewAdminClient(cc).ListPeers(ctx, &adminpb.ListPeersRequest{})
	if err != nil {
		return fmt.Errorf("admin ListPeers through the gateway: %w", err)
	}
	out.printf("  grpc client -> admin  Admin.ListPeers() lists %d client(s)\n", len(list.GetPeers()))
	start := time.Now()
	r, err := greeterpb.NewNamerClient(cc).GetName(metadata.AppendToOutgoingContext(ctx, brpc.GatewayTargetHeader, p.ID), &greeterpb.NameRequest{})
	if err != nil {
		return fmt.Errorf("calling client %s through the gateway: %w", p.ID, err)
	}
	if want := first(p.Metadata, "name"); r.GetName() != want {
		return fmt.Errorf("client %s answered %q through the gateway, want %q", p.ID, r.GetName(), want)
	}
	out.printf("  grpc client -> gateway -> %s  Namer.GetName() = %q in %s, through the gateway (header %s: %s)\n",
		pad(r.GetName()), r.GetName(), ms(time.Since(start)), brpc.GatewayTargetHeader, short(p.ID))
	return nil
}

// connect dials the server as name, serving a Namer that answers name.
func connect(ctx context.Context, addr string, roots *x509.CertPool, name string) (*demoClient, error) {
	gs := grpc.NewServer(grpc.Creds(brpc.TransportCredentials()))
	greeterpb.RegisterNamerServer(gs, &namer{name: name})
	reflection.Register(gs) // for gateway callers that explore it (grpcurl)
	cc, err := brpc.Dial(ctx, "quic://"+addr,
		brpc.WithTLSConfig(&tls.Config{RootCAs: roots}),
		brpc.WithServer(gs),
		brpc.WithMetadata(metadata.Pairs("name", name)),
	)
	if err != nil {
		gs.Stop()
		return nil, err
	}
	return &demoClient{name: name, cc: cc, gs: gs, greeter: greeterpb.NewGreeterClient(cc)}, nil
}

// demoGreeter is the server's Greeter: it greets each caller by the name
// the caller's own Namer gives.
type demoGreeter struct {
	greeterpb.UnimplementedGreeterServer
	srv *brpc.Server[greeterpb.NamerClient]
	out *narrator
}

// SayHello calls the caller back through ClientFromContext to learn its name.
func (g *demoGreeter) SayHello(ctx context.Context, req *greeterpb.HelloRequest) (*greeterpb.HelloReply, error) {
	namer, err := g.srv.ClientFromContext(ctx)
	if err != nil {
		return nil, err
	}
	caller, _ := brpc.PeerFromContext(ctx)
	start := time.Now()
	r, err := namer.GetName(ctx, &greeterpb.NameRequest{})
	if err != nil {
		return nil, err
	}
	g.out.printf("  server -> %s  Namer.GetName() = %q in %s, from inside the handler, on ClientFromContext's stub for caller %s\n",
		pad(r.GetName()), r.GetName(), ms(time.Since(start)), short(caller.ID))
	return &greeterpb.HelloReply{Message: "Hello, " + r.GetName() + "!"}, nil
}

// namer is a client's Namer: it answers with the client's name.
type namer struct {
	greeterpb.UnimplementedNamerServer
	name string
}

// GetName answers with the client's name.
func (n *namer) GetName(context.Context, *greeterpb.NameRequest) (*greeterpb.NameReply, error) {
	return &greeterpb.NameReply{Name: n.name}, nil
}

// first returns the first value of key in md, or "".
func first(md metadata.MD, key string) string {
	if v := md.Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

// short abbreviates an ID for the narrative; the full IDs are printed once.
func short(id string) string {
	if len(id) > 8 {
		return id[:8] + "…"
	}
	return id
}

// pad aligns client names in the narrative.
func pad(name string) string { return fmt.Sprintf("%-6s", name) }

// ms formats a duration in milliseconds.
func ms(d time.Duration) string {
	return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
}

// showMetrics scrapes the demo's own /metrics endpoint, as Prometheus would,
// and prints brpc's series.
func showMetrics(ctx context.Context, out *narrator, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("scraping %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	out.printf("\nMetrics: what a Prometheus scrape of %s shows now (brpc series):\n", url)
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, "brpc_") && !strings.Contains(line, "_bucket{") {
			out.printf("  %s\n", line)
		}
	}
	return nil
}
