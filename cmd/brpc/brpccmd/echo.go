package brpccmd

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/cmd/brpc/echopb"
)

// maxProbeCalls bounds the calls back one Probe.Reverse asks for, so that a
// client cannot keep the server calling for ever.
const maxProbeCalls = 100000

const echoServerDetails = `With -replica NAME and -etcd, the server is one replica of a cluster: etcd
records which replica holds which client, the gateway reaches the clients
of every replica, and the other replicas forward the calls for this one's
clients to its replica endpoint (-replica-addr), over mutual TLS with
certificates issued from the CA in -certs (or -replica-cert). -etcd needs
the build of the command in brpc's brpcetcd module, which requires etcd
as brpc's own module never does:

	cd brpcetcd && go run ./cmd/brpc echo-server -replica NAME -etcd HOST:PORT -certs DIR ...`

type echoServerConfig struct {
	addr     string
	certFile string
	keyFile  string
	caOut    string
	certsDir string
	duration time.Duration
	gateway  gatewayServeFlags
	cluster  clusterFlags
	// presence opens the presence of -etcd (Extensions.Presence).
	presence PresenceFunc
	// joinTimeout bounds joining the cluster; 0: joinTimeout.
	joinTimeout time.Duration
	idFromName  bool
}

func echoServerFlags(ext Extensions) (*flag.FlagSet, func(io.Writer) error) {
	var cfg echoServerConfig
	fs := flag.NewFlagSet("echo-server", flag.ContinueOnError)
	fs.StringVar(&cfg.addr, "addr", ":4433", "address to listen on, for QUIC (UDP) and TCP alike")
	fs.StringVar(&cfg.certFile, "cert", "", "server certificate (PEM); without it a throwaway CA and certificate are made")
	fs.StringVar(&cfg.keyFile, "key", "", "server key (PEM), with -cert")
	fs.StringVar(&cfg.caOut, "ca-out", "brpc-echo-ca.pem", "where to write the throwaway CA for clients (-ca of echo-client), without -cert and -certs")
	fs.StringVar(&cfg.certsDir, "certs", "", "keep a CA in this directory (made on first use: ca-key.pem, and ca.pem for clients to trust) and issue the server's certificates from it, "+
		"so that every echo-server started with the same directory is trusted by the same clients and, as replicas, by each other")
	fs.DurationVar(&cfg.duration, "duration", 0, "stop after this long (0: run until interrupted)")
	fs.BoolVar(&cfg.idFromName, "id-from-name", false, "admit each client under its \"name\" metadata (echo-client -name) as its ID, and one without a name under a random ID; "+
		"any client may then take any name, replacing the client that had it, so this is for trying things (without it: a random ID each)")
	cfg.gateway.register(fs)
	cfg.cluster.register(fs)
	cfg.presence = ext.Presence
	return fs, func(stdout io.Writer) error {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if (cfg.certFile == "") != (cfg.keyFile == "") {
			return &badUsage{"-cert and -key go together"}
		}
		if cfg.certsDir != "" && set["ca-out"] {
			return &badUsage{"-ca-out is for the throwaway CA; with -certs, clients trust " + filepath.Join(cfg.certsDir, caCertFile)}
		}
		if err := cfg.gateway.check(); err != nil {
			return err
		}
		if err := cfg.cluster.check(set, cfg.certsDir, cfg.presence); err != nil {
			return err
		}
		if cfg.duration < 0 {
			return &badUsage{fmt.Sprintf("-duration must not be negative, not %v", cfg.duration)}
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if cfg.duration > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, cfg.duration)
			defer cancel()
		}
		return echoServer(ctx, cfg, stdout)
	}
}

