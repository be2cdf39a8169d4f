package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/certs"
	"github.com/brpc-go/brpc/internal/gateway"
	"github.com/brpc-go/brpc/internal/testpb"
)

// mGateway names, for -metrics, the comparison of a call through
// Server.Gateway with the same call made directly on Client(id)'s stub.
const mGateway = "gateway"

// gatewayMetrics are the figures of the gateway comparison.
var gatewayMetrics = []string{mLat16, mCalls}

// The ways the gateway comparison reaches a connected client's echo
// service, all on one brpc server and one connected client.
const (
	// gwDirect calls Client(id)'s stub in the server's process: the
	// reverse call the gateway relays to, with nothing in front.
	gwDirect = "direct"
	// gwPlain calls through the gateway from a plain grpc-go client over
	// loopback TCP without TLS: the relay's own cost plus one hop.
	gwPlain = "gw-tcp"
	// gwTLS does the same over TLS, as a gateway facing other machines
	// is deployed.
	gwTLS = "gw-tls"
)

var gatewayVariants = []string{gwDirect, gwPlain, gwTLS}

// gatewayHop is, for each gateway variant, the plain grpc-go path that
// makes the same hop from the caller to the gateway's *grpc.Server.
var gatewayHop = map[string]string{
	gwPlain: pathGRPCTCP,
	gwTLS:   pathGRPCTLS,
}

var gatewayVariantLabels = map[string]string{
	gwDirect: "direct, Client(id) stub",
	gwPlain:  "gateway, grpc-go over TCP (insecure)",
	gwTLS:    "gateway, grpc-go over TLS-TCP",
}

// gatewayTransports are the brpc transports of the comparison, each with
// the reverse path whose selection in -paths enables it.
var gatewayTransports = []struct{ transport, path string }{
	{"quic", pathQUICReverse},
	{"tcp", pathTCPReverse},
}

// gatewayKey is where a variant's samples are kept in the report.
func gatewayKey(transport, variant string) string {
	return "gateway-" + transport + "-" + variant
}

// gatewayFixture is one brpc server with one connected client serving
// the echo service, reachable directly and through a gateway that listens
// on loopback TCP twice: once without and once with TLS.
type gatewayFixture struct {
	// calls holds, per variant, the stub to call and the context to call
	// it with (the gateway's carries the target header).
	calls map[string]gatewayCall
	close func()
}

type gatewayCall struct {
	echo testpb.EchoClient
	ctx  func(context.Context) context.Context
}

func allowAllCalls(context.Context, string, string) error { return nil }

func setupGateway(ctx context.Context, ca *certs.CA, transport string) (_ *gatewayFixture, err error) {
	var cleanups []func()
	closeAll := func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}
	defer func() {
		if err != nil {
			closeAll()
		}
	}()
	b, err := startBRPCServer(ca, transport)
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, b.stop)
	cgs := grpc.NewServer(grpcServerOptions()...)
	testpb.RegisterEchoServer(cgs, echoServer{})
	cleanups = append(cleanups, cgs.Stop)
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cc, err := brpc.Dial(dctx, b.target, brpc.WithTLSConfig(clientTLS(ca)), brpc.WithServer(cgs))
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, func() { cc.Close() })
	direct, err := b.srv.Client(cc.ID())
	if err != nil {
		return nil, err
	}
	f := &gatewayFixture{calls: map[string]gatewayCall{
		gwDirect: {echo: direct, ctx: func(ctx context.Context) context.Context { return ctx }},
	}}
	stls, err := serverTLS(ca)
	if err != nil {
		return nil, err
	}
	target := metadata.Pairs(brpc.GatewayTargetHeader, cc.ID())
	for _, v := range []struct {
		variant string
		sopts   []grpc.ServerOption
		creds   credentials.TransportCredentials
	}{
		{gwPlain, nil, insecure.NewCredentials()},
		{gwTLS, []grpc.ServerOption{grpc.Creds(credentials.NewTLS(stls))}, credentials.NewTLS(clientTLS(ca))},
	} {
		addr, stop, err := serveGatewayOn(b.srv.Gateway(allowAllCalls), v.sopts)
		if err != nil {
			return nil, err
		}
		cleanups = append(cleanups, stop)
		gc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(v.creds))
		if err != nil {
			return nil, err
		}
		cleanups = append(cleanups, func() { gc.Close() })
		// The header goes into the context once, so that no call pays for
		// building it.
		f.calls[v.variant] = gatewayCall{
			echo: testpb.NewEchoClient(gc),
			ctx:  func(ctx context.Context) context.Context { return metadata.NewOutgoingContext(ctx, target) },
		}
	}
	f.close = closeAll
	return f, nil
}

// serveGatewayOn runs a *grpc.Server whose only handler is the gateway on
// a loopback TCP listener.
func serveGatewayOn(h grpc.StreamHandler, sopts []grpc.ServerOption) (string, func(), error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	gs := grpc.NewServer(append(append(grpcServerOptions(), sopts...), grpc.UnknownServiceHandler(h))...)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = gs.Serve(lis)
	}()
	return lis.Addr().String(), func() { gs.Stop(); <-served }, nil
}

