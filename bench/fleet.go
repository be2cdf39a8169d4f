package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/certs"
	"github.com/brpc-go/brpc/internal/testpb"
)

// fleetCommand is the subcommand that measures a used fleet: fan-out with
// Server.FanOut (cold and warm), a reconnect storm after a server restart
// and the connect rate, each against plain grpc-go in the same run.
const fleetCommand = "fleet"

// fleetChildCommand is the hidden subcommand of the process that holds the
// fleet's clients.
const fleetChildCommand = "fleet-child"

// Fleet setups: the brpc servers, plain grpc-go over TLS (the baseline of
// the connect rate and of the per-call CPU figures) and over insecure TCP
// (a new HTTP/2 connection without TLS, as brpc's reverse connections are).
const fleetGRPCTCP = "grpc-go-tcp"

var allFleet = []string{idleQUIC, idleTCP, idleGRPC, fleetGRPCTCP}

type fleetConfig struct {
	n           int
	dialers     int
	kinds       []string
	parts       map[string]bool
	concurrency int
	resume      bool
	jitter      float64
	baseDelay   time.Duration
	probeRate   int
	maxPending  int
	slots       int
	// windowPerClient and maxWindow are the servers' WithReconnectWindow;
	// clientMaxWindow the clients' WithMaxReconnectWindow.
	windowPerClient time.Duration
	maxWindow       time.Duration
	clientMaxWindow time.Duration
	cpuprofile      string
	// childProfile is -child-cpuprofile: the child's CPU profile prefix.
	childProfile string
	// perfEvents is -perf: perf stat events counted on both processes
	// during each fan-out.
	perfEvents []string
	// appWindows and revWindows are -app-windows and -rev-windows.
	appWindows, revWindows bool
	// fanouts is how many fan-outs run (-fanouts), the first cold;
	// warmPause is the pause before each warm one after the first.
	fanouts   int
	warmPause time.Duration
}

// Parts of a fleet run, as named by -parts.
const (
	partFanout = "fanout"
	partStorm  = "storm"
)

