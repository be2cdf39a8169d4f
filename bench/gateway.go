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

// mCPU is the CPU time the process uses per call while the calls/s figure
// runs: every end of the path is in this process, so it is the whole
// path's cost, however little of the machine the run gets.
const mCPU = "cpu"

// gatewayRuns are the measurements of the gateway comparison; the calls/s
// one also gives mCPU.
var gatewayRuns = []string{mLat16, mCalls}

// gatewayFigures are the columns of the gateway tables.
var gatewayFigures = []string{mLat16, mCalls, mCPU}

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
	// gwDescribed is gwPlain on a second brpc server, built with the echo
	// service described to its gateway (brpc.WithGatewayServices), and
	// its own connected client: the same round compares the relays.
	gwDescribed = "gw-tcp-described"
)

var gatewayVariants = []string{gwDirect, gwPlain, gwTLS, gwDescribed}

// gatewayHop is, for each gateway variant, the plain grpc-go path that
// makes the same hop from the caller to the gateway's *grpc.Server.
var gatewayHop = map[string]string{
	gwPlain:     pathGRPCTCP,
	gwTLS:       pathGRPCTLS,
	gwDescribed: pathGRPCTCP,
}

var gatewayVariantLabels = map[string]string{
	gwDirect:    "direct, Client(id) stub",
	gwPlain:     "gateway, grpc-go over TCP (insecure)",
	gwTLS:       "gateway, grpc-go over TLS-TCP",
	gwDescribed: "gateway, grpc-go over TCP (insecure), echo service described",
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

func setupGateway(ctx context.Context, ca *certs.CA, transport string, describe bool) (_ *gatewayFixture, err error) {
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
	var sopts []brpc.ServerOption
	if describe {
		sopts = append(sopts, brpc.WithGatewayServices(&testpb.Echo_ServiceDesc))
	}
	b, err := startBRPCServer(ca, transport, sopts...)
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
	// The described relay: a second brpc server and client, so that the
	// first server's gateway stays the general relay.
	b2, err := startBRPCServer(ca, transport, brpc.WithGatewayServices(&testpb.Echo_ServiceDesc))
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, b2.stop)
	cgs2 := grpc.NewServer(grpcServerOptions()...)
	testpb.RegisterEchoServer(cgs2, echoServer{})
	cleanups = append(cleanups, cgs2.Stop)
	cc2, err := brpc.Dial(dctx, b2.target, brpc.WithTLSConfig(clientTLS(ca)), brpc.WithServer(cgs2))
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, func() { cc2.Close() })
	addr, stop, err := serveGatewayOn(b2.srv.Gateway(allowAllCalls), nil)
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, stop)
	gc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, func() { gc.Close() })
	target2 := metadata.Pairs(brpc.GatewayTargetHeader, cc2.ID())
	f.calls[gwDescribed] = gatewayCall{
		echo: testpb.NewEchoClient(gc),
		ctx:  func(ctx context.Context) context.Context { return metadata.NewOutgoingContext(ctx, target2) },
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

// The relay reference: a plain grpc-go echo server over loopback TCP
// without TLS, called directly and through brpc's relay.
const (
	refPlain     = "grpc"
	refRelay     = "relay"
	refDescribed = "relay-described"
)

var refVariants = []string{refPlain, refRelay, refDescribed}

var refVariantLabels = map[string]string{
	refPlain:     "plain grpc-go over TCP (insecure), one hop",
	refRelay:     "the same server through the relay (both hops as the one above)",
	refDescribed: "the same through the relay with the echo service described (its unary calls relayed as unary calls)",
}

// refKey is where a relay reference variant's samples are kept.
func refKey(variant string) string { return "relay-ref-" + variant }

// setupRelayRef runs brpc's relay (internal/gateway) in front of a plain
// grpc-go echo server: what a message-by-message relay built on grpc-go
// costs, brpc's sessions aside. The server is reachable directly too.
func setupRelayRef() (map[string]gatewayCall, func(), error) {
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
	// The relay's connection to the server and the direct caller's are
	// separate, as they would be on separate machines.
	up, err := grpc.NewClient(lis.Addr().String(), insecureCreds)
	if err != nil {
		closeAll()
		return nil, nil, err
	}
	cleanups = append(cleanups, func() { up.Close() })
	direct, err := grpc.NewClient(lis.Addr().String(), insecureCreds)
	if err != nil {
		closeAll()
		return nil, nil, err
	}
	cleanups = append(cleanups, func() { direct.Close() })
	target := metadata.Pairs(brpc.GatewayTargetHeader, "upstream")
	calls := map[string]gatewayCall{
		refPlain: {echo: testpb.NewEchoClient(direct), ctx: func(ctx context.Context) context.Context { return ctx }},
	}
	for variant, kinds := range map[string]map[string]gateway.Kind{
		refRelay:     nil,
		refDescribed: gateway.MethodKinds(&testpb.Echo_ServiceDesc),
	} {
		h := gateway.Handler(gateway.Config{
			TargetHeader: brpc.GatewayTargetHeader,
			Authorize:    allowAllCalls,
			Resolve:      func(string) (grpc.ClientConnInterface, error) { return up, nil },
			Kinds:        kinds,
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
		calls[variant] = gatewayCall{
			echo: testpb.NewEchoClient(gc),
			ctx:  func(ctx context.Context) context.Context { return metadata.NewOutgoingContext(ctx, target) },
		}
	}
	return calls, closeAll, nil
}

// measureRelayRefRound measures the relay reference for one round: a
// set-up per measurement, on which the variants take turns, in an order
// that rotates with the round.
func measureRelayRefRound(ctx context.Context, cfg *config, round int, record func(key, metric string, v float64)) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	for _, m := range gatewayRuns {
		calls, closeAll, err := setupRelayRef()
		if err != nil {
			return fmt.Errorf("setup: %w", err)
		}
		for i := range refVariants {
			variant := refVariants[(i+round)%len(refVariants)]
			err := measureGatewayCall(ctx, cfg, calls[variant], m, func(metric string, v float64) { record(refKey(variant), metric, v) })
			if err != nil {
				closeAll()
				return fmt.Errorf("%s %s: %w", variant, m, err)
			}
		}
		closeAll()
	}
	return nil
}

// measureGatewayCall takes measurement m on call c and records its
// figures: the latency, or the calls/s and the CPU time per call.
func measureGatewayCall(ctx context.Context, cfg *config, c gatewayCall, m string, record func(metric string, v float64)) error {
	switch m {
	case mLat16:
		d, err := measureLatency(c.ctx(ctx), c.echo, 16, cfg.warmCalls, cfg.calls)
		if err != nil {
			return err
		}
		record(mLat16, d.Seconds())
		return nil
	case mCalls:
		rate, cpu, err := measureCallRateCPU(c.ctx(ctx), c.echo, cfg.callers, 16, cfg.warmup, cfg.duration)
		if err != nil {
			return err
		}
		record(mCalls, rate)
		if cpu > 0 {
			record(mCPU, cpu.Seconds())
		}
		return nil
	}
	return fmt.Errorf("unknown figure %q", m)
}

// measureGatewayRound measures every gateway figure on one transport for
// one round: a fixture per figure, on which the variants take turns, in
// an order that rotates with the round so that none always goes first.
func measureGatewayRound(ctx context.Context, cfg *config, ca *certs.CA, transport string, round int, record func(key, metric string, v float64)) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	for _, m := range gatewayRuns {
		f, err := setupGateway(ctx, ca, transport, cfg.gwServices)
		if err != nil {
			return fmt.Errorf("setup: %w", err)
		}
		for i := range gatewayVariants {
			variant := gatewayVariants[(i+round)%len(gatewayVariants)]
			err := measureGatewayCall(ctx, cfg, f.calls[variant], m, func(metric string, v float64) {
				record(gatewayKey(transport, variant), metric, v)
			})
			if err != nil {
				f.close()
				return fmt.Errorf("%s %s: %w", variant, m, err)
			}
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
// the same hop, measured in the same round. Latencies and CPU times per
// call add up; so do, on a machine whose CPUs every call shares, the
// calls' CPU times, which sets the calls/s. The CPU time of a plain call
// is the relay reference's, whose hop is the insecure TCP one.
func (r *report) gatewayFloor(transport, variant, metric string) (float64, bool) {
	hop := gatewayHop[variant]
	if metric == mCPU {
		if variant != gwPlain && variant != gwDescribed {
			return 0, false
		}
		hop = refKey(refPlain)
	}
	d, g := r.samples[gatewayKey(transport, gwDirect)][metric], r.samples[hop][metric]
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

// gatewayCell formats one figure of a gateway table, with its ratios.
func gatewayCell(v float64, m string, ratios ...string) string {
	var s string
	switch m {
	case mCalls:
		s = fmt.Sprintf("%.0f", v)
	default:
		s = fmt.Sprintf("%.1f µs", v*1e6)
	}
	if len(ratios) > 0 {
		s += " (" + strings.Join(ratios, "; ") + ")"
	}
	return s
}

func (r *report) printGateway(w io.Writer) {
	fmt.Fprintf(w, "\nGateway against a direct call (one brpc server and one connected client per figure; the gateway's *grpc.Server listens on loopback TCP; ratios in parentheses against the direct call in the same round; \"floor\": the direct call plus a plain grpc-go call over the same hop in the same round, latencies and CPU times added, calls/s as the CPU times per call added; CPU: the process's CPU time per call while the calls/s figure ran, every end of the path included; echo service described to the gateway, -gateway-services: %v):\n\n", r.cfg.gwServices)
	r.gatewayHeader(w, "transport | call")
	for _, tr := range r.measuredGatewayTransports() {
		for _, variant := range gatewayVariants {
			key := gatewayKey(tr, variant)
			fmt.Fprintf(w, "| brpc %s | %s |", tr, gatewayVariantLabels[variant])
			for _, m := range gatewayFigures {
				v, ok := r.value(key, m)
				if !ok {
					fmt.Fprint(w, " not run |")
					continue
				}
				var ratios []string
				if variant != gwDirect {
					if q, ok := r.gatewayRatio(tr, variant, m); ok {
						ratios = append(ratios, fmt.Sprintf("%.2fx", q))
					}
					if q, ok := r.gatewayFloor(tr, variant, m); ok {
						ratios = append(ratios, fmt.Sprintf("floor %.2fx", q))
					}
				}
				fmt.Fprintf(w, " %s |", gatewayCell(v, m, ratios...))
			}
			fmt.Fprintln(w)
		}
	}
}

func (r *report) gatewayHeader(w io.Writer, first string) {
	fmt.Fprintf(w, "| %s |", first)
	for _, m := range gatewayFigures {
		fmt.Fprintf(w, " %s |", r.gatewayTitle(m))
	}
	fmt.Fprint(w, "\n|---|")
	if strings.Contains(first, "|") {
		fmt.Fprint(w, "---|")
	}
	for range gatewayFigures {
		fmt.Fprint(w, "---|")
	}
	fmt.Fprintln(w)
}

func (r *report) gatewayTitle(m string) string {
	if m == mCPU {
		return "CPU per call (process)"
	}
	return r.metricTitle(m)
}

// printRelayRef prints the relay in front of plain grpc-go against the
// same server called directly, when it ran.
func (r *report) printRelayRef(w io.Writer) {
	if _, ok := r.value(refKey(refRelay), mLat16); !ok {
		if _, ok := r.value(refKey(refRelay), mCalls); !ok {
			return
		}
	}
	fmt.Fprintf(w, "\nThe relay alone: brpc's gateway relay in front of a plain grpc-go server, both hops plain grpc-go over loopback TCP without TLS, against the same server called directly; ratios against the direct call in the same round (a relay that cost nothing would take 2.00x the latency and CPU and 0.50x the calls/s):\n\n")
	r.gatewayHeader(w, "path")
	for _, variant := range refVariants {
		fmt.Fprintf(w, "| %s |", refVariantLabels[variant])
		for _, m := range gatewayFigures {
			v, ok := r.value(refKey(variant), m)
			if !ok {
				fmt.Fprint(w, " not run |")
				continue
			}
			var ratios []string
			if variant != refPlain {
				if q, ok := r.ratioOf(refKey(variant), m, refKey(refPlain), m); ok {
					ratios = append(ratios, fmt.Sprintf("%.2fx", q))
				}
			}
			fmt.Fprintf(w, " %s |", gatewayCell(v, m, ratios...))
		}
		fmt.Fprintln(w)
	}
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