// relayRefKey is where the samples of the relay in front of plain grpc-go
// are kept.
const relayRefKey = "gateway-relay-grpc"

// setupRelayRef runs brpc's relay (internal/gateway) in front of a plain
// grpc-go echo server, both hops over loopback TCP without TLS: what a
// message-by-message relay built on grpc-go costs, brpc's sessions aside.
func setupRelayRef() (*gatewayCall, func(), error) {
	var cleanups []func()
	closeAll := func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	gs := grpc.NewServer(grpcServerOptions()...)
	testpb.RegisterEchoServer(gs, echoServer{})
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = gs.Serve(lis)
	}()
	cleanups = append(cleanups, func() { gs.Stop(); <-served })
	insecureCreds := grpc.WithTransportCredentials(insecure.NewCredentials())
	up, err := grpc.NewClient(lis.Addr().String(), insecureCreds)
	if err != nil {
		closeAll()
		return nil, nil, err
	}
	cleanups = append(cleanups, func() { up.Close() })
	h := gateway.Handler(gateway.Config{
		TargetHeader: brpc.GatewayTargetHeader,
		Authorize:    allowAllCalls,
		Resolve:      func(string) (grpc.ClientConnInterface, error) { return up, nil },
	})
	addr, stop, err := serveGatewayOn(h, nil)
	if err != nil {
		closeAll()
		return nil, nil, err
	}
	cleanups = append(cleanups, stop)
	gc, err := grpc.NewClient(addr, insecureCreds)
	if err != nil {
		closeAll()
		return nil, nil, err
	}
	cleanups = append(cleanups, func() { gc.Close() })
	target := metadata.Pairs(brpc.GatewayTargetHeader, "upstream")
	return &gatewayCall{
		echo: testpb.NewEchoClient(gc),
		ctx:  func(ctx context.Context) context.Context { return metadata.NewOutgoingContext(ctx, target) },
	}, closeAll, nil
}

// measureRelayRefRound measures the relay reference's figures for one
// round, each on a fresh set-up.
func measureRelayRefRound(ctx context.Context, cfg *config, record func(key, metric string, v float64)) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	for _, m := range gatewayMetrics {
		c, closeAll, err := setupRelayRef()
		if err != nil {
			return fmt.Errorf("setup: %w", err)
		}
		v, err := measureGatewayCall(ctx, cfg, *c, m)
		closeAll()
		if err != nil {
			return fmt.Errorf("%s: %w", m, err)
		}
		record(relayRefKey, m, v)
	}
	return nil
}

// measureGatewayCall measures figure m on call c.
func measureGatewayCall(ctx context.Context, cfg *config, c gatewayCall, m string) (float64, error) {
	switch m {
	case mLat16:
		d, err := measureLatency(c.ctx(ctx), c.echo, 16, cfg.warmCalls, cfg.calls)
		return d.Seconds(), err
	case mCalls:
		return measureCallRate(c.ctx(ctx), c.echo, cfg.callers, 16, cfg.warmup, cfg.duration)
	}
	return 0, fmt.Errorf("unknown figure %q", m)
}

// measureGatewayRound measures every gateway figure on one transport for
// one round: a fixture per figure, on which the variants take turns, in
// an order that rotates with the round so that none always goes first.
func measureGatewayRound(ctx context.Context, cfg *config, ca *certs.CA, transport string, round int, record func(key, metric string, v float64)) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	for _, m := range gatewayMetrics {
		f, err := setupGateway(ctx, ca, transport)
		if err != nil {
			return fmt.Errorf("setup: %w", err)
		}
		for i := range gatewayVariants {
			variant := gatewayVariants[(i+round)%len(gatewayVariants)]
			v, err := measureGatewayCall(ctx, cfg, f.calls[variant], m)
			if err != nil {
				f.close()
				return fmt.Errorf("%s %s: %w", variant, m, err)
			}
			record(gatewayKey(transport, variant), m, v)
		}
		f.close()
	}
	return nil
}

// measuredGatewayTransports lists the transports the gateway comparison
// ran on.
func (r *report) measuredGatewayTransports() []string {
	var out []string
	for _, t := range gatewayTransports {
		if len(r.samples[gatewayKey(t.transport, gwDirect)][mLat16])+len(r.samples[gatewayKey(t.transport, gwDirect)][mCalls]) > 0 {
			out = append(out, t.transport)
		}
	}
	return out
}

// gatewayRatio is a gateway variant's figure over the direct call's, taken
// within each round.
func (r *report) gatewayRatio(transport, variant, metric string) (float64, bool) {
	return r.ratioOf(gatewayKey(transport, variant), metric, gatewayKey(transport, gwDirect), metric)
}

