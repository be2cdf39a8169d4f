// Command bench measures brpc against plain grpc-go on loopback, in one run,
// and prints tables with the ratios the performance targets are written in.
//
//	go run ./bench                 # the full run (a few minutes)
//	go run ./bench -short          # tiny counts: checks that every path works
//	go run ./bench -png docs/performance.png -idle 10000
//	go run ./bench -paths brpc-quic-rev -metrics bulk -cpuprofile cpu.out
//
// Paths: plain grpc-go over TCP and over TLS-TCP (the baseline of every
// ratio), brpc over QUIC and over TCP (TLS + yamux), each forward (client to
// server) and reverse (server to client through Server.Client), and raw
// quic-go on one stream (an echo for latency, a transfer for bulk) as the
// reference for QUIC. The gateway figures (-metrics gateway) set a call
// through Server.Gateway against the same call on Client(id)'s stub, with
// the relay alone in front of plain grpc-go as a reference. Everything runs
// in this process except the idle
// clients, which a child process (this binary again, with a hidden
// subcommand) holds.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/certs"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == childCommand {
		os.Exit(childMain(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == fleetChildCommand {
		os.Exit(fleetChildMain(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == fleetCommand {
		if err := fleetMain(os.Args[2:], os.Stdout, os.Stderr); err != nil {
			if !errors.Is(err, flag.ErrHelp) {
				fmt.Fprintln(os.Stderr, "bench:", err)
			}
			os.Exit(1)
		}
		return
	}
	if _, err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "bench:", err)
		}
		os.Exit(1)
	}
}

// Metrics, as named by -metrics.
const (
	mLat16      = "lat16"
	mLat64K     = "lat64k"
	mCalls      = "calls"
	mBulkUnary  = "bulk"
	mBulkStream = "stream"
	mIdle       = "idle"
	mUsed       = "used"
)

var allMetrics = []string{mLat16, mLat64K, mCalls, mBulkUnary, mBulkStream, mGateway, mIdle, mUsed}

// rpcMetrics are the columns of the main table, in order.
var rpcMetrics = []string{mLat16, mLat64K, mCalls, mBulkUnary, mBulkStream}

type config struct {
	short       bool
	duration    time.Duration
	warmup      time.Duration
	calls       int
	warmCalls   int
	rounds      int
	callers     int
	bulkCallers int
	bulkSize    int
	idle        int
	used        int
	dialers     int
	fanWorkers  int
	usedWorkers int
	tlsGroups   string
	idleServers []string
	usedServers []string
	paths       []string
	metrics     map[string]bool
	png         string
	cpuprofile  string
	heapprofile string
	// gwServices describes the echo service to the gateway's brpc server
	// (brpc.WithGatewayServices).
	gwServices bool
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &config{}
	fs.BoolVar(&c.short, "short", false, "tiny counts and durations: only checks that every path works (flags given explicitly still apply)")
	fs.DurationVar(&c.duration, "duration", time.Second, "measuring time of each throughput and bulk figure, per round")
	fs.DurationVar(&c.warmup, "warmup", 250*time.Millisecond, "warm-up before each throughput and bulk figure")
	fs.IntVar(&c.calls, "calls", 2000, "sequential calls per latency figure, per round")
	fs.IntVar(&c.warmCalls, "warm-calls", 200, "sequential warm-up calls before each latency figure")
	fs.BoolVar(&c.gwServices, "gateway-services", false, "describe the echo service to the gateway (brpc.WithGatewayServices), so that its unary calls are relayed as unary calls")
	fs.IntVar(&c.rounds, "rounds", 7, "rounds over all paths; each figure is the median of its rounds")
	fs.IntVar(&c.callers, "callers", 64, "concurrent callers for the calls/s figure")
	fs.IntVar(&c.bulkCallers, "bulk-callers", 8, "concurrent callers for the unary bulk figure")
	fs.IntVar(&c.bulkSize, "bulk-size", 1<<20, "message size in bytes of the bulk figures")
	fs.IntVar(&c.idle, "idle", 2000, "idle clients connected for the memory and scale figures (0: skip)")
	fs.IntVar(&c.used, "used", 2000, "used clients (one call each way, then idle) for the used-fleet figures (0: skip)")
	fs.IntVar(&c.dialers, "dialers", 32, "concurrent dialers connecting the idle clients (quic-go refuses connections beyond an accept queue of 32)")
	fs.IntVar(&c.fanWorkers, "fanout-workers", 0, "goroutines making the fan-out calls (0: one per client, all at once)")
	fs.IntVar(&c.usedWorkers, "used-workers", brpc.DefaultFanOutConcurrency, "goroutines making the used clients' reverse calls (brpc.FanOut's default concurrency; 0: one per client, all at once, which leaves the runtime holding a descriptor of every ended caller goroutine)")
	fs.DurationVar(&reverseIdle, "reverse-idle", brpc.DefaultReverseIdleTimeout, "the brpc servers' WithReverseIdleTimeout (longer than the first fan-out, so that the second finds every connection open); the idle figures measure memory again once it has passed after the fan-outs")
	fs.DurationVar(&forwardIdle, "forward-idle", brpc.DefaultForwardIdleTimeout, "the brpc clients' WithForwardIdleTimeout; the used-client figures measure memory again once it and -reverse-idle have passed")
	fs.IntVar(&grpcWindow, "grpc-window", 0, "static HTTP/2 stream receive window in bytes of every *grpc.Server (grpc.InitialWindowSize; 0: grpc-go's default, sized by its BDP estimation)")
	fs.IntVar(&grpcConnWindow, "grpc-conn-window", 0, "static HTTP/2 connection receive window in bytes of every *grpc.Server (grpc.InitialConnWindowSize; 0: grpc-go's default)")
	groups := fs.String("tls-groups", "default", "TLS key exchanges of every path: default (Go's, post-quantum hybrid first) or x25519")
	idleServers := fs.String("idle-servers", strings.Join(allIdle, ","), "comma-separated servers for the idle figures")
	usedServers := fs.String("used-servers", strings.Join(allUsed, ","), "comma-separated servers for the used-client figures")
	paths := fs.String("paths", "", "comma-separated paths to run (default all): "+strings.Join(pathKeys(), ","))
	metrics := fs.String("metrics", "", "comma-separated figures to measure (default all): "+strings.Join(allMetrics, ",")+" (gateway: p50 16 B, calls/s and CPU per call through Server.Gateway against Client(id)'s stub, on each transport whose reverse path is in -paths, and of the relay alone in front of plain grpc-go when grpc-tcp is)")
	fs.StringVar(&c.png, "png", "", "write a chart of the results to this PNG file")
	fs.StringVar(&c.cpuprofile, "cpuprofile", "", "write a CPU profile of the whole run to this file")
	childProfile := fs.String("child-cpuprofile", "", "write CPU profiles of the client process: while it connects the idle clients to PREFIX-<server>.pprof, then while it serves the server's calls to PREFIX-<server>-serve.pprof")
	fs.StringVar(&c.heapprofile, "heapprofile", "", "write heap profiles of the server holding its idle clients to PREFIX-<server>.pprof, and its used clients to PREFIX-used-<server>.pprof")
	memProfileRate := fs.Int("memprofilerate", 0, "sample one allocation every this many bytes in the heap profiles (runtime.MemProfileRate; 0: the runtime's default of 512 KiB)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *memProfileRate < 0 {
		return nil, errors.New("-memprofilerate must not be negative")
	}
	if *memProfileRate > 0 {
		// Before the servers allocate anything worth sampling.
		runtime.MemProfileRate = *memProfileRate
	}
	if c.short {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		short := map[string]func(){
			"duration":     func() { c.duration = 50 * time.Millisecond },
			"warmup":       func() { c.warmup = 0 },
			"calls":        func() { c.calls = 20 },
			"warm-calls":   func() { c.warmCalls = 5 },
			"rounds":       func() { c.rounds = 1 },
			"idle":         func() { c.idle = 5 },
			"used":         func() { c.used = 5 },
			"dialers":      func() { c.dialers = 4 },
			"reverse-idle": func() { reverseIdle = time.Second },
			"forward-idle": func() { forwardIdle = time.Second },
		}
		releaseRounds = 2
		usedQuiet = 0
		for name, apply := range short {
			if !set[name] {
				apply()
			}
		}
	}
	if c.rounds < 1 || c.calls < 1 || c.callers < 1 || c.bulkCallers < 1 || c.bulkSize < 1 || c.duration <= 0 || c.idle < 0 || c.used < 0 || c.fanWorkers < 0 || c.usedWorkers < 0 {
		return nil, errors.New("counts, sizes and durations must be positive")
	}
	if *childProfile != "" {
		if err := os.Setenv(childProfileEnv, *childProfile); err != nil {
			return nil, err
		}
	}
	if err := setTLSGroups(*groups); err != nil {
		return nil, err
	}
	c.tlsGroups = *groups
	known := pathKeys()
	if *paths == "" {
		c.paths = known
	} else {
		for _, p := range strings.Split(*paths, ",") {
			if !slices.Contains(known, p) {
				return nil, fmt.Errorf("unknown path %q (known: %s)", p, strings.Join(known, ","))
			}
			c.paths = append(c.paths, p)
		}
	}
	for _, k := range strings.Split(*idleServers, ",") {
		if !slices.Contains(allIdle, k) {
			return nil, fmt.Errorf("unknown idle server %q (known: %s)", k, strings.Join(allIdle, ","))
		}
		c.idleServers = append(c.idleServers, k)
	}
	for _, k := range strings.Split(*usedServers, ",") {
		if !slices.Contains(allUsed, k) {
			return nil, fmt.Errorf("unknown used-client server %q (known: %s)", k, strings.Join(allUsed, ","))
		}
		c.usedServers = append(c.usedServers, k)
	}
	c.metrics = map[string]bool{}
	if *metrics == "" {
		for _, m := range allMetrics {
			c.metrics[m] = true
		}
	} else {
		for _, m := range strings.Split(*metrics, ",") {
			if !slices.Contains(allMetrics, m) {
				return nil, fmt.Errorf("unknown figure %q (known: %s)", m, strings.Join(allMetrics, ","))
			}
			c.metrics[m] = true
		}
	}
	if c.idle == 0 {
		c.metrics[mIdle] = false
	}
	if c.used == 0 {
		c.metrics[mUsed] = false
	}
	return c, nil
}

func pathKeys() []string {
	var keys []string
	for _, p := range allPaths() {
		keys = append(keys, p.key)
	}
	return keys
}

// report holds the results of one run.
type report struct {
	cfg   *config
	paths []pathSpec
	// samples[path][metric] holds one value per round, in round order:
	// seconds for latencies, per-second rates otherwise.
	samples map[string]map[string][]float64
	idle    []*idleResult
	used    []*usedResult
	started time.Time
	elapsed time.Duration
	// load averages of the machine (1, 5, 15 min) at the start and the end
	loadStart, loadEnd string
}

// loadAvg reads the machine's load averages, where the system tells them.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// value is the median over rounds, and whether there is one.
func (r *report) value(path, metric string) (float64, bool) {
	return median(r.samples[path][metric])
}

// ratioOf is the median over rounds of path's figure over ref's figure
// for refMetric in the same round.
func (r *report) ratioOf(path, metric, ref, refMetric string) (float64, bool) {
	a, b := r.samples[path][metric], r.samples[ref][refMetric]
	if len(a) == 0 || len(a) != len(b) {
		return 0, false
	}
	q := make([]float64, 0, len(a))
	for i := range a {
		if b[i] == 0 {
			return 0, false
		}
		q = append(q, a[i]/b[i])
	}
	return median(q)
}

func median(s []float64) (float64, bool) {
	if len(s) == 0 {
		return 0, false
	}
	s = slices.Clone(s)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2], true
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2, true
}