// echoServer serves the Echo service on QUIC and TCP on one port number and
// answers reverse probes, until ctx ends; with -replica, as a replica of a
// cluster.
func echoServer(ctx context.Context, cfg echoServerConfig, stdout io.Writer) error {
	var ca *dirCA
	if cfg.certsDir != "" {
		var err error
		if ca, err = openCertsDir(cfg.certsDir); err != nil {
			return err
		}
	}
	tlsConf, err := echoServerTLS(cfg, ca)
	if err != nil {
		return err
	}
	// Limits on what one client's calls can make the server hold
	// (docs/security.md): calls at once per HTTP/2 connection, and static
	// receive windows instead of grpc-go's BDP-sized ones.
	gs := grpc.NewServer(
		grpc.Creds(brpc.TransportCredentials()),
		grpc.MaxConcurrentStreams(16),
		grpc.InitialWindowSize(256<<10),
		grpc.InitialConnWindowSize(4<<20),
	)
	var mu sync.Mutex
	logEvent := func(ev brpc.PeerEvent) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(stdout, "%s %s client %s over %s from %v\n",
			time.Now().Format(time.TimeOnly), ev.Type, ev.Peer.ID, ev.Peer.Transport, ev.Peer.RemoteAddr)
	}
	say := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(stdout, format+"\n", args...)
	}
	opts := []brpc.ServerOption{
		brpc.WithPeerEvents(logEvent),
		// The same static windows on the calls to clients, which the
		// gateway's relayed calls ride on.
		brpc.WithGRPCDialOptions(grpc.WithInitialWindowSize(256<<10), grpc.WithInitialConnWindowSize(4<<20)),
	}
	if cfg.idFromName {
		opts = append(opts, brpc.WithAuthenticator(nameAsID))
	}
	var replica *replicaSetup
	if cfg.cluster.replica != "" {
		joined := func(self brpc.Replica) {
			say("brpc echo-server replica %s joined the cluster, its endpoint advertised at %s", self.Name, self.Addr)
		}
		timeout := cfg.joinTimeout
		if timeout == 0 {
			timeout = joinTimeout
		}
		replica, err = setUpReplica(cfg.cluster, ca, cfg.presence, timeout, joined)
		if err != nil {
			gs.Stop()
			return err
		}
		defer replica.presence.Close() // after the server has left the cluster
		opts = append(opts, brpc.WithCluster(replica.conf), brpc.WithClusterEvents(func(ev brpc.ClusterEvent) {
			if line := clusterEventLine(ev); line != "" {
				say("%s replica %s: %s", time.Now().Format(time.TimeOnly), cfg.cluster.replica, line)
			}
		}))
	}
	srv := brpc.NewServer(gs, echopb.NewEchoClient, opts...)
	echopb.RegisterEchoServer(gs, echoService{})
	echopb.RegisterProbeServer(gs, &probeService{srv: srv})

	qlis, tlis, err := listenBoth(cfg.addr, tlsConf)
	if err != nil {
		if replica != nil {
			replica.lis.Close()
		}
		gs.Stop()
		return err
	}
	gw, err := serveGateway(cfg.gateway, srv)
	if err != nil {
		qlis.Close()
		tlis.Close()
		if replica != nil {
			replica.lis.Close()
		}
		gs.Stop()
		return err
	}
	say("brpc echo-server listening on %s (QUIC and TCP)", qlis.Addr())
	if gw != nil {
		say("brpc echo-server gateway on %s (%s): the admin service brpc.admin.v1.Admin, and calls for a client named by the brpc-target header", gw.addr, gw.security)
	}
	if replica != nil {
		// Before Serve, which joins: the join's own line comes after.
		say("brpc echo-server replica %s: replica endpoint on %s, joining the cluster through etcd at %s", cfg.cluster.replica, replica.lis.Addr(), cfg.cluster.etcd)
	}
	serving := 2
	errs := make(chan error, 3)
	for _, l := range []brpc.Listener{qlis, tlis} {
		go func() { errs <- srv.Serve(l) }()
	}
	if replica != nil {
		serving++
		go func() { errs <- srv.ServeReplicas(replica.lis) }()
	}
	select {
	case <-ctx.Done():
	case err = <-errs:
		serving--
	}
	srv.GracefulStop()
	// The others end because of the stop (a join cut short says so): what
	// stopped the server is the error, if any.
	for ; serving > 0; serving-- {
		<-errs
	}
	gw.stop()
	say("brpc echo-server stopped")
	return err
}

// nameAsID admits a client under the name it connects with, so that it
// keeps its ID when it reconnects, to this server or to another replica.
func nameAsID(_ context.Context, info brpc.AuthInfo) (string, error) {
	if v := info.Metadata.Get("name"); len(v) > 0 && v[0] != "" {
		return v[0], nil
	}
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", status.Errorf(codes.Internal, "making an ID: %v", err)
	}
	return hex.EncodeToString(b), nil
}

// listenBoth listens for QUIC and TCP on one port number. When addr asks
// for any free port, the port QUIC got may be taken for TCP: another is
// tried then.
func listenBoth(addr string, tlsConf *tls.Config) (brpc.Listener, brpc.Listener, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, &badUsage{fmt.Sprintf("-addr %q: %v", addr, err)}
	}
	tries := 1
	if port == "0" || port == "" {
		tries = 10
	}
	for i := 1; ; i++ {
		qlis, err := brpc.ListenQUIC(addr, tlsConf)
		if err != nil {
			return nil, nil, err
		}
		tlis, err := brpc.ListenTCP(qlis.Addr().String(), tlsConf)
		if err == nil {
			return qlis, tlis, nil
		}
		qlis.Close()
		if i == tries || !errors.Is(err, syscall.EADDRINUSE) {
			return nil, nil, err
		}
	}
}