func fleetMain(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(fleetCommand, flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &fleetConfig{parts: map[string]bool{}}
	fs.IntVar(&c.n, "n", 10000, "clients, held by a child process")
	fs.IntVar(&c.dialers, "dialers", 32, "concurrent dialers connecting the clients")
	kinds := fs.String("kinds", strings.Join(allFleet, ","), "comma-separated setups: "+strings.Join(allFleet, ","))
	parts := fs.String("parts", partFanout+","+partStorm, "comma-separated parts for the brpc setups: fanout (Server.FanOut twice), storm (a server restart); the connect rate is always measured, and alone with -parts ''")
	fs.IntVar(&c.concurrency, "concurrency", 0, "FanOutOptions.Concurrency, and the goroutines making grpc-go's warm calls (0: brpc.DefaultFanOutConcurrency)")
	fs.BoolVar(&c.resume, "resume", false, "storm: clients keep a tls.ClientSessionCache, and the restarted server the same session ticket key, so that reconnects resume TLS sessions")
	fs.Float64Var(&c.jitter, "jitter", backoff.DefaultConfig.Jitter, "storm: the clients' reconnect backoff jitter (WithConnectBackoff)")
	fs.DurationVar(&c.baseDelay, "base-delay", backoff.DefaultConfig.BaseDelay, "storm: the clients' reconnect backoff base delay (WithConnectBackoff)")
	fs.IntVar(&c.probeRate, "probe-rate", 200, "storm: calls per second the clients already back make while the others reconnect")
	fs.IntVar(&c.maxPending, "max-pending", brpc.DefaultMaxPendingHandshakes, "the brpc servers' WithMaxPendingHandshakes")
	fs.IntVar(&c.slots, "max-handshaking", brpc.DefaultMaxConcurrentHandshakes, "the brpc servers' WithMaxConcurrentHandshakes")
	fs.DurationVar(&c.windowPerClient, "window-per-client", brpc.DefaultReconnectWindowPerClient, "storm: the servers' WithReconnectWindow per client (0: no window announced)")
	fs.DurationVar(&c.maxWindow, "max-window", brpc.DefaultMaxReconnectWindow, "storm: the servers' WithReconnectWindow maximum")
	fs.DurationVar(&c.clientMaxWindow, "client-max-window", brpc.DefaultMaxReconnectWindow, "storm: the clients' WithMaxReconnectWindow (0: ignore the announced window)")
	fs.StringVar(&c.cpuprofile, "cpuprofile", "", "write CPU profiles of the server while the clients are idle to PREFIX-<setup>-idle.pprof, during each fan-out to PREFIX-<setup>-cold.pprof and PREFIX-<setup>-warm.pprof, and during the storm's Stop to PREFIX-<setup>-stop.pprof, and while the clients connect to PREFIX-<setup>-connect.pprof")
	fs.StringVar(&c.childProfile, "child-cpuprofile", "", "write CPU profiles of the client process during each fan-out to PREFIX-<setup>-cold-child.pprof and PREFIX-<setup>-warm-child.pprof, and while it connects to PREFIX-<setup>-connect-child.pprof")
	fs.BoolVar(&c.appWindows, "app-windows", false, "the application's *grpc.Servers (the server's and the clients') get the static HTTP/2 windows docs/security.md recommends (grpc.InitialWindowSize 256 KiB, grpc.InitialConnWindowSize 4 MiB), which switch grpc-go's BDP estimation off")
	fs.BoolVar(&c.revWindows, "rev-windows", false, "the server's reverse connections get the same static windows, through WithGRPCDialOptions")
	fs.IntVar(&c.fanouts, "fanouts", 2, "fan-outs (grpc-go: rounds of calls) in a row, the first cold; the table shows the first and the last")
	fs.DurationVar(&c.warmPause, "warm-pause", 0, "pause before each warm fan-out after the first (sessions that have been quiet a while); the log reports each pause's CPU and packets per second")
	perf := fs.String("perf", "", "comma-separated perf stat events (e.g. raw_syscalls:sys_enter,syscalls:sys_enter_sendmsg) counted on each process during each fan-out and reported per call; needs perf(1)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *perf != "" {
		c.perfEvents = strings.Split(*perf, ",")
	}
	if c.n < 1 || c.fanouts < 2 || c.warmPause < 0 || c.dialers < 1 || c.concurrency < 0 || c.jitter < 0 || c.jitter > 1 || c.baseDelay <= 0 || c.probeRate < 1 ||
		c.windowPerClient < 0 || c.maxWindow < 0 || c.clientMaxWindow < 0 {
		return errors.New("fleet: counts and delays must be positive, jitter within [0, 1]")
	}
	for _, k := range strings.Split(*kinds, ",") {
		if !slices.Contains(allFleet, k) {
			return fmt.Errorf("unknown setup %q (known: %s)", k, strings.Join(allFleet, ","))
		}
		c.kinds = append(c.kinds, k)
	}
	for _, p := range strings.Split(*parts, ",") {
		if p == "" && *parts == "" {
			continue // the connect rate alone
		}
		if p != partFanout && p != partStorm {
			return fmt.Errorf("unknown part %q (known: fanout, storm)", p)
		}
		c.parts[p] = true
	}
	if c.concurrency == 0 {
		c.concurrency = brpc.DefaultFanOutConcurrency
	}
	fleetMaxPending = c.maxPending
	fleetAppWindows, fleetRevWindows = c.appWindows, c.revWindows
	fleetWindow = brpc.WithReconnectWindow(c.windowPerClient, c.maxWindow)
	fleetSlots = c.slots
	ca, err := certs.NewCA()
	if err != nil {
		return err
	}
	logf := func(format string, a ...any) { fmt.Fprintf(stderr, format+"\n", a...) }
	started, load0 := time.Now(), loadAvg()
	var results []*fleetResult
	for _, kind := range c.kinds {
		logf("fleet %s: %d clients", kind, c.n)
		r, err := measureFleet(ca, c, kind, logf)
		if err != nil {
			return fmt.Errorf("fleet %s: %w", kind, err)
		}
		results = append(results, r)
	}
	printFleet(stdout, c, results, started, load0)
	return nil
}

// fleetResult is what one setup measured.
type fleetResult struct {
	kind        string
	connectRate float64
	// CPU time per client while they connected, of the server's process
	// and of the clients' (for grpc-go: a new connection and one call).
	connectServerCPU, connectClientCPU time.Duration
	// idleCPU is the server's CPU seconds per second while the clients
	// are connected and idle (keepalives).
	idleCPU    float64
	cold, warm fanoutFigure
	storm      *stormFigure
}

// fanoutFigure is one fan-out: brpc's Server.FanOut, or for grpc-go one
// forward call from every client.
type fanoutFigure struct {
	took                 time.Duration
	errors               int
	serverCPU, clientCPU time.Duration // per call
	// net is what the loopback carried per call meanwhile, machine-wide
	// (/proc/net/snmp): UDP datagrams in and out, TCP segments in and out.
	net netCounters
	// perf is each -perf event's count per call, of the server's process
	// and of the child's.
	perf []perfCount
}

// perfCount is one perf event's count per call on both processes.
type perfCount struct {
	event          string
	server, client float64
}

type stormFigure struct {
	welcomed   int             // clients back (all, unless back is -1)
	stopTook   time.Duration   // the old server's Stop
	stopCPU    time.Duration   // the server's CPU per client during Stop
	back       time.Duration   // from the restart to the last client welcomed; -1: not all within 120 s
	quantiles  []time.Duration // from the restart to 50, 90, 99 % welcomed
	rejected   int64           // handshakes the new server refused
	resumed    int64           // clients whose TLS session was resumed
	serverCPU  time.Duration   // the new server's CPU per client, until all are back
	probeOK    int
	probeFail  int
	p50, p99   time.Duration
	probeMax   time.Duration
	notReady   int // clients not Ready in the child once all were back
	shutDown   int // clients that gave up (Shutdown)
	clientsCPU time.Duration
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// fleetServer is a brpc server that can be restarted on the same address.
type fleetServer struct {
	srv     *brpc.Server[testpb.EchoClient]
	served  chan struct{}
	addr    string
	welcome atomic.Int64
	refused atomic.Int64
	resumed atomic.Int64 // TLS sessions resumed by admitted clients
	ids     atomic.Int64
	mu      sync.Mutex
	times   []time.Time // when each client was welcomed
}

// fleetMaxPending is -max-pending.
var fleetMaxPending = brpc.DefaultMaxPendingHandshakes

// fleetAppWindows and fleetRevWindows are -app-windows and -rev-windows.
var fleetAppWindows, fleetRevWindows bool

// Static HTTP/2 windows, as docs/security.md recommends.
const (
	fleetStreamWindow = 256 << 10
	fleetConnWindow   = 4 << 20
)

// fleetServerOptions are the options of the fleet's *grpc.Servers.
func fleetServerOptions() []grpc.ServerOption {
	opts := grpcServerOptions()
	if fleetAppWindows {
		opts = append(opts, grpc.InitialWindowSize(fleetStreamWindow), grpc.InitialConnWindowSize(fleetConnWindow))
	}
	return opts
}

// fleetSlots is -max-handshaking.
var fleetSlots = brpc.DefaultMaxConcurrentHandshakes

// fleetWindow is -window-per-client and -max-window.
var fleetWindow = brpc.WithReconnectWindow(brpc.DefaultReconnectWindowPerClient, brpc.DefaultMaxReconnectWindow)

func startFleetServer(stls *tls.Config, transport, addr string) (*fleetServer, error) {
	listen := brpc.ListenQUIC
	if transport == "tcp" {
		listen = brpc.ListenTCP
	}
	lis, err := listen(addr, stls)
	if err != nil {
		return nil, err
	}
	gs := grpc.NewServer(fleetServerOptions()...)
	testpb.RegisterEchoServer(gs, echoServer{})
	f := &fleetServer{served: make(chan struct{}), addr: lis.Addr().String()}
	var extra []brpc.ServerOption
	if fleetRevWindows {
		extra = append(extra, brpc.WithGRPCDialOptions(grpc.WithInitialWindowSize(fleetStreamWindow), grpc.WithInitialConnWindowSize(fleetConnWindow)))
	}
	f.srv = brpc.NewServer(gs, testpb.NewEchoClient, append(extra,
		// Long enough that the second fan-out finds every connection open.
		brpc.WithReverseIdleTimeout(10*time.Minute),
		brpc.WithMaxPendingHandshakes(fleetMaxPending),
		fleetWindow,
		brpc.WithMaxConcurrentHandshakes(fleetSlots),
		brpc.WithAuthenticator(func(_ context.Context, info brpc.AuthInfo) (string, error) {
			if info.TLS.DidResume {
				f.resumed.Add(1)
			}
			return "c" + strconv.FormatInt(f.ids.Add(1), 10), nil
		}),
		brpc.WithPeerEvents(func(ev brpc.PeerEvent) {
			switch ev.Type {
			case brpc.PeerConnected:
				f.welcome.Add(1)
				f.mu.Lock()
				f.times = append(f.times, time.Now())
				f.mu.Unlock()
			case brpc.PeerRejected:
				f.refused.Add(1)
			}
		}))...)
	go func() {
		defer close(f.served)
		_ = f.srv.Serve(lis)
	}()
	return f, nil
}

func (f *fleetServer) stop() {
	f.srv.Stop()
	<-f.served
}

// waitWelcomed waits until n clients were welcomed.
func (f *fleetServer) waitWelcomed(ctx context.Context, n int64) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for f.welcome.Load() < n {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d clients welcomed, want %d: %w", f.welcome.Load(), n, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

func measureFleet(ca *certs.CA, c *fleetConfig, kind string, logf func(string, ...any)) (*fleetResult, error) {
	ctx := context.Background()
	res := &fleetResult{kind: kind}
	stls, err := serverTLS(ca)
	if err != nil {
		return nil, err
	}
	// A fixed ticket key: a restarted server still resumes the TLS
	// sessions of the one before it, as servers behind one key do.
	if _, err := rand.Read(stls.SessionTicketKey[:]); err != nil {
		return nil, err
	}
	var (
		target string
		fs     *fleetServer
		stop   func()
	)
	switch kind {
	case idleQUIC, idleTCP:
		transport := strings.TrimPrefix(kind, "brpc-")
		fs, err = startFleetServer(stls, transport, "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		target = transport + "://" + fs.addr
		stop = func() { fs.stop() }
	default:
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		var opts []grpc.ServerOption
		if kind == idleGRPC {
			opts = append(opts, grpc.Creds(credentials.NewTLS(stls)))
		}
		gs := grpc.NewServer(opts...)
		testpb.RegisterEchoServer(gs, echoServer{})
		served := make(chan struct{})
		go func() {
			defer close(served)
			_ = gs.Serve(lis)
		}()
		target = lis.Addr().String()
		stop = func() { gs.Stop(); <-served }
	}
	defer func() { stop() }()

	stopConnectProfile := func() {}
	if c.cpuprofile != "" {
		if stopConnectProfile, err = startCPUProfile(c.cpuprofile + "-" + kind + "-connect.pprof"); err != nil {
			return nil, err
		}
	}
	cpu0, net0 := cpuTime(), readNetCounters()
	ch, err := startFleetChild(ca, c, kind, target)
	if err != nil {
		stopConnectProfile()
		return nil, err
	}
	defer ch.stop()
	if fs != nil {
		wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		err := fs.waitWelcomed(wctx, int64(c.n))
		cancel()
		if err != nil {
			stopConnectProfile()
			return nil, err
		}
	}
	stopConnectProfile()
	res.connectRate = float64(c.n) / ch.connectTime.Seconds()
	res.connectServerCPU = (cpuTime() - cpu0) / time.Duration(c.n)
	res.connectClientCPU = ch.connectCPU / time.Duration(c.n)
	logf("  connected at %.0f/s; CPU per client: server %v, clients %v; per client on the loopback: %s", res.connectRate, res.connectServerCPU, res.connectClientCPU, readNetCounters().sub(net0).per(c.n))

	// What the server spends with nothing to do but its clients'
	// keepalives, so that the fan-outs' CPU can be read net of it.
	runtime.GC()
	stopProfile := func() {}
	if c.cpuprofile != "" {
		if stopProfile, err = startCPUProfile(c.cpuprofile + "-" + kind + "-idle.pprof"); err != nil {
			return nil, err
		}
	}
	idle0, net0, t0 := cpuTime(), readNetCounters(), time.Now()
	time.Sleep(3 * time.Second)
	res.idleCPU = float64(cpuTime()-idle0) / float64(time.Since(t0))
	idleNet, idleTook := readNetCounters().sub(net0), time.Since(t0).Seconds()
	stopProfile()
	logf("  server CPU with the clients idle: %.1f ms/s; on the loopback per second: UDP datagrams in %.0f out %.0f, TCP segments in %.0f out %.0f",
		res.idleCPU*1e3, idleNet.udpIn/idleTook, idleNet.udpOut/idleTook, idleNet.tcpIn/idleTook, idleNet.tcpOut/idleTook)
	if fs == nil || c.parts[partFanout] {
		figs := []*fanoutFigure{&res.cold}
		for range c.fanouts - 1 {
			// Each warm fan-out overwrites the one before: the table shows
			// the last, the log every one.
			figs = append(figs, &res.warm)
		}
		for i, fig := range figs {
			if i > 1 && c.warmPause > 0 {
				quiet, err := ch.quietSpell(c.warmPause)
				if err != nil {
					return nil, err
				}
				logf("  quiet for %v before fan-out %d: %s", c.warmPause, i+1, quiet)
			}
			var err error
			if fs != nil {
				*fig, err = fleetFanOut(ctx, fs, ch, c, kind, i == 0)
			} else {
				*fig, err = ch.forwardCalls(c.concurrency, c.n)
			}
			if err != nil {
				return nil, err
			}
			logf("  %s %d: %v, %d errors; CPU per call: server %v, clients %v; per call on the loopback: %s", map[bool]string{true: "fan-out", false: "calls"}[fs != nil], i+1,
				fig.took.Round(time.Millisecond), fig.errors, fig.serverCPU, fig.clientCPU, fig.net)
			for _, pc := range fig.perf {
				logf("    %s per call: server %.2f, clients %.2f", pc.event, pc.server, pc.client)
			}
		}
	}
	if fs != nil && c.parts[partStorm] {
		st, nfs, err := fleetStorm(ctx, fs, stls, ch, c, logf)
		if nfs != nil {
			fs = nfs
		}
		if err != nil {
			return nil, err
		}
		res.storm = st
	}
	return res, nil
}

// fleetFanOut calls every client once with Server.FanOut.
func fleetFanOut(ctx context.Context, fs *fleetServer, ch *fleetChild, c *fleetConfig, kind string, cold bool) (fanoutFigure, error) {
	var fig fanoutFigure
	req := &testpb.EchoRequest{Payload: payload(16)}
	// The collection that the connecting (or the first fan-out) made due
	// is not this fan-out's cost, nor its profile's.
	runtime.GC()
	var perfs []*perfStat
	for _, pid := range []int{os.Getpid(), ch.cmd.Process.Pid} {
		if len(c.perfEvents) == 0 {
			break
		}
		ps, err := startPerfStat(pid, c.perfEvents)
		if err != nil {
			return fig, err
		}
		perfs = append(perfs, ps)
	}
	phase := kind + map[bool]string{true: "-cold", false: "-warm"}[cold]
	stopProfiles := func() {}
	if c.childProfile != "" {
		if rest, err := ch.ask("profile "+c.childProfile+"-"+phase+"-child.pprof", "profiling "); err != nil || rest != "ok" {
			return fig, fmt.Errorf("profiling the child: %s %v", rest, err)
		}
		stopProfiles = func() { _, _ = ch.ask("profile-stop", "profiled") }
	}
	if c.cpuprofile != "" {
		stopOwn, err := startCPUProfile(c.cpuprofile + "-" + phase + ".pprof")
		if err != nil {
			stopProfiles()
			return fig, err
		}
		stopChild := stopProfiles
		stopProfiles = func() { stopOwn(); stopChild() }
	}
	cc0, err := ch.cpu()
	if err != nil {
		stopProfiles()
		return fig, err
	}
	net0 := readNetCounters()
	cpu0 := cpuTime()
	start := time.Now()
	res, err := fs.srv.FanOut(ctx, brpc.FanOutOptions{Concurrency: c.concurrency, PerClientTimeout: time.Minute},
		func(ctx context.Context, stub testpb.EchoClient, _ brpc.Peer) error {
			_, err := stub.Unary(ctx, req)
			return err
		})
	fig.took = time.Since(start)
	cpu1 := cpuTime()
	fig.net = readNetCounters().sub(net0)
	stopProfiles()
	var counts [][]float64
	for _, ps := range perfs {
		cs, perr := ps.stop()
		if perr != nil && err == nil {
			err = perr
		}
		counts = append(counts, cs)
	}
	if err != nil {
		return fig, err
	}
	cc1, err := ch.cpu()
	if err != nil {
		return fig, err
	}
	byCode := map[codes.Code]int{}
	for _, r := range res {
		if r.Err != nil {
			fig.errors++
			byCode[status.Code(r.Err)]++
		}
	}
	if fig.errors > 0 {
		fmt.Fprintf(os.Stderr, "    failed calls by code: %v\n", byCode)
	}
	n := time.Duration(max(len(res), 1))
	fig.serverCPU, fig.clientCPU = (cpu1-cpu0)/n, (cc1-cc0)/n
	fig.net = fig.net.per(len(res))
	for i, ev := range c.perfEvents {
		if len(counts) == 2 {
			fig.perf = append(fig.perf, perfCount{event: ev, server: counts[0][i] / float64(n), client: counts[1][i] / float64(n)})
		}
	}
	return fig, nil
}

// fleetStorm stops the server, starts a new one on the same address and
// waits until every client is back; the clients already back call the
// server meanwhile. It returns the new server.
func fleetStorm(ctx context.Context, old *fleetServer, stls *tls.Config, ch *fleetChild, c *fleetConfig, logf func(string, ...any)) (*stormFigure, *fleetServer, error) {
	transport := "quic"
	if strings.HasPrefix(ch.kind, "brpc-tcp") {
		transport = "tcp"
	}
	stopProfile := func() {}
	if c.cpuprofile != "" {
		var err error
		if stopProfile, err = startCPUProfile(c.cpuprofile + "-" + ch.kind + "-stop.pprof"); err != nil {
			return nil, nil, err
		}
	}
	cpuStop, t0 := cpuTime(), time.Now()
	old.stop()
	stopProfile()
	st := &stormFigure{stopTook: time.Since(t0), stopCPU: (cpuTime() - cpuStop) / time.Duration(c.n)}
	fs, err := startFleetServer(stls, transport, old.addr)
	if err != nil {
		return nil, nil, fmt.Errorf("restarting on %s: %w", old.addr, err)
	}
	// The clients that are back call the server from now on.
	if err := ch.send(fmt.Sprintf("probe %d", c.probeRate)); err != nil {
		return nil, nil, err
	}
	t0 = time.Now()
	cpu0 := cpuTime()
	wctx, cancel := context.WithTimeout(ctx, 120*time.Second)
	err = fs.waitWelcomed(wctx, int64(c.n))
	cancel()
	st.back, st.rejected, st.resumed = time.Since(t0), fs.refused.Load(), fs.resumed.Load()
	st.serverCPU = (cpuTime() - cpu0) / time.Duration(c.n)
	if err != nil {
		// Reported, not fatal: how many came back is the figure.
		logf("  storm: %v", err)
		st.back = -1
	}
	fs.mu.Lock()
	times := slices.Clone(fs.times)
	fs.mu.Unlock()
	slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
	st.welcomed = len(times)
	for _, q := range []float64{0.5, 0.9, 0.99} {
		if k := int(math.Ceil(q * float64(c.n))); k <= len(times) {
			st.quantiles = append(st.quantiles, times[k-1].Sub(t0))
		}
	}
	// How the returns were spread: welcomes per 5 s after the restart.
	var buckets []int
	for _, w := range times {
		b := int(w.Sub(t0) / (5 * time.Second))
		for len(buckets) <= b {
			buckets = append(buckets, 0)
		}
		buckets[b]++
	}
	logf("  storm: welcomes per 5 s after the restart: %v", buckets)
	line, err := ch.ask("report", "probed ")
	if err != nil {
		return nil, fs, err
	}
	var p50, p99, pmax, ccpu int64
	if _, err := fmt.Sscanf(line, "%d %d %d %d %d %d %d %d", &st.probeOK, &st.probeFail, &p50, &p99, &pmax, &st.notReady, &st.shutDown, &ccpu); err != nil {
		return nil, fs, fmt.Errorf("child said %q: %w", line, err)
	}
	st.p50, st.p99, st.probeMax, st.clientsCPU = time.Duration(p50), time.Duration(p99), time.Duration(pmax), time.Duration(ccpu)/time.Duration(c.n)
	logf("  storm: Stop took %v (server CPU %v per client); %d of %d back, the last %v after the restart (-1: not all within 120 s; 50/90/99 %%: %v); %d handshakes refused; %d TLS sessions resumed; probe calls %d ok, %d failed, p50 %v p99 %v max %v; %d clients not ready, %d gave up",
		st.stopTook.Round(time.Millisecond), st.stopCPU, st.welcomed, c.n, st.back.Round(time.Millisecond), st.quantiles, st.rejected, st.resumed, st.probeOK, st.probeFail, st.p50, st.p99, st.probeMax, st.notReady, st.shutDown)
	return st, fs, nil
}

// fleetChild is the process holding the fleet's clients.
type fleetChild struct {
	kind        string
	cmd         *exec.Cmd
	stdin       io.WriteCloser
	lines       chan string
	connectTime time.Duration
	connectCPU  time.Duration
}

func startFleetChild(ca *certs.CA, c *fleetConfig, kind, target string) (*fleetChild, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, fleetChildCommand, "-kind", kind, "-target", target,
		"-n", strconv.Itoa(c.n), "-dialers", strconv.Itoa(c.dialers),
		"-resume="+strconv.FormatBool(c.resume), "-jitter", strconv.FormatFloat(c.jitter, 'g', -1, 64),
		"-base-delay", c.baseDelay.String(), "-app-windows="+strconv.FormatBool(c.appWindows),
		"-max-window", c.clientMaxWindow.String())
	if c.parts[partStorm] {
		cmd.Args = append(cmd.Args, "-attempts")
	}
	if c.childProfile != "" {
		cmd.Args = append(cmd.Args, "-connect-profile", c.childProfile+"-"+kind+"-connect-child.pprof")
	}
	cmd.Env = append(os.Environ(), childCAEnv+"="+string(ca.CertPEM()))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ch := &fleetChild{kind: kind, cmd: cmd, stdin: stdin, lines: make(chan string, 16)}
	go func() {
		defer close(ch.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			ch.lines <- sc.Text()
		}
	}()
	line, err := ch.wait("ready ", 60*time.Second+time.Duration(c.n)*10*time.Millisecond)
	if err == nil {
		var ns, cpu int64
		if _, err = fmt.Sscanf(line, "%d %d", &ns, &cpu); err == nil {
			ch.connectTime, ch.connectCPU = time.Duration(ns), time.Duration(cpu)
		}
	}
	if err != nil {
		ch.stop()
		return nil, err
	}
	return ch, nil
}

// wait returns the rest of the child's next line, which must start with
// prefix.
func (ch *fleetChild) wait(prefix string, timeout time.Duration) (string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case line, ok := <-ch.lines:
		if !ok {
			return "", errors.New("the client process ended")
		}
		rest, found := strings.CutPrefix(line, prefix)
		if !found {
			return "", fmt.Errorf("the client process said %q, want %q...", line, prefix)
		}
		return rest, nil
	case <-t.C:
		return "", fmt.Errorf("no %q from the client process within %v", strings.TrimSpace(prefix), timeout)
	}
}

func (ch *fleetChild) send(cmd string) error {
	_, err := fmt.Fprintln(ch.stdin, cmd)
	return err
}

func (ch *fleetChild) ask(cmd, prefix string) (string, error) {
	if err := ch.send(cmd); err != nil {
		return "", err
	}
	return ch.wait(prefix, 5*time.Minute)
}

// quietSpell waits d with every client connected and nothing called, and
// reports what the fleet cost meanwhile, per second: the CPU of either
// process (keepalives, and whatever a session still does after its
// handshake) and the loopback's packets.
func (ch *fleetChild) quietSpell(d time.Duration) (string, error) {
	child0, err := ch.cpu()
	if err != nil {
		return "", err
	}
	cpu0, net0, t0 := cpuTime(), readNetCounters(), time.Now()
	time.Sleep(d)
	cpu, net, took := cpuTime()-cpu0, readNetCounters().sub(net0), time.Since(t0).Seconds()
	child, err := ch.cpu()
	if err != nil {
		return "", err
	}
	perSecond := func(v time.Duration) float64 { return float64(v) / float64(time.Millisecond) / took }
	return fmt.Sprintf("CPU server %.1f ms/s, clients %.1f ms/s; on the loopback per second: UDP datagrams in %.0f out %.0f, TCP segments in %.0f out %.0f",
		perSecond(cpu), perSecond(child-child0), net.udpIn/took, net.udpOut/took, net.tcpIn/took, net.tcpOut/took), nil
}

// cpu is the child's CPU time so far.
func (ch *fleetChild) cpu() (time.Duration, error) {
	line, err := ch.ask("cpu", "cpu ")
	if err != nil {
		return 0, err
	}
	ns, err := strconv.ParseInt(line, 10, 64)
	return time.Duration(ns), err
}

// forwardCalls makes every client call the server once, with workers
// goroutines.
func (ch *fleetChild) forwardCalls(workers, n int) (fanoutFigure, error) {
	var fig fanoutFigure
	runtime.GC()
	net0 := readNetCounters()
	cpu0 := cpuTime()
	line, err := ch.ask("call "+strconv.Itoa(workers), "called ")
	if err != nil {
		return fig, err
	}
	cpu1 := cpuTime()
	fig.net = readNetCounters().sub(net0).per(n)
	var ns, ccpu int64
	if _, err := fmt.Sscanf(line, "%d %d %d", &ns, &fig.errors, &ccpu); err != nil {
		return fig, fmt.Errorf("child said %q: %w", line, err)
	}
	fig.took = time.Duration(ns)
	fig.serverCPU, fig.clientCPU = (cpu1-cpu0)/time.Duration(n), time.Duration(ccpu)/time.Duration(n)
	return fig, nil
}

func (ch *fleetChild) stop() {
	ch.stdin.Close()
	done := make(chan struct{})
	go func() {
		for range ch.lines {
		}
		_ = ch.cmd.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		_ = ch.cmd.Process.Kill()
		<-done
	}
}

// fleetChildMain holds the clients: it connects them, prints "ready
// <nanoseconds> <CPU nanoseconds>", then answers commands on stdin until it
// closes: "cpu", "call <workers>", "probe <rate>", "report", "profile <file>"
// and "profile-stop".
func fleetChildMain(args []string) int {
	fs := flag.NewFlagSet(fleetChildCommand, flag.ContinueOnError)
	kind := fs.String("kind", idleQUIC, "setup")
	target := fs.String("target", "", "server address")
	n := fs.Int("n", 1, "clients")
	dialers := fs.Int("dialers", 32, "concurrent dialers")
	resume := fs.Bool("resume", false, "keep a TLS session cache per client")
	jitter := fs.Float64("jitter", backoff.DefaultConfig.Jitter, "reconnect backoff jitter")
	baseDelay := fs.Duration("base-delay", backoff.DefaultConfig.BaseDelay, "reconnect backoff base delay")
	fs.BoolVar(&fleetAppWindows, "app-windows", false, "the clients' *grpc.Server gets static HTTP/2 windows")
	maxWindow := fs.Duration("max-window", brpc.DefaultMaxReconnectWindow, "WithMaxReconnectWindow")
	recordAttempts := fs.Bool("attempts", false, "record every client's reconnect attempts (WithLogger) and report them after a storm")
	connectProfile := fs.String("connect-profile", "", "write a CPU profile of the connecting to this file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(os.Getenv(childCAEnv))) {
		fmt.Fprintln(os.Stderr, "fleet-child: no CA certificate in", childCAEnv)
		return 2
	}
	h := &fleetHolder{kind: *kind}
	bc := backoff.DefaultConfig
	bc.Jitter, bc.BaseDelay = *jitter, *baseDelay
	if *kind == idleQUIC || *kind == idleTCP {
		h.gs = grpc.NewServer(fleetServerOptions()...)
		testpb.RegisterEchoServer(h.gs, echoServer{})
		defer h.gs.Stop()
	}
	h.stubs = make([]testpb.EchoClient, *n)
	h.brpc = make([]*brpc.ClientConn, *n)
	closers := make([]io.Closer, *n)
	attempts := newAttemptLog(*n)
	var probeStart time.Time
	dial := func(ctx context.Context, i int) (io.Closer, testpb.EchoClient, *brpc.ClientConn, error) {
		tc := tlsWithRoots(pool)
		if *resume {
			tc.ClientSessionCache = tls.NewLRUClientSessionCache(1)
		}
		switch *kind {
		case idleGRPC, fleetGRPCTCP:
			creds := credentials.NewTLS(tc)
			if *kind == fleetGRPCTCP {
				creds = insecure.NewCredentials()
			}
			cc, err := dialGRPCIdle(ctx, creds, *target)
			if err != nil {
				return nil, nil, nil, err
			}
			return cc, testpb.NewEchoClient(cc), nil, nil
		}
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		opts := []brpc.DialOption{brpc.WithTLSConfig(tc), brpc.WithServer(h.gs), brpc.WithConnectBackoff(bc), brpc.WithMaxReconnectWindow(*maxWindow)}
		if *recordAttempts {
			opts = append(opts, brpc.WithLogger(attempts.logger(i)))
		}
		cc, err := brpc.Dial(dctx, *target, opts...)
		if err != nil {
			return nil, nil, nil, err
		}
		return cc, testpb.NewEchoClient(cc), cc, nil
	}
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	if *connectProfile != "" {
		if err := startFleetChildProfile(*connectProfile); err != nil {
			fmt.Fprintln(os.Stderr, "fleet-child:", err)
			return 2
		}
	}
	cpu0 := cpuTime()
	start := time.Now()
	for range *dialers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)) - 1; i < *n; i = int(next.Add(1)) - 1 {
				var (
					c    io.Closer
					stub testpb.EchoClient
					bc   *brpc.ClientConn
					err  error
				)
				// A loaded machine times a handshake out now and then; a
				// client that fails three times in a row ends the run.
				for range 3 {
					if c, stub, bc, err = dial(context.Background(), i); err == nil {
						break
					}
					fmt.Fprintf(os.Stderr, "fleet-child: client %d: %v (retrying)\n", i, err)
				}
				if err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("client %d: %w", i, err) })
					next.Store(int64(*n))
					return
				}
				closers[i], h.stubs[i], h.brpc[i] = c, stub, bc
			}
		}()
	}
	wg.Wait()
	took, cpu := time.Since(start), cpuTime()-cpu0
	stopFleetChildProfile()
	defer closeAllOf(closers)
	if firstErr != nil {
		fmt.Fprintln(os.Stderr, "fleet-child:", firstErr)
		return 1
	}
	fmt.Printf("ready %d %d\n", took.Nanoseconds(), cpu.Nanoseconds())
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		arg := 0
		if len(f) > 1 {
			arg, _ = strconv.Atoi(f[1])
		}
		switch f[0] {
		case "cpu":
			fmt.Printf("cpu %d\n", cpuTime().Nanoseconds())
		case "profile":
			if len(f) < 2 {
				fmt.Println("profiling failed: no file named")
				continue
			}
			if err := startFleetChildProfile(f[1]); err != nil {
				fmt.Printf("profiling failed: %v\n", err)
				continue
			}
			fmt.Println("profiling ok")
		case "profile-stop":
			stopFleetChildProfile()
			fmt.Println("profiled")
		case "call":
			ns, errs, cpu := h.callAll(max(arg, 1))
			fmt.Printf("called %d %d %d\n", ns.Nanoseconds(), errs, cpu.Nanoseconds())
		case "probe":
			probeStart = time.Now()
			h.startProbe(max(arg, 1))
		case "report":
			fmt.Println("probed " + h.report())
			if h.brpc != nil && *recordAttempts {
				attempts.report(os.Stderr, probeStart)
			}
		}
	}
	h.stopProbe()
	return 0
}