// gatewayFloor is, per round, what a relay that cost nothing would reach
// against the direct call: the direct call plus a plain grpc-go call over
// the same hop, measured in the same round. For latency the two add up;
// for calls/s, on a machine whose CPUs every call shares, their CPU times
// per call do.
func (r *report) gatewayFloor(transport, variant, metric string) (float64, bool) {
	d, g := r.samples[gatewayKey(transport, gwDirect)][metric], r.samples[gatewayHop[variant]][metric]
	if len(d) == 0 || len(d) != len(g) {
		return 0, false
	}
	q := make([]float64, 0, len(d))
	for i := range d {
		if d[i] == 0 || g[i] == 0 {
			return 0, false
		}
		switch metric {
		case mCalls:
			q = append(q, g[i]/(d[i]+g[i]))
		default:
			q = append(q, (d[i]+g[i])/d[i])
		}
	}
	return median(q)
}

func (r *report) printGateway(w io.Writer) {
	fmt.Fprintf(w, "\nGateway against a direct call (one brpc server and one connected client per figure; the gateway's *grpc.Server listens on loopback TCP; ratios in parentheses against the direct call in the same round; \"floor\": the direct call plus a plain grpc-go call over the same hop in the same round, latencies added, calls/s as CPU time per call added):\n\n")
	fmt.Fprintf(w, "| transport | call | %s | %s |\n|---|---|---|---|\n", r.metricTitle(mLat16), r.metricTitle(mCalls))
	for _, tr := range r.measuredGatewayTransports() {
		for _, variant := range gatewayVariants {
			key := gatewayKey(tr, variant)
			cells := make([]string, 0, len(gatewayMetrics))
			for _, m := range gatewayMetrics {
				v, ok := r.value(key, m)
				if !ok {
					cells = append(cells, "not run")
					continue
				}
				s := formatValue(m, v)
				if m == mCalls {
					s = fmt.Sprintf("%.0f", v)
				}
				if variant != gwDirect {
					var ratios []string
					if q, ok := r.gatewayRatio(tr, variant, m); ok {
						ratios = append(ratios, fmt.Sprintf("%.2fx", q))
					}
					if q, ok := r.gatewayFloor(tr, variant, m); ok {
						ratios = append(ratios, fmt.Sprintf("floor %.2fx", q))
					}
					if len(ratios) > 0 {
						s += " (" + strings.Join(ratios, "; ") + ")"
					}
				}
				cells = append(cells, s)
			}
			fmt.Fprintf(w, "| brpc %s | %s | %s | %s |\n", tr, gatewayVariantLabels[variant], cells[0], cells[1])
		}
	}
}

// printRelayRef prints the relay in front of plain grpc-go against one
// plain grpc-go call over TCP, when both ran.
func (r *report) printRelayRef(w io.Writer) {
	cells := make([]string, 0, len(gatewayMetrics))
	for _, m := range gatewayMetrics {
		v, ok := r.value(relayRefKey, m)
		if !ok {
			return
		}
		s := formatValue(m, v)
		if m == mCalls {
			s = fmt.Sprintf("%.0f", v)
		}
		if q, ok := r.ratioOf(relayRefKey, m, pathGRPCTCP, m); ok {
			s += fmt.Sprintf(" (%.2fx)", q)
		}
		cells = append(cells, s)
	}
	fmt.Fprintf(w, "\nThe relay alone: brpc's gateway relay in front of a plain grpc-go server, both hops plain grpc-go over loopback TCP without TLS; ratios against one plain grpc-go TCP call in the same round (a relay that cost nothing would take 2.00x the latency and 0.50x the calls/s on 2 shared CPUs):\n\n")
	fmt.Fprintf(w, "| path | %s | %s |\n|---|---|---|\n", r.metricTitle(mLat16), r.metricTitle(mCalls))
	fmt.Fprintf(w, "| relay in front of grpc-go TCP | %s | %s |\n", cells[0], cells[1])
}

// gatewayTargets evaluates the gateway's targets: p50 at most 1.3x and
// calls/s at least 0.7x of the direct call.
func (r *report) gatewayTargets() []targetRow {
	var out []targetRow
	for _, tr := range r.measuredGatewayTransports() {
		for _, variant := range gatewayVariants[1:] {
			path := "brpc " + tr + ", " + gatewayVariantLabels[variant]
			if q, ok := r.gatewayRatio(tr, variant, mLat16); ok {
				out = append(out, targetRow{"gateway unary " + metricTitles[mLat16] + " latency, of direct", path,
					fmt.Sprintf("%.2fx", q), "≤ 1.30x", verdict(q <= 1.3)})
			}
			if q, ok := r.gatewayRatio(tr, variant, mCalls); ok {
				out = append(out, targetRow{"gateway " + r.metricTitle(mCalls) + ", of direct", path,
					fmt.Sprintf("%.2fx", q), "≥ 0.70x", verdict(q >= 0.7)})
			}
		}
	}
	return out
}