// echoServerTLS is the TLS the server shows its clients: -cert and -key,
// or a certificate issued from the CA of -certs, or else a throwaway one.
func echoServerTLS(cfg echoServerConfig, ca *dirCA) (*tls.Config, error) {
	if cfg.certFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.certFile, cfg.keyFile)
		if err != nil {
			return nil, err
		}
		return &tls.Config{Certificates: []tls.Certificate{cert}}, nil
	}
	host, _, err := net.SplitHostPort(cfg.addr)
	if err != nil {
		return nil, &badUsage{fmt.Sprintf("-addr %q: %v", cfg.addr, err)}
	}
	var names []string
	if host != "" {
		names = append(names, host)
	}
	if ca != nil {
		cert, err := ca.issue(names...)
		if err != nil {
			return nil, fmt.Errorf("issuing the server's certificate: %w", err)
		}
		return &tls.Config{Certificates: []tls.Certificate{cert}}, nil
	}
	cert, caPEM, err := throwawayCertificate(names...)
	if err != nil {
		return nil, fmt.Errorf("making a throwaway certificate: %w", err)
	}
	if err := os.WriteFile(cfg.caOut, caPEM, 0o644); err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}}, nil
}

// echoService serves Echo, on echo-server and on every echo-client alike.
type echoService struct {
	echopb.UnimplementedEchoServer
}

// Echo answers with what it got, and names the caller as brpc knows it.
func (echoService) Echo(ctx context.Context, r *echopb.EchoRequest) (*echopb.EchoResponse, error) {
	p, _ := brpc.PeerFromContext(ctx)
	return &echopb.EchoResponse{Message: r.GetMessage(), Payload: r.GetPayload(), PeerId: p.ID}, nil
}

// probeService serves Probe on echo-server.
type probeService struct {
	echopb.UnimplementedProbeServer
	srv *brpc.Server[echopb.EchoClient]
}

// Reverse calls the caller's Echo back over the caller's own connection and
// times each round trip.
func (h *probeService) Reverse(ctx context.Context, r *echopb.ReverseRequest) (*echopb.ReverseResponse, error) {
	if n := r.GetCount(); n < 1 || n > maxProbeCalls {
		return nil, status.Errorf(codes.InvalidArgument, "count must be between 1 and %d, not %d", maxProbeCalls, n)
	}
	back, err := h.srv.ClientFromContext(ctx)
	if err != nil {
		return nil, err
	}
	rtts := make([]int64, 0, r.GetCount())
	for range r.GetCount() {
		start := time.Now()
		if _, err := back.Echo(ctx, &echopb.EchoRequest{Payload: r.GetPayload()}); err != nil {
			return nil, err
		}
		rtts = append(rtts, time.Since(start).Nanoseconds())
	}
	return &echopb.ReverseResponse{RoundTripNanos: rtts}, nil
}

type echoClientConfig struct {
	target  string
	caFile  string
	name    string
	n       int
	size    int
	timeout time.Duration
	stay    bool
}

func echoClientFlags(Extensions) (*flag.FlagSet, func(io.Writer) error) {
	var cfg echoClientConfig
	fs := flag.NewFlagSet("echo-client", flag.ContinueOnError)
	fs.StringVar(&cfg.target, "target", "127.0.0.1:4433", "server: host:port (QUIC, falling back to TCP), quic://host:port or tcp://host:port")
	fs.StringVar(&cfg.caFile, "ca", "brpc-echo-ca.pem", "CA that signed the server's certificate (PEM); empty: the system's roots")
	fs.IntVar(&cfg.n, "n", 20, "round trips to time in each direction")
	fs.IntVar(&cfg.size, "size", 16, "payload bytes per call")
	fs.StringVar(&cfg.name, "name", "", "send this as the client's \"name\" metadata when connecting (shown by brpc peers)")
	fs.DurationVar(&cfg.timeout, "timeout", 30*time.Second, "give up on the report after this long")
	fs.BoolVar(&cfg.stay, "stay", false, "after the report, stay connected, serving Echo and reflection to the server and its gateway (brpc call, grpcurl), until interrupted")
	return fs, func(stdout io.Writer) error {
		if cfg.n < 1 || cfg.n > maxProbeCalls {
			return &badUsage{fmt.Sprintf("-n must be between 1 and %d, not %d", maxProbeCalls, cfg.n)}
		}
		if cfg.size < 0 || cfg.size > 4<<20-1024 {
			return &badUsage{fmt.Sprintf("-size must be between 0 and %d, not %d", 4<<20-1024, cfg.size)}
		}
		if cfg.timeout <= 0 {
			return &badUsage{fmt.Sprintf("-timeout must be positive, not %v", cfg.timeout)}
		}
		var stay <-chan struct{} // nil: do not stay
		if cfg.stay {
			sctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			stay = sctx.Done()
		}
		ctx, cancel := context.WithTimeout(context.Background(), cfg.timeout)
		defer cancel()
		return echoClient(ctx, cfg, stdout, stay)
	}
}