// closeAllOf closes every non-nil closer, 32 at a time, and waits for all.
func closeAllOf(closers []io.Closer) {
	var wg sync.WaitGroup
	ch := make(chan io.Closer)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range ch {
				c.Close()
			}
		}()
	}
	for _, c := range closers {
		if c != nil {
			ch <- c
		}
	}
	close(ch)
	wg.Wait()
}

// fleetHolder is the child's side of the fleet.
type fleetHolder struct {
	kind  string
	gs    *grpc.Server
	stubs []testpb.EchoClient
	brpc  []*brpc.ClientConn // nil for grpc-go setups

	probeStop chan struct{}
	probeDone chan struct{}
	probeCPU  time.Duration
	mu        sync.Mutex
	lat       []time.Duration
	fails     int
}

// callAll makes one call from every client.
func (h *fleetHolder) callAll(workers int) (took time.Duration, errs int, cpu time.Duration) {
	req := &testpb.EchoRequest{Payload: payload(16)}
	var (
		next   atomic.Int64
		failed atomic.Int64
		wg     sync.WaitGroup
	)
	runtime.GC()
	cpu0 := cpuTime()
	start := time.Now()
	for range min(workers, len(h.stubs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)) - 1; i < len(h.stubs); i = int(next.Add(1)) - 1 {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				if _, err := h.stubs[i].Unary(ctx, req); err != nil {
					failed.Add(1)
				}
				cancel()
			}
		}()
	}
	wg.Wait()
	return time.Since(start), int(failed.Load()), cpuTime() - cpu0
}

