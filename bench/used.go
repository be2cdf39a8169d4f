package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/certs"
	"github.com/brpc-go/brpc/internal/testpb"
)

// releaseRounds is how many first calls after a release are timed each way.
var releaseRounds = 15

// usedQuiet is how long the used clients stay quiet before they are
// counted: one keepalive interval (brpc's default) and a second.
var usedQuiet = 11 * time.Second

// allUsed are the servers of the used-client figures: brpc on both
// transports and plain grpc-go with and without TLS as the reference.
var allUsed = []string{idleQUIC, idleTCP, idleGRPCTCP, idleGRPC}

// usedResult is what N clients that have been used cost one server: each
// made one forward call and (brpc) served one reverse call, and then all
// stay idle with their gRPC connections open.
type usedResult struct {
	kind    string
	clients int
	// Per used client on the server after GC: heap plus goroutine stacks,
	// the stacks alone, and goroutines.
	bytesPerClient, stacksPerClient, goroutinesPerClient float64
	// reverseErrors counts the reverse calls that failed (brpc only).
	reverseErrors int64
	// brpc only: the same once both directions' idle timeouts have passed
	// (releaseWait after the calls).
	released                              bool
	releaseWait                           time.Duration
	bytesAfterRelease, stacksAfterRelease float64
	goroutinesAfterRelease                float64
	// What each client costs the client process, measured as on the server.
	clientBytes, clientStacks, clientGoroutines float64
	// brpc only, on one client of its own: the median round trip of a warm
	// 16 B call and of the first call after the idle release, forward and
	// reverse, and the slowest first call.
	warmForward, coldForward, coldForwardMax time.Duration
	warmReverse, coldReverse, coldReverseMax time.Duration
}

// releaseIdle is the idle timeout, both ways, of the client on which the
// first call after a release is timed.
const releaseIdle = 200 * time.Millisecond

// measureAfterRelease times, on one brpc client of its own, warm calls and
// the first call once the idle timeouts have released the connection, in
// both directions.
func measureAfterRelease(ctx context.Context, ca *certs.CA, transport string, rounds int, res *usedResult) error {
	b, err := startBRPCServerIdle(ca, transport, releaseIdle)
	if err != nil {
		return err
	}
	defer b.stop()
	cgs := grpc.NewServer(grpcServerOptions()...)
	testpb.RegisterEchoServer(cgs, echoServer{})
	defer cgs.Stop()
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cc, err := brpc.Dial(dctx, b.target, brpc.WithTLSConfig(clientTLS(ca)), brpc.WithServer(cgs), brpc.WithForwardIdleTimeout(releaseIdle))
	if err != nil {
		return err
	}
	defer cc.Close()
	rev, err := b.srv.Client(cc.ID())
	if err != nil {
		return err
	}
	fwd := testpb.NewEchoClient(cc)
	if res.warmForward, err = measureLatency(ctx, fwd, 16, 50, 200); err != nil {
		return fmt.Errorf("warm forward calls: %w", err)
	}
	if res.warmReverse, err = measureLatency(ctx, rev, 16, 50, 200); err != nil {
		return fmt.Errorf("warm reverse calls: %w", err)
	}
	req := &testpb.EchoRequest{Payload: payload(16)}
	first := func(stub testpb.EchoClient) (time.Duration, error) {
		// Both directions' connections are released by then (grpc-go's
		// idle check and brpc's timer run within the timeout).
		time.Sleep(2*releaseIdle + 100*time.Millisecond)
		t := time.Now()
		_, err := stub.Unary(ctx, req)
		return time.Since(t), err
	}
	var fs, rs []float64
	for range rounds {
		d, err := first(fwd)
		if err != nil {
			return fmt.Errorf("forward call after the release: %w", err)
		}
		fs = append(fs, d.Seconds())
		if d, err = first(rev); err != nil {
			return fmt.Errorf("reverse call after the release: %w", err)
		}
		rs = append(rs, d.Seconds())
	}
	m, _ := median(fs)
	res.coldForward, res.coldForwardMax = secs(m), secs(slices.Max(fs))
	m, _ = median(rs)
	res.coldReverse, res.coldReverseMax = secs(m), secs(slices.Max(rs))
	return nil
}