// echoClient connects, times round trips in both directions and reports
// within ctx; given a stay channel, it then stays connected until that is
// closed.
func echoClient(ctx context.Context, cfg echoClientConfig, stdout io.Writer, stay <-chan struct{}) error {
	tlsConf := &tls.Config{}
	if cfg.caFile != "" {
		pem, err := os.ReadFile(cfg.caFile)
		if err != nil {
			return err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("no certificate in %s", cfg.caFile)
		}
		tlsConf.RootCAs = pool
	}
	gs := grpc.NewServer(grpc.Creds(brpc.TransportCredentials()))
	echopb.RegisterEchoServer(gs, echoService{})
	// Reflection lets the server's gateway callers (brpc call, grpcurl)
	// discover the client's services.
	reflection.Register(gs)
	defer gs.Stop()

	opts := []brpc.DialOption{brpc.WithTLSConfig(tlsConf), brpc.WithServer(gs)}
	if cfg.name != "" {
		opts = append(opts, brpc.WithMetadata(metadata.Pairs("name", cfg.name)))
	}
	start := time.Now()
	cc, err := brpc.Dial(ctx, cfg.target, opts...)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", cfg.target, err)
	}
	defer cc.Close()
	connected := time.Since(start)
	echo := echopb.NewEchoClient(cc)
	payload := make([]byte, cfg.size)

	var rtts []time.Duration
	for i := 0; i < cfg.n+1; i++ {
		t0 := time.Now()
		if _, err := echo.Echo(ctx, &echopb.EchoRequest{Message: "ping", Payload: payload}); err != nil {
			return fmt.Errorf("forward call: %w", err)
		}
		if i > 0 { // the first call also sets up grpc-go's connection
			rtts = append(rtts, time.Since(t0))
		}
	}
	server, _ := cc.ServerPeer()
	r, err := echopb.NewProbeClient(cc).Reverse(ctx, &echopb.ReverseRequest{Count: int32(cfg.n), Payload: payload})
	if err != nil {
		return fmt.Errorf("reverse probe: %w", err)
	}
	reverse := make([]time.Duration, len(r.GetRoundTripNanos()))
	for i, ns := range r.GetRoundTripNanos() {
		reverse[i] = time.Duration(ns)
	}
	fmt.Fprintf(stdout, "brpc echo-client report for %s\n", cfg.target)
	fmt.Fprintf(stdout, "  transport:  %s (server %v)\n", server.Transport, server.RemoteAddr)
	fmt.Fprintf(stdout, "  client ID:  %s\n", cc.ID())
	fmt.Fprintf(stdout, "  connect:    %v (TLS and brpc handshake)\n", connected.Round(time.Microsecond))
	fmt.Fprintf(stdout, "  forward:    %s (client -> server, %d B)\n", summarize(rtts), cfg.size)
	fmt.Fprintf(stdout, "  reverse:    %s (server -> client, %d B)\n", summarize(reverse), cfg.size)
	if stay == nil {
		return nil
	}
	fmt.Fprintf(stdout, "brpc echo-client staying connected as %s; interrupt to stop\n", cc.ID())
	<-stay
	return nil
}

func summarize(rtts []time.Duration) string {
	if len(rtts) == 0 {
		return "no calls"
	}
	s := append([]time.Duration(nil), rtts...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	q := func(f float64) time.Duration { return s[int(f*float64(len(s)-1))].Round(time.Microsecond) }
	return fmt.Sprintf("%d calls, p50 %v, p90 %v, max %v", len(s), q(0.5), q(0.9), s[len(s)-1].Round(time.Microsecond))
}
