package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/certs"
	"github.com/brpc-go/brpc/internal/testpb"
)

// childCommand is the hidden subcommand that runs the idle clients in a
// second process, so that the server's process holds only the server.
const childCommand = "idle-child"

// childCAEnv carries the CA certificate (PEM) to the child process.
const childCAEnv = "BRPC_BENCH_CA_PEM"

// Idle-client setups.
const (
	idleQUIC = "brpc-quic"
	idleTCP  = "brpc-tcp"
	idleGRPC = "grpc-go-tls"
	// idleGRPCTCP is plain grpc-go without TLS: a reference of the used
	// clients' figures only.
	idleGRPCTCP = "grpc-go-tcp"
)

var allIdle = []string{idleQUIC, idleTCP, idleGRPC}

var idleLabels = map[string]string{
	idleQUIC:    "brpc QUIC",
	idleTCP:     "brpc TCP",
	idleGRPC:    "grpc-go TLS-TCP",
	idleGRPCTCP: "grpc-go TCP (insecure)",
}

// isBRPC says whether an idle or used setup is a brpc server.
func isBRPC(kind string) bool { return kind == idleQUIC || kind == idleTCP }

// idleResult is what N idle clients cost one server.
type idleResult struct {
	kind    string
	clients int
	// connectRate is clients per second, dialled by the child process with
	// a number of concurrent dialers, from the first dial to the last one
	// established (for grpc-go: to the first call answered).
	connectRate float64
	// Per idle connected client, on the server after GC: heap plus
	// goroutine stacks, and goroutines.
	bytesPerClient      float64
	stacksPerClient     float64 // the part of bytesPerClient that is stacks
	goroutinesPerClient float64
	// What each client costs the client process that holds them, the same
	// way: heap plus stacks, the stacks, goroutines.
	clientBytes, clientStacks, clientGoroutines float64
	// brpc only: a unary call to every connected client at once, the first
	// time (building each client's reverse connection) and a second time.
	fanoutCold, fanoutWarm time.Duration
	fanoutColdErrors       int64
	fanoutWarmErrors       int64
	// brpc only: the same per-client cost once every client was called.
	bytesAfterFanout      float64
	stacksAfterFanout     float64
	goroutinesAfterFanout float64
	// brpc only: the same once the reverse connections were idle for
	// longer than the server's reverse idle timeout.
	bytesAfterRelease      float64
	stacksAfterRelease     float64
	goroutinesAfterRelease float64
}

// usage is what the process holds, after GC.
type usage struct {
	goroutines int
	heap       uint64 // live heap (HeapAlloc)
	stacks     uint64 // goroutine stacks (StackInuse)
}

func footprint() usage {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return usage{goroutines: runtime.NumGoroutine(), heap: ms.HeapAlloc, stacks: ms.StackInuse}
}

// perClient returns the growth from u0 to u1 divided among n clients:
// goroutines, heap plus stacks, and stacks alone.
func perClient(u0, u1 usage, n int) (goroutines, bytes, stacks float64) {
	f := float64(n)
	goroutines = float64(u1.goroutines-u0.goroutines) / f
	stacks = (float64(u1.stacks) - float64(u0.stacks)) / f
	bytes = (float64(u1.heap)-float64(u0.heap))/f + stacks
	return goroutines, bytes, stacks
}

// settle lets goroutines that are ending (handshakes, the warm-up client)
// finish before a reading.
func settle() { time.Sleep(300 * time.Millisecond) }