func secs(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// measureUsed runs a server of the given kind, connects n clients to it
// from a child process, each of which makes one forward call; a brpc
// server then calls every client once. It measures what the used clients
// cost the server, and (brpc) again once both directions' idle timeouts
// have passed.
func measureUsed(ctx context.Context, ca *certs.CA, kind string, n, dialers, workers int, heapProfile string, logf func(string, ...any)) (*usedResult, error) {
	res := &usedResult{kind: kind, clients: n}
	target, b, stop, err := startIdleServer(ctx, ca, kind)
	if err != nil {
		return nil, err
	}
	defer stop()
	settle()
	u0 := footprint()

	child, err := startChild(ctx, ca, kind, target, n, dialers, childOptions{used: true})
	if err != nil {
		return nil, err
	}
	defer child.stop()
	res.clientBytes, res.clientStacks, res.clientGoroutines = child.clientBytes, child.clientStacks, child.clientGoroutines
	if b != nil {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := b.waitPeers(wctx, n)
		cancel()
		if err != nil {
			return nil, err
		}
		errs, took := fanout(ctx, b, workers, logf)
		res.reverseErrors = errs
		logf("  %s: reverse call to each of %d clients: %v, %d errors", kind, n, took.Round(time.Millisecond), errs)
	}
	// Quiet for a keepalive interval first: a used fleet stays idle far
	// longer than that with its connections open, and the TCP sessions
	// drop their streams' empty receive buffers at each keepalive ping.
	time.Sleep(usedQuiet)
	settle()
	res.goroutinesPerClient, res.bytesPerClient, res.stacksPerClient = perClient(u0, footprint(), n)
	logf("  %s: %d used clients: %.1f KiB (%.1f KiB stacks), %.3f goroutines each; the client process: %.1f KiB (%.1f KiB stacks), %.3f goroutines per client",
		kind, n, res.bytesPerClient/1024, res.stacksPerClient/1024, res.goroutinesPerClient,
		res.clientBytes/1024, res.clientStacks/1024, res.clientGoroutines)
	if heapProfile != "" {
		if err := writeHeapProfile(heapProfile + "-used-" + kind + ".pprof"); err != nil {
			return nil, err
		}
	}
	if b != nil {
		res.releaseWait = max(reverseIdle, forwardIdle) + time.Second
		time.Sleep(res.releaseWait)
		settle()
		res.released = true
		res.goroutinesAfterRelease, res.bytesAfterRelease, res.stacksAfterRelease = perClient(u0, footprint(), n)
		logf("  %s: %v later (idle timeouts passed): %.1f KiB (%.1f KiB stacks), %.3f goroutines each",
			kind, res.releaseWait, res.bytesAfterRelease/1024, res.stacksAfterRelease/1024, res.goroutinesAfterRelease)
		child.stop()
		if err := measureAfterRelease(ctx, ca, strings.TrimPrefix(kind, "brpc-"), releaseRounds, res); err != nil {
			return nil, err
		}
		logf("  %s: one client, 16 B: warm forward %v, first forward after the release %v (max %v); warm reverse %v, first reverse after the release %v (max %v)",
			kind, res.warmForward, res.coldForward, res.coldForwardMax, res.warmReverse, res.coldReverse, res.coldReverseMax)
	}
	return res, nil
}

func (r *report) printUsed(w io.Writer) {
	fmt.Fprintf(w, "\nUsed clients (held by a child process; each made one forward call and, on brpc, served one reverse call, then idle with both gRPC connections open), cost on the server after GC (heap + goroutine stacks):\n\n")
	if len(r.used) > 1 || len(r.idle) > 0 || r.rpcMeasured() {
		fmt.Fprint(w, reusedNote)
	}
	fmt.Fprintln(w, "| server | clients | KiB/client (stacks) | goroutines/client | KiB/client after the idle timeouts (stacks) | goroutines/client after the idle timeouts | client process: KiB/client (stacks), goroutines/client |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	for _, x := range r.used {
		kib, g := "n/a", "n/a"
		if x.released {
			kib = fmt.Sprintf("%.1f (%.1f)", x.bytesAfterRelease/1024, x.stacksAfterRelease/1024)
			g = fmt.Sprintf("%.3f", x.goroutinesAfterRelease)
		}
		used := fmt.Sprintf("%.1f (%.1f)", x.bytesPerClient/1024, x.stacksPerClient/1024)
		if x.reverseErrors > 0 {
			used += fmt.Sprintf(" (%d reverse calls failed)", x.reverseErrors)
		}
		fmt.Fprintf(w, "| %s | %d | %s | %.3f | %s | %s | %.1f (%.1f), %.3f |\n",
			idleLabels[x.kind], x.clients, used, x.goroutinesPerClient, kib, g,
			x.clientBytes/1024, x.clientStacks/1024, x.clientGoroutines)
	}
	if !slices.ContainsFunc(r.used, func(x *usedResult) bool { return x.released }) {
		return
	}
	fmt.Fprintf(w, "\nWhat the next call pays once a connection was released (one client, 16 B echo; median of %d first calls after both idle timeouts passed, slowest in parentheses, against the median of 200 warm calls):\n\n", releaseRounds)
	fmt.Fprintln(w, "| server | forward warm | forward first after release | reverse warm | reverse first after release |")
	fmt.Fprintln(w, "|---|---|---|---|---|")
	for _, x := range r.used {
		if x.released {
			fmt.Fprintf(w, "| %s | %s | %s (%s) | %s | %s (%s) |\n", idleLabels[x.kind],
				fmtMicros(x.warmForward), fmtMicros(x.coldForward), fmtMicros(x.coldForwardMax),
				fmtMicros(x.warmReverse), fmtMicros(x.coldReverse), fmtMicros(x.coldReverseMax))
		}
	}
}

// reusedNote warns that the rows of a memory table other than the first
// thing this process measured read low: the runtime never frees a
// goroutine's descriptor (about 0.4 KiB) but reuses it, so a server whose
// goroutines reuse those that earlier work left behind does not count
// them. A used TCP client read about 4 KiB less after the QUIC row than
// in a process of its own.
const reusedNote = "(Every row but the first thing this process measured reuses the goroutine descriptors, about 0.4 KiB each, that the runtime kept from earlier work and never frees, and reads lower by up to that much per goroutine: run one server per invocation, with no other figure, to compare across runs.)\n\n"

func fmtMicros(d time.Duration) string {
	return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
}

// usedTargets evaluates the used-client targets on what this run measured.
func (r *report) usedTargets() []targetRow {
	var out []targetRow
	for _, x := range r.used {
		if !isBRPC(x.kind) {
			continue
		}
		label := idleLabels[x.kind]
		at := fmt.Sprintf(" (at %d clients)", x.clients)
		maxKiB := 64.0
		if x.kind == idleQUIC {
			maxKiB = 80
		}
		kib := x.bytesPerClient / 1024
		// A goroutine or two of the process may come and go between the
		// readings, and the server's one shared reverse connection has
		// three of its own, whatever the number of clients.
		slack := 5 / float64(x.clients)
		out = append(out,
			targetRow{"server heap+stacks per used client" + at, label, fmt.Sprintf("%.1f KiB", kib), fmt.Sprintf("≤ %.0f KiB", maxKiB), verdict(kib <= maxKiB && x.reverseErrors == 0)},
			targetRow{"goroutines per used client" + at, label, fmt.Sprintf("%.3f", x.goroutinesPerClient), "≤ 8", verdict(x.goroutinesPerClient <= 8+slack)},
		)
		if x.released {
			out = append(out, targetRow{"goroutines per used client after the idle timeouts" + at, label,
				fmt.Sprintf("%.3f", x.goroutinesAfterRelease), "≤ 3 (the session alone)", verdict(x.goroutinesAfterRelease <= 3+slack)})
		}
	}
	return out
}