// startProbe makes rate calls per second, each from a client picked at
// random among those that are Ready (back on a session), until report.
func (h *fleetHolder) startProbe(rate int) {
	if h.brpc == nil || h.probeStop != nil {
		return
	}
	h.probeStop, h.probeDone = make(chan struct{}), make(chan struct{})
	cpu0 := cpuTime()
	req := &testpb.EchoRequest{Payload: payload(16)}
	go func() {
		defer close(h.probeDone)
		var calls sync.WaitGroup
		defer calls.Wait()
		sem := make(chan struct{}, 256) // a slow server must not pile up calls without bound
		t := time.NewTicker(time.Second / time.Duration(rate))
		defer t.Stop()
		for {
			select {
			case <-h.probeStop:
				h.probeCPU = cpuTime() - cpu0
				return
			case <-t.C:
			}
			var cc *brpc.ClientConn
			var stub testpb.EchoClient
			for range 32 {
				i := mrand.IntN(len(h.brpc))
				if h.brpc[i] != nil && h.brpc[i].GetState() == connectivity.Ready {
					cc, stub = h.brpc[i], h.stubs[i]
					break
				}
			}
			if cc == nil {
				continue
			}
			select {
			case sem <- struct{}{}:
			default:
				h.mu.Lock()
				h.fails++ // 256 calls already waiting count as unresponsive
				h.mu.Unlock()
				continue
			}
			calls.Add(1)
			go func() {
				defer calls.Done()
				defer func() { <-sem }()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				start := time.Now()
				_, err := stub.Unary(ctx, req)
				d := time.Since(start)
				h.mu.Lock()
				if err != nil {
					h.fails++
				} else {
					h.lat = append(h.lat, d)
				}
				h.mu.Unlock()
			}()
		}
	}()
}