// applies says whether a metric is measured on a path.
func applies(p pathSpec, metric string) bool {
	if p.rpc {
		return true
	}
	// The raw quic-go reference: one stream, sequential echoes or a bulk
	// transfer.
	return metric == mLat16 || metric == mLat64K || metric == mBulkStream
}

func run(args []string, stdout, stderr io.Writer) (*report, error) {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return nil, err
	}
	if cfg.cpuprofile != "" {
		f, err := os.Create(cfg.cpuprofile)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return nil, err
		}
		defer pprof.StopCPUProfile()
	}
	logf := func(format string, a ...any) { fmt.Fprintf(stderr, format+"\n", a...) }
	rep, err := measureAll(context.Background(), cfg, logf)
	if err != nil {
		return nil, err
	}
	printReport(stdout, rep)
	if cfg.png != "" {
		if err := writeChart(cfg.png, rep); err != nil {
			return nil, fmt.Errorf("chart: %w", err)
		}
		logf("chart written to %s", cfg.png)
	}
	return rep, nil
}

func measureAll(ctx context.Context, cfg *config, logf func(string, ...any)) (*report, error) {
	ca, err := certs.NewCA()
	if err != nil {
		return nil, err
	}
	rep := &report{cfg: cfg, samples: map[string]map[string][]float64{}, started: time.Now(), loadStart: loadAvg()}
	for _, p := range allPaths() {
		if slices.Contains(cfg.paths, p.key) {
			rep.paths = append(rep.paths, p)
			rep.samples[p.key] = map[string][]float64{}
		}
	}
	// Each round measures one figure on every path back to back, then the
	// next figure: a path and the baseline are measured seconds apart, and
	// each ratio is taken within a round. Rounds rotate the order of the
	// paths, so that none always runs first or last.
	for round := 0; round < cfg.rounds; round++ {
		for _, m := range rpcMetrics {
			if !cfg.metrics[m] {
				continue
			}
			for i := range rep.paths {
				p := rep.paths[(i+round)%len(rep.paths)]
				if !applies(p, m) {
					continue
				}
				v, err := measureOne(ctx, cfg, ca, p, m)
				if err != nil {
					return nil, fmt.Errorf("%s %s: %w", p.key, m, err)
				}
				rep.samples[p.key][m] = append(rep.samples[p.key][m], v)
				logf("round %d/%d %-7s %-14s %s", round+1, cfg.rounds, m, p.key, formatValue(m, v))
			}
		}
		if cfg.metrics[mGateway] {
			for _, t := range gatewayTransports {
				if !slices.Contains(cfg.paths, t.path) {
					continue
				}
				err := measureGatewayRound(ctx, cfg, ca, t.transport, round, func(key, m string, v float64) {
					if rep.samples[key] == nil {
						rep.samples[key] = map[string][]float64{}
					}
					rep.samples[key][m] = append(rep.samples[key][m], v)
					logf("round %d/%d %-7s %-22s %s", round+1, cfg.rounds, m, key, formatValue(m, v))
				})
				if err != nil {
					return nil, fmt.Errorf("gateway %s: %w", t.transport, err)
				}
			}
			if slices.Contains(cfg.paths, pathGRPCTCP) {
				err := measureRelayRefRound(ctx, cfg, round, func(key, m string, v float64) {
					if rep.samples[key] == nil {
						rep.samples[key] = map[string][]float64{}
					}
					rep.samples[key][m] = append(rep.samples[key][m], v)
					logf("round %d/%d %-7s %-22s %s", round+1, cfg.rounds, m, key, formatValue(m, v))
				})
				if err != nil {
					return nil, fmt.Errorf("relay in front of grpc-go: %w", err)
				}
			}
		}
	}
	if cfg.metrics[mIdle] {
		for _, kind := range cfg.idleServers {
			logf("idle %s: connecting %d clients from a child process", kind, cfg.idle)
			res, err := measureIdle(ctx, ca, kind, cfg.idle, cfg.dialers, cfg.fanWorkers, cfg.heapprofile, logf)
			if err != nil {
				return nil, fmt.Errorf("idle %s: %w", kind, err)
			}
			rep.idle = append(rep.idle, res)
		}
	}
	if cfg.metrics[mUsed] {
		for _, kind := range cfg.usedServers {
			logf("used %s: connecting %d clients from a child process, one call each way", kind, cfg.used)
			res, err := measureUsed(ctx, ca, kind, cfg.used, cfg.dialers, cfg.usedWorkers, cfg.heapprofile, logf)
			if err != nil {
				return nil, fmt.Errorf("used %s: %w", kind, err)
			}
			rep.used = append(rep.used, res)
		}
	}
	rep.elapsed = time.Since(rep.started)
	rep.loadEnd = loadAvg()
	return rep, nil
}

