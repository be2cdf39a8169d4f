// Package greeter is the Greeter/Namer example of brpc: clients call the
// server's Greeter service, and the server calls back the Namer service that
// every client serves, both from inside a call (ClientFromContext) and on its
// own initiative (Peers and Client by ID).
//
// The two programs are in the server and client directories; they parse their
// flags and call RunServer and RunClient. The logic lives here, in a package a
// test can import, so that one test runs both sides in one process.
package greeter

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/brpcprom"
	"github.com/brpc-go/brpc/examples/greeter/greeterpb"
)

// Defaults shared by the programs and their flags.
const (
	// DefaultAddr is where the server listens and the client dials.
	DefaultAddr = "127.0.0.1:4433"
	// DefaultCAFile is where the server writes its CA certificate and where
	// the client reads it.
	DefaultCAFile = "greeter-ca.pem"
	// DefaultCallEvery is how often the server calls every connected client.
	DefaultCallEvery = 5 * time.Second
)

// Bounds on the calls the example makes, so that a peer that stops answering
// never hangs a program.
const (
	callTimeout     = 5 * time.Second
	dialTimeout     = 10 * time.Second
	shutdownTimeout = 5 * time.Second
)

// ServerConfig configures RunServer.
type ServerConfig struct {
	// Addr is the UDP address to listen on, e.g. "127.0.0.1:4433" or
	// "127.0.0.1:0" for any free port.
	Addr string
	// CAOut is the file the server writes its CA certificate to (PEM), for
	// clients to trust.
	CAOut string
	// CallEvery is how often the server lists its clients and calls each of
	// them by ID. Zero means DefaultCallEvery.
	CallEvery time.Duration
	// Ready, when set, is called with the bound address once the server
	// accepts clients.
	Ready func(addr net.Addr)
	// MetricsAddr, when set, is a TCP address on which brpc's Prometheus
	// metrics are served at /metrics, e.g. "127.0.0.1:9090".
	MetricsAddr string
}

// RunServer runs the greeter server until ctx is done, then stops it
// gracefully. It logs what it does to out.
func RunServer(ctx context.Context, cfg ServerConfig, out io.Writer) error {
	logger := log.New(out, "", log.Ltime)
	if cfg.CallEvery <= 0 {
		cfg.CallEvery = DefaultCallEvery
	}

	// A certificate from a throwaway CA that lives as long as this process
	// (certs.go). A real deployment brings its own certificates; clients only
	// need to trust the CA.
	cert, caPEM, err := throwawayCertificate(certNames(cfg.Addr)...)
	if err != nil {
		return fmt.Errorf("making a throwaway certificate: %w", err)
	}
	lis, err := brpc.ListenQUIC(cfg.Addr, &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		return err
	}
	// Written only once the address is ours, so that a second server that
	// cannot listen does not replace the CA of a running one.
	if err := os.WriteFile(cfg.CAOut, caPEM, 0o644); err != nil {
		lis.Close()
		return fmt.Errorf("writing the CA certificate: %w", err)
	}
	logger.Printf("wrote the CA certificate to %s (clients trust it with -ca)", cfg.CAOut)

	// The application's own grpc.Server: brpc feeds it the calls clients
	// make, with its interceptors and options intact. brpc's credentials let
	// its handlers see each caller's address and TLS state in
	// peer.FromContext, as grpc-go over TLS would show them. The limits are
	// those docs/security.md recommends: calls at once per HTTP/2
	// connection, and static receive windows instead of grpc-go's BDP-sized
	// ones, bound what one client's calls can make the server hold.
	gs := grpc.NewServer(
		grpc.Creds(brpc.TransportCredentials()),
		grpc.MaxConcurrentStreams(16),
		grpc.InitialWindowSize(256<<10),
		grpc.InitialConnWindowSize(4<<20),
	)
	greeter := &greeterService{log: logger}
	greeterpb.RegisterGreeterServer(gs, greeter)
	// Every connected client gets a NamerClient stub built on its session.
	var opts []brpc.ServerOption
	if cfg.MetricsAddr != "" {
		m := brpcprom.New()
		reg := prometheus.NewRegistry()
		reg.MustRegister(m)
		opts = append(opts, m.ServerOptions()...)
		url, stopMetrics, err := serveMetrics(cfg.MetricsAddr, reg)
		if err != nil {
			lis.Close()
			return err
		}
		defer stopMetrics()
		logger.Printf("metrics at %s", url)
	}
	srv := brpc.NewServer(gs, greeterpb.NewNamerClient, opts...)
	greeter.srv = srv

	logger.Printf("listening on quic://%s", lis.Addr())
	if cfg.Ready != nil {
		cfg.Ready(lis.Addr())
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()

	callCtx, stopCalling := context.WithCancel(ctx)
	calling := make(chan struct{})
	go func() {
		defer close(calling)
		callEveryClient(callCtx, srv, cfg.CallEvery, logger)
	}()

	var serveErr error
	serving := true
	select {
	case <-ctx.Done():
		logger.Printf("shutting down: waiting for calls in flight")
	case serveErr = <-served:
		serving = false
		logger.Printf("serving failed: %v", serveErr)
	}
	stopCalling()
	<-calling
	stopGracefully(srv, logger) // closes lis too
	if serving {
		serveErr = <-served
	}
	// ErrServerStopped: the stop came before Serve began, which is no failure.
	if serveErr != nil && !errors.Is(serveErr, brpc.ErrServerStopped) {
		return fmt.Errorf("serving: %w", serveErr)
	}
	return nil
}

// certNames returns the names, besides the loopback ones, that the server
// certificate must hold for clients to reach addr.
func certNames(addr string) []string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host == "" || host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && (ip.IsLoopback() || ip.IsUnspecified()) {
		return nil
	}
	return []string{host}
}