func (h *fleetHolder) stopProbe() {
	if h.probeStop == nil {
		return
	}
	close(h.probeStop)
	<-h.probeDone
	h.probeStop = nil
}

// report stops the probe and says "<ok> <failed> <p50 ns> <p99 ns> <max ns>
// <clients not Ready> <clients Shutdown> <CPU ns while probing>".
func (h *fleetHolder) report() string {
	h.stopProbe()
	h.mu.Lock()
	lat := slices.Clone(h.lat)
	fails := h.fails
	h.mu.Unlock()
	slices.Sort(lat)
	q := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[int(math.Ceil(p*float64(len(lat))))-1]
	}
	notReady, shut := 0, 0
	for _, cc := range h.brpc {
		switch cc.GetState() {
		case connectivity.Ready:
		case connectivity.Shutdown:
			shut++
			notReady++
		default:
			notReady++
		}
	}
	var maxLat time.Duration
	if len(lat) > 0 {
		maxLat = lat[len(lat)-1]
	}
	return fmt.Sprintf("%d %d %d %d %d %d %d %d", len(lat), fails, q(0.5), q(0.99), maxLat, notReady, shut, h.probeCPU)
}

// printFleet writes the fleet's tables.
func printFleet(w io.Writer, c *fleetConfig, results []*fleetResult, started time.Time, load0 string) {
	fmt.Fprintf(w, "\nUsed fleet, %d clients in a child process (%d dialers); fan-out concurrency %d; %s, %s; took %v; load average %s at the start, %s at the end\n\n",
		c.n, c.dialers, c.concurrency, started.Format("2006-01-02 15:04 MST"), "storm clients: resume="+strconv.FormatBool(c.resume)+fmt.Sprintf(" jitter=%.2f base=%v max-window=%v; server max pending handshakes %d, max handshaking %d, reconnect window %v per client, at most %v", c.jitter, c.baseDelay, c.clientMaxWindow, c.maxPending, c.slots, c.windowPerClient, c.maxWindow),
		time.Since(started).Round(time.Second), load0, loadAvg())
	fmt.Fprintln(w, "| setup | connect rate | server CPU idle | server CPU per connect | clients' CPU per connect | 1st fan-out (cold) | server CPU per cold call | clients' CPU per cold call | 2nd fan-out (warm) | server CPU per warm call | clients' CPU per warm call | errors |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|")
	us := func(d time.Duration) string { return fmt.Sprintf("%.0f µs", float64(d)/1e3) }
	for _, r := range results {
		cold, warm := "n/a", "n/a"
		if r.cold.took > 0 {
			cold, warm = r.cold.took.Round(time.Millisecond).String(), r.warm.took.Round(time.Millisecond).String()
		}
		if strings.HasPrefix(r.kind, "grpc") {
			cold, warm = "(connect + call)", "(calls) "+warm
		}
		sc, cc := us(r.cold.serverCPU), us(r.cold.clientCPU)
		if strings.HasPrefix(r.kind, "grpc") {
			sc, cc = us(r.connectServerCPU), us(r.connectClientCPU)
		}
		fmt.Fprintf(w, "| %s | %.0f/s | %.1f ms/s | %s | %s | %s | %s | %s | %s | %s | %s | %d, %d |\n", r.kind, r.connectRate, r.idleCPU*1e3, us(r.connectServerCPU), us(r.connectClientCPU),
			cold, sc, cc, warm, us(r.warm.serverCPU), us(r.warm.clientCPU), r.cold.errors, r.warm.errors)
	}
	var storms []*fleetResult
	for _, r := range results {
		if r.storm != nil {
			storms = append(storms, r)
		}
	}
	if len(storms) == 0 {
		return
	}
	fmt.Fprintln(w, "\n| setup | Stop took (server CPU per client) | all back after restart | 50 / 90 / 99 % back | handshakes refused | TLS resumed | server CPU per client | probe calls ok / failed | probe p50 / p99 / max | not back, gave up |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range storms {
		s := r.storm
		var qs []string
		for _, q := range s.quantiles {
			qs = append(qs, q.Round(10*time.Millisecond).String())
		}
		back := s.back.Round(10 * time.Millisecond).String()
		if s.back < 0 {
			back = fmt.Sprintf("only %d within 120 s", s.welcomed)
		}
		fmt.Fprintf(w, "| %s | %v (%s) | %s | %s | %d | %d | %s | %d / %d | %v / %v / %v | %d, %d |\n", r.kind, s.stopTook.Round(10*time.Millisecond), us(s.stopCPU), back, strings.Join(qs, " / "),
			s.rejected, s.resumed, us(s.serverCPU), s.probeOK, s.probeFail, s.p50.Round(10*time.Microsecond), s.p99.Round(10*time.Microsecond), s.probeMax.Round(time.Millisecond), s.notReady, s.shutDown)
	}
}