// measureIdle runs a server of the given kind in this process, connects n
// idle clients to it from a child process and measures what they cost it.
func measureIdle(ctx context.Context, ca *certs.CA, kind string, n, dialers, fanWorkers int, heapProfile string, logf func(string, ...any)) (*idleResult, error) {
	res := &idleResult{kind: kind, clients: n}
	target, b, stop, err := startIdleServer(ctx, ca, kind)
	if err != nil {
		return nil, err
	}
	defer stop()
	settle()
	u0 := footprint()

	child, err := startChild(ctx, ca, kind, target, n, dialers, childOptions{})
	if err != nil {
		return nil, err
	}
	defer child.stop()
	res.connectRate = float64(n) / child.connectTime.Seconds()
	res.clientBytes, res.clientStacks, res.clientGoroutines = child.clientBytes, child.clientStacks, child.clientGoroutines
	if b != nil {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := b.waitPeers(wctx, n)
		cancel()
		if err != nil {
			return nil, err
		}
	}
	settle()
	res.goroutinesPerClient, res.bytesPerClient, res.stacksPerClient = perClient(u0, footprint(), n)
	logf("  %s: %d idle clients: %.1f KiB (%.1f KiB stacks), %.3f goroutines each; connected at %.0f/s; the client process: %.1f KiB (%.1f KiB stacks), %.3f goroutines per client",
		kind, n, res.bytesPerClient/1024, res.stacksPerClient/1024, res.goroutinesPerClient, res.connectRate,
		res.clientBytes/1024, res.clientStacks/1024, res.clientGoroutines)
	if heapProfile != "" {
		if err := writeHeapProfile(heapProfile + "-" + kind + ".pprof"); err != nil {
			return nil, err
		}
	}

	if b != nil {
		for i, d := range []*time.Duration{&res.fanoutCold, &res.fanoutWarm} {
			errs, took := fanout(ctx, b, fanWorkers, logf)
			*d = took
			if i == 0 {
				res.fanoutColdErrors = errs
			} else {
				res.fanoutWarmErrors = errs
			}
			logf("  %s: fan-out %d to %d clients: %v, %d errors", kind, i+1, n, took.Round(time.Millisecond), errs)
		}
		settle()
		res.goroutinesAfterFanout, res.bytesAfterFanout, res.stacksAfterFanout = perClient(u0, footprint(), n)
		logf("  %s: after the fan-outs: %.1f KiB (%.1f KiB stacks), %.3f goroutines each",
			kind, res.bytesAfterFanout/1024, res.stacksAfterFanout/1024, res.goroutinesAfterFanout)
		time.Sleep(reverseIdle + time.Second)
		settle()
		res.goroutinesAfterRelease, res.bytesAfterRelease, res.stacksAfterRelease = perClient(u0, footprint(), n)
		logf("  %s: %v after the fan-outs (reverse connections released): %.1f KiB (%.1f KiB stacks), %.3f goroutines each",
			kind, reverseIdle+time.Second, res.bytesAfterRelease/1024, res.stacksAfterRelease/1024, res.goroutinesAfterRelease)
	}
	return res, nil
}

// startIdleServer runs a server of the given kind in this process, with a
// first client connected and gone, so that the server's own goroutines run
// before a baseline is taken. b is nil for the plain grpc-go servers.
func startIdleServer(ctx context.Context, ca *certs.CA, kind string) (target string, b *brpcServer, stop func(), err error) {
	switch kind {
	case idleQUIC, idleTCP:
		b, err = startBRPCServer(ca, strings.TrimPrefix(kind, "brpc-"))
		if err != nil {
			return "", nil, nil, err
		}
		f, err := dialBRPC(ctx, ca, b.target, nil)
		if err != nil {
			b.stop()
			return "", nil, nil, err
		}
		f.Close()
		if err := b.waitPeers(ctx, 0); err != nil {
			b.stop()
			return "", nil, nil, err
		}
		return b.target, b, b.stop, nil
	case idleGRPC, idleGRPCTCP:
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", nil, nil, err
		}
		var opts []grpc.ServerOption
		creds := insecure.NewCredentials()
		if kind == idleGRPC {
			stls, err := serverTLS(ca)
			if err != nil {
				lis.Close()
				return "", nil, nil, err
			}
			opts = append(opts, grpc.Creds(credentials.NewTLS(stls)))
			creds = credentials.NewTLS(clientTLS(ca))
		}
		gs := grpc.NewServer(opts...)
		testpb.RegisterEchoServer(gs, echoServer{})
		served := make(chan struct{})
		go func() {
			defer close(served)
			_ = gs.Serve(lis)
		}()
		stop = func() { gs.Stop(); <-served }
		cc, err := dialGRPCIdle(ctx, creds, lis.Addr().String())
		if err != nil {
			stop()
			return "", nil, nil, err
		}
		cc.Close()
		return lis.Addr().String(), nil, stop, nil
	}
	return "", nil, nil, fmt.Errorf("unknown idle setup %q", kind)
}

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// fanout calls every connected client and returns the number of failed
// calls and the time until the last one ended. With workers > 0 that many
// goroutines share the calls; otherwise each client gets its own goroutine
// and all calls start at once.
func fanout(ctx context.Context, b *brpcServer, workers int, logf func(string, ...any)) (int64, time.Duration) {
	peers := b.srv.Peers()
	req := &testpb.EchoRequest{Payload: payload(16)}
	var (
		wg     sync.WaitGroup
		errs   atomic.Int64
		mu     sync.Mutex
		byCode = map[codes.Code]int{}
		sample = map[codes.Code]string{}
	)
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	start := time.Now()
	call := func(p brpc.Peer) {
		stub, err := b.srv.Client(p.ID)
		if err == nil {
			_, err = stub.Unary(ctx, req)
		}
		if err != nil {
			errs.Add(1)
			code := status.Code(err)
			mu.Lock()
			byCode[code]++
			if _, ok := sample[code]; !ok {
				sample[code] = err.Error()
			}
			mu.Unlock()
		}
	}
	if workers <= 0 {
		for _, p := range peers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				call(p)
			}()
		}
	} else {
		var next atomic.Int64
		for range min(workers, len(peers)) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := next.Add(1) - 1; i < int64(len(peers)); i = next.Add(1) - 1 {
					call(peers[i])
				}
			}()
		}
	}
	wg.Wait()
	took := time.Since(start)
	for code, n := range byCode {
		logf("    %d calls failed with %v, e.g. %s", n, code, sample[code])
	}
	return errs.Load(), took
}