// stopGracefully lets the calls in flight finish, but stops hard if they
// take longer than shutdownTimeout.
func stopGracefully(srv *brpc.Server[greeterpb.NamerClient], logger *log.Logger) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.GracefulStop()
	}()
	t := time.NewTimer(shutdownTimeout)
	defer t.Stop()
	select {
	case <-done:
		logger.Printf("stopped")
	case <-t.C:
		logger.Printf("calls still running after %v: stopping now", shutdownTimeout)
		srv.Stop()
		<-done
	}
}

// greeterService serves Greeter. Each SayHello calls the caller back over
// the same connection to learn its name.
type greeterService struct {
	greeterpb.UnimplementedGreeterServer
	srv *brpc.Server[greeterpb.NamerClient]
	log *log.Logger
}

// SayHello greets the caller by the name its own Namer service gives.
func (g *greeterService) SayHello(ctx context.Context, req *greeterpb.HelloRequest) (*greeterpb.HelloReply, error) {
	// The caller's stub comes from the connection this call arrived on: a
	// client cannot make the server call anyone but itself.
	namer, err := g.srv.ClientFromContext(ctx)
	if err != nil {
		return nil, err
	}
	caller, _ := brpc.PeerFromContext(ctx)
	// Metadata, deadlines and status codes travel as in any gRPC call.
	ctx = metadata.AppendToOutgoingContext(ctx, "reason", "answering your SayHello")
	name, err := namer.GetName(ctx, &greeterpb.NameRequest{})
	if err != nil {
		g.log.Printf("SayHello from client %s: calling it back failed: %v", caller.ID, err)
		return nil, err
	}
	g.log.Printf("SayHello(%q) from client %s; called it back: its name is %q", req.GetGreeting(), caller.ID, name.GetName())
	return &greeterpb.HelloReply{
		Message: fmt.Sprintf("Hello, %s! (you said: %s)", name.GetName(), req.GetGreeting()),
	}, nil
}

// callEveryClient calls every connected client by ID, every interval, until
// ctx is done: calls the server starts on its own, not in answer to one.
func callEveryClient(ctx context.Context, srv *brpc.Server[greeterpb.NamerClient], every time.Duration, logger *log.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		peers := srv.Peers()
		if len(peers) > 0 {
			logger.Printf("calling the %d connected client(s) by ID", len(peers))
		}
		for _, p := range peers {
			if err := callClient(ctx, srv, p, logger); err != nil {
				if ctx.Err() != nil {
					return
				}
				logger.Printf("calling client %s: %v", p.ID, err)
			}
		}
	}
}

// callClient asks one client for its name, reaching it by its ID.
func callClient(ctx context.Context, srv *brpc.Server[greeterpb.NamerClient], p brpc.Peer, logger *log.Logger) error {
	namer, err := srv.Client(p.ID)
	if err != nil {
		return err // codes.NotFound: it left since Peers was read
	}
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "reason", "calling every client")
	start := time.Now()
	r, err := namer.GetName(ctx, &greeterpb.NameRequest{})
	if err != nil {
		return err
	}
	logger.Printf("called client %s (at %s, connected %s ago) by ID: its name is %q (%s)",
		p.ID, p.RemoteAddr, time.Since(p.ConnectedAt).Round(time.Second), r.GetName(), time.Since(start).Round(time.Microsecond))
	return nil
}