// measureOne sets up path p afresh and measures one figure on it.
func measureOne(ctx context.Context, cfg *config, ca *certs.CA, p pathSpec, m string) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if !p.rpc {
		switch m {
		case mLat16:
			d, err := measureRawQUICLatency(ctx, ca, 16, cfg.warmCalls, cfg.calls)
			return d.Seconds(), err
		case mLat64K:
			d, err := measureRawQUICLatency(ctx, ca, 64<<10, cfg.warmCalls, cfg.calls)
			return d.Seconds(), err
		}
		return measureRawQUIC(ctx, ca, cfg.bulkSize, cfg.warmup, cfg.duration)
	}
	f, err := p.setup(ctx, ca)
	if err != nil {
		return 0, fmt.Errorf("setup: %w", err)
	}
	defer f.close()
	switch m {
	case mLat16:
		d, err := measureLatency(ctx, f.echo, 16, cfg.warmCalls, cfg.calls)
		return d.Seconds(), err
	case mLat64K:
		d, err := measureLatency(ctx, f.echo, 64<<10, cfg.warmCalls, cfg.calls)
		return d.Seconds(), err
	case mCalls:
		return measureCallRate(ctx, f.echo, cfg.callers, 16, cfg.warmup, cfg.duration)
	case mBulkUnary:
		return measureBulkUnary(ctx, f.echo, cfg.bulkCallers, cfg.bulkSize, cfg.warmup, cfg.duration)
	case mBulkStream:
		return measureBulkStream(ctx, f.echo, cfg.bulkSize, cfg.warmup, cfg.duration)
	}
	return 0, fmt.Errorf("unknown figure %q", m)
}