// child is the process that holds the idle clients.
type child struct {
	cmd         *exec.Cmd
	stdin       io.WriteCloser
	drained     chan struct{}
	connectTime time.Duration
	// What each client costs the client process (heap + stacks, the
	// stacks, goroutines), measured as the server side is.
	clientBytes, clientStacks, clientGoroutines float64
}

// childOptions are what the client process does besides connecting.
type childOptions struct {
	// used: every brpc client makes one forward call once connected (a
	// plain grpc-go client always makes one, which connects it).
	used bool
}

func startChild(ctx context.Context, ca *certs.CA, kind, target string, n, dialers int, o childOptions) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	args := []string{childCommand, "-kind", kind, "-target", target,
		"-n", strconv.Itoa(n), "-dialers", strconv.Itoa(dialers)}
	if o.used {
		args = append(args, "-used")
	}
	args = append(args, "-forward-idle", forwardIdle.String())
	cmd := exec.Command(exe, args...)
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
	c := &child{cmd: cmd, stdin: stdin, drained: make(chan struct{})}
	ready := make(chan error, 1)
	go func() {
		defer close(c.drained)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "ready "); ok {
				var ns int64
				_, err := fmt.Sscanf(rest, "%d %f %f %f", &ns, &c.clientBytes, &c.clientStacks, &c.clientGoroutines)
				if err != nil || ns <= 0 {
					ready <- fmt.Errorf("child said %q", sc.Text())
				} else {
					c.connectTime = time.Duration(ns)
					ready <- nil
				}
				_, _ = io.Copy(io.Discard, stdout)
				return
			}
		}
		ready <- errors.New("the client process ended before its clients were connected")
	}()
	timeout := 60*time.Second + time.Duration(n)*10*time.Millisecond
	select {
	case err = <-ready:
	case <-time.After(timeout):
		err = fmt.Errorf("the client process did not connect %d clients within %v", n, timeout)
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		c.stop()
		return nil, err
	}
	return c, nil
}

// stop tells the child to close its clients and waits for it.
func (c *child) stop() {
	c.stdin.Close()
	done := make(chan struct{})
	go func() {
		<-c.drained
		_ = c.cmd.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		_ = c.cmd.Process.Kill()
		<-done
	}
}

// dialBRPC connects one brpc client, serving gs when it is not nil.
func dialBRPC(ctx context.Context, ca *certs.CA, target string, gs *grpc.Server) (*brpc.ClientConn, error) {
	return dialBRPCWith(ctx, clientTLS(ca).RootCAs, target, gs)
}

func dialBRPCWith(ctx context.Context, roots *x509.CertPool, target string, gs *grpc.Server) (*brpc.ClientConn, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	opts := []brpc.DialOption{brpc.WithTLSConfig(tlsWithRoots(roots)), brpc.WithForwardIdleTimeout(forwardIdle)}
	if gs != nil {
		opts = append(opts, brpc.WithServer(gs))
	}
	return brpc.Dial(ctx, target, opts...)
}

// dialGRPCIdle makes a plain grpc-go client and one call, which connects it.
func dialGRPCIdle(ctx context.Context, creds credentials.TransportCredentials, target string) (*grpc.ClientConn, error) {
	cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, err
	}
	if err := callOnce(ctx, testpb.NewEchoClient(cc)); err != nil {
		cc.Close()
		return nil, err
	}
	return cc, nil
}