func formatValue(metric string, v float64) string {
	switch metric {
	case mLat16, mLat64K:
		return fmt.Sprintf("%.1f µs", v*1e6)
	case mCPU:
		return fmt.Sprintf("%.1f µs CPU", v*1e6)
	case mCalls:
		return fmt.Sprintf("%.0f calls/s", v)
	default:
		return fmt.Sprintf("%.1f MB/s", v/1e6)
	}
}

// header describes the run: machine, settings, duration.
func header(r *report) string {
	c := r.cfg
	h := fmt.Sprintf("%s, %s %s/%s, %d CPUs (GOMAXPROCS %d); run took %v; load average %s at the start, %s at the end",
		r.started.Format("2006-01-02 15:04 MST"), runtime.Version(), runtime.GOOS, runtime.GOARCH,
		runtime.NumCPU(), runtime.GOMAXPROCS(0), r.elapsed.Round(time.Second), r.loadStart, r.loadEnd)
	if r.rpcMeasured() {
		h += fmt.Sprintf("; %d round(s), medians shown (ratios: median of the per-round ratios); latency: %d sequential calls after %d warm-up; throughput and bulk: %v each after %v warm-up",
			c.rounds, c.calls, c.warmCalls, c.duration, c.warmup)
	}
	if len(r.idle) > 0 || len(r.used) > 0 {
		h += fmt.Sprintf("; idle and used clients connected by %d concurrent dialers", c.dialers)
		if c.fanWorkers > 0 {
			h += fmt.Sprintf("; fan-out by %d workers", c.fanWorkers)
		} else {
			h += "; fan-out by one goroutine per client"
		}
		if len(c.usedServers) > 0 && c.used > 0 {
			if c.usedWorkers > 0 {
				h += fmt.Sprintf("; used clients' reverse calls by %d workers", c.usedWorkers)
			} else {
				h += "; used clients' reverse calls by one goroutine per client"
			}
		}
	}
	h += "; TLS key exchanges: " + c.tlsGroups
	return h
}

// rpcMeasured says whether any figure measured in rounds (the main table
// or the gateway comparison) was measured.
func (r *report) rpcMeasured() bool {
	return slices.ContainsFunc(rpcMetrics, func(m string) bool { return r.cfg.metrics[m] }) || r.cfg.metrics[mGateway]
}