// callOnce makes one 16 B unary call, waiting for the connection.
func callOnce(ctx context.Context, stub testpb.EchoClient) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err := stub.Unary(ctx, &testpb.EchoRequest{Payload: payload(16)}, grpc.WaitForReady(true))
	return err
}

// childProfileEnv names the file prefix of the child's CPU profiles
// (-child-cpuprofile).
const childProfileEnv = "BRPC_BENCH_CHILD_CPUPROFILE"

// startChildProfile starts a CPU profile to PREFIX-name.pprof when
// -child-cpuprofile asked for one, and returns what stops it.
func startChildProfile(name string) (stop func()) {
	prefix := os.Getenv(childProfileEnv)
	if prefix == "" {
		return func() {}
	}
	f, err := os.Create(prefix + "-" + name + ".pprof")
	if err != nil {
		return func() {}
	}
	if pprof.StartCPUProfile(f) != nil {
		f.Close()
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}

// childMain is the idle-client process: it connects n clients with dialers
// concurrent dialers, prints "ready <nanoseconds it took> <bytes> <stack
// bytes> <goroutines>" (the last three per client, as footprint measures
// them), holds the clients until its stdin closes, then closes them.
func childMain(args []string) int {
	fs := flag.NewFlagSet(childCommand, flag.ContinueOnError)
	kind := fs.String("kind", idleQUIC, "brpc-quic, brpc-tcp, grpc-go-tls or grpc-go-tcp")
	target := fs.String("target", "", "server address")
	used := fs.Bool("used", false, "every brpc client makes one forward call once connected")
	fs.DurationVar(&forwardIdle, "forward-idle", brpc.DefaultForwardIdleTimeout, "the brpc clients' WithForwardIdleTimeout")
	n := fs.Int("n", 1, "clients")
	dialers := fs.Int("dialers", 32, "concurrent dialers")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(os.Getenv(childCAEnv))) {
		fmt.Fprintln(os.Stderr, "idle-child: no CA certificate in", childCAEnv)
		return 2
	}
	ctx := context.Background()

	var (
		gs      *grpc.Server
		closers = make([]io.Closer, *n)
	)
	if isBRPC(*kind) {
		// One server for all clients: the fan-out calls land here.
		gs = grpc.NewServer()
		testpb.RegisterEchoServer(gs, echoServer{})
		defer gs.Stop()
	}
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	u0 := footprint()
	stopProfile := startChildProfile(*kind) // the connecting phase
	start := time.Now()
	for range max(*dialers, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= *n {
					return
				}
				var (
					c   io.Closer
					err error
				)
				switch *kind {
				case idleGRPC:
					c, err = dialGRPCIdle(ctx, credentials.NewTLS(tlsWithRoots(pool)), *target)
				case idleGRPCTCP:
					c, err = dialGRPCIdle(ctx, insecure.NewCredentials(), *target)
				default:
					var cc *brpc.ClientConn
					cc, err = dialBRPCWith(ctx, pool, *target, gs)
					// A handshake that timed out on a machine too busy to
					// answer it in time is tried again, as a reconnecting
					// client would, once; it is reported.
					if status.Code(err) == codes.Unavailable {
						fmt.Fprintf(os.Stderr, "idle-child: client %d: %v; dialing again\n", i, err)
						cc, err = dialBRPCWith(ctx, pool, *target, gs)
					}
					if err == nil {
						c = cc
						if *used {
							err = callOnce(ctx, testpb.NewEchoClient(cc))
						}
					}
				}
				if err != nil {
					if c != nil {
						c.Close()
					}
					errOnce.Do(func() { firstErr = fmt.Errorf("client %d: %w", i, err) })
					next.Store(int64(*n))
					return
				}
				closers[i] = c
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	stopProfile()
	defer startChildProfile(*kind + "-serve")() // the rest: the server's calls
	closeAll := func() { closeAllOf(closers) }
	if firstErr != nil {
		fmt.Fprintln(os.Stderr, "idle-child:", firstErr)
		closeAll()
		return 1
	}
	settle()
	g, b, st := perClient(u0, footprint(), *n)
	fmt.Printf("ready %d %.0f %.0f %.3f\n", took.Nanoseconds(), b, st, g)
	_, _ = io.Copy(io.Discard, os.Stdin)
	closeAll()
	return 0
}

func tlsWithRoots(roots *x509.CertPool) *tls.Config {
	return &tls.Config{RootCAs: roots, CurvePreferences: keyExchanges()}
}
