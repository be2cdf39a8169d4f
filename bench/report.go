package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

var metricTitles = map[string]string{
	mLat16:      "p50 16 B",
	mLat64K:     "p50 64 KiB",
	mCalls:      "calls/s, %d callers, 16 B",
	mBulkUnary:  "MB/s, %s unary ×%d",
	mBulkStream: "MB/s, %s stream",
}

func (r *report) metricTitle(m string) string {
	switch m {
	case mCalls:
		return fmt.Sprintf(metricTitles[m], r.cfg.callers)
	case mBulkUnary:
		return fmt.Sprintf(metricTitles[m], sizeName(r.cfg.bulkSize), r.cfg.bulkCallers)
	case mBulkStream:
		return fmt.Sprintf(metricTitles[m], sizeName(r.cfg.bulkSize))
	}
	return metricTitles[m]
}

func sizeName(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

func isQUIC(path string) bool { return strings.HasPrefix(path, "brpc-quic") }

// ratio is a path's figure over the baseline's, taken within each round.
func (r *report) ratio(path, metric string) (float64, bool) {
	return r.ratioOf(path, metric, baselinePath, metric)
}

// rawRatio is a QUIC path's figure over the raw quic-go one of the same
// round: the echo latency, or the single-stream transfer for bulk.
func (r *report) rawRatio(path, metric string) (float64, bool) {
	if !isQUIC(path) || metric == mCalls {
		return 0, false
	}
	ref := metric
	if metric == mBulkUnary {
		ref = mBulkStream
	}
	return r.ratioOf(path, metric, pathRawQUIC, ref)
}

func (r *report) cell(p pathSpec, m string) string {
	if !applies(p, m) {
		return "—"
	}
	v, ok := r.value(p.key, m)
	if !ok {
		return "not run"
	}
	var s string
	switch m {
	case mLat16, mLat64K:
		s = fmt.Sprintf("%.1f µs", v*1e6)
	case mCalls:
		s = fmt.Sprintf("%.0f", v)
	default:
		s = fmt.Sprintf("%.0f", v/1e6)
	}
	var ratios []string
	if q, ok := r.ratio(p.key, m); ok {
		ratios = append(ratios, fmt.Sprintf("%.2fx", q))
	}
	if q, ok := r.rawRatio(p.key, m); ok {
		ratios = append(ratios, fmt.Sprintf("%.2fx raw", q))
	}
	if len(ratios) > 0 {
		s += " (" + strings.Join(ratios, ", ") + ")"
	}
	return s
}

func printReport(w io.Writer, r *report) {
	fmt.Fprintf(w, "brpc vs grpc-go, loopback: %s\n", header(r))
	if slices.ContainsFunc(rpcMetrics, func(m string) bool { return r.cfg.metrics[m] }) {
		r.printMain(w)
	}
	if len(r.measuredGatewayTransports()) > 0 {
		r.printGateway(w)
	}
	r.printRelayRef(w)

	if len(r.idle) > 0 {
		fmt.Fprintf(w, "\nIdle clients (held by a child process), cost on the server after GC (heap + goroutine stacks):\n\n")
		if len(r.idle) > 1 || r.rpcMeasured() {
			fmt.Fprint(w, reusedNote)
		}
		fmt.Fprintln(w, "| server | clients | KiB/client (stacks) | goroutines/client | connect rate | fan-out 1st | fan-out 2nd | KiB/client after fan-out (stacks) | goroutines/client after fan-out | KiB/client after release (stacks) | goroutines/client after release | client process: KiB/client (stacks), goroutines/client |")
		fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|")
		for _, x := range r.idle {
			fan1, fan2, kib2, g2, kib3, g3 := "n/a", "n/a", "n/a", "n/a", "n/a", "n/a"
			if x.kind != idleGRPC {
				fan1, fan2 = fmtDur(x.fanoutCold), fmtDur(x.fanoutWarm)
				if x.fanoutColdErrors > 0 {
					fan1 += fmt.Sprintf(" (%d calls failed)", x.fanoutColdErrors)
				}
				if x.fanoutWarmErrors > 0 {
					fan2 += fmt.Sprintf(" (%d calls failed)", x.fanoutWarmErrors)
				}
				kib2 = fmt.Sprintf("%.1f (%.1f)", x.bytesAfterFanout/1024, x.stacksAfterFanout/1024)
				g2 = fmt.Sprintf("%.2f", x.goroutinesAfterFanout)
				kib3 = fmt.Sprintf("%.1f (%.1f)", x.bytesAfterRelease/1024, x.stacksAfterRelease/1024)
				g3 = fmt.Sprintf("%.2f", x.goroutinesAfterRelease)
			}
			fmt.Fprintf(w, "| %s | %d | %.1f (%.1f) | %.3f | %.0f/s | %s | %s | %s | %s | %s | %s | %.1f (%.1f), %.3f |\n",
				idleLabels[x.kind], x.clients, x.bytesPerClient/1024, x.stacksPerClient/1024, x.goroutinesPerClient, x.connectRate, fan1, fan2, kib2, g2, kib3, g3,
				x.clientBytes/1024, x.clientStacks/1024, x.clientGoroutines)
		}
	}

	if len(r.used) > 0 {
		r.printUsed(w)
	}

	targets := append(r.targets(), r.usedTargets()...)
	if len(targets) > 0 {
		fmt.Fprintf(w, "\nTargets:\n\n")
		fmt.Fprintln(w, "| target | path | measured | needed | verdict |")
		fmt.Fprintln(w, "|---|---|---|---|---|")
		for _, t := range targets {
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", t.name, t.path, t.measured, t.needed, t.verdict)
		}
	}
}

func (r *report) printMain(w io.Writer) {
	fmt.Fprintf(w, "\nRatios in parentheses are against grpc-go TLS-TCP in this run; \"raw\" is against raw quic-go on one stream (length-prefixed echo for latency, a single-stream transfer for bulk). Latency: the payload goes both ways. MB = 10^6 bytes.\n\n")
	fmt.Fprintf(w, "| path |")
	for _, m := range rpcMetrics {
		fmt.Fprintf(w, " %s |", r.metricTitle(m))
	}
	fmt.Fprintf(w, "\n|---|")
	for range rpcMetrics {
		fmt.Fprintf(w, "---|")
	}
	fmt.Fprintln(w)
	for _, p := range r.paths {
		fmt.Fprintf(w, "| %s |", p.label)
		for _, m := range rpcMetrics {
			fmt.Fprintf(w, " %s |", r.cell(p, m))
		}
		fmt.Fprintln(w)
	}
}

func fmtDur(d time.Duration) string {
	if d >= time.Second {
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
	return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond))
}

type targetRow struct {
	name, path, measured, needed, verdict string
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

// targets evaluates the targets on what this run measured.
func (r *report) targets() []targetRow {
	var out []targetRow
	for _, p := range r.paths {
		if !strings.HasPrefix(p.key, "brpc-") {
			continue
		}
		quic := isQUIC(p.key)
		latMax, rateMin, bulkMin := 1.15, 0.9, 0.8
		if quic {
			latMax, rateMin, bulkMin = 1.5, 0.8, 0.9
		}
		for _, m := range []string{mLat16, mLat64K} {
			if q, ok := r.ratio(p.key, m); ok {
				out = append(out, targetRow{"unary " + metricTitles[m] + " latency", p.label,
					fmt.Sprintf("%.2fx", q), fmt.Sprintf("≤ %.2fx", latMax), verdict(q <= latMax)})
			}
		}
		if q, ok := r.ratio(p.key, mCalls); ok {
			out = append(out, targetRow{r.metricTitle(mCalls), p.label,
				fmt.Sprintf("%.2fx", q), fmt.Sprintf("≥ %.2fx", rateMin), verdict(q >= rateMin)})
		}
		for _, m := range []string{mBulkUnary, mBulkStream} {
			name := "bulk, " + r.metricTitle(m)
			if m == mBulkStream {
				name += " (streaming variant)"
			}
			var (
				q  float64
				ok bool
			)
			against := "grpc-go TLS"
			if quic {
				q, ok = r.rawRatio(p.key, m)
				against = "raw quic-go"
			} else {
				q, ok = r.ratio(p.key, m)
			}
			if ok {
				out = append(out, targetRow{name, p.label, fmt.Sprintf("%.2fx of %s", q, against),
					fmt.Sprintf("≥ %.2fx", bulkMin), verdict(q >= bulkMin)})
			}
		}
	}
	out = append(out, r.gatewayTargets()...)
	for _, x := range r.idle {
		if x.kind == idleGRPC {
			continue
		}
		label := idleLabels[x.kind]
		at := fmt.Sprintf(" (at %d clients)", x.clients)
		maxKiB := 32.0
		if x.kind == idleQUIC {
			maxKiB = 48
		}
		kib := x.bytesPerClient / 1024
		out = append(out,
			targetRow{"server heap+stacks per idle client" + at, label, fmt.Sprintf("%.1f KiB", kib), fmt.Sprintf("≤ %.0f KiB", maxKiB), verdict(kib <= maxKiB)},
			// A goroutine or two of the process may come and go between
			// the two readings (timers, runtime workers): allow for two.
			targetRow{"goroutines per idle client" + at, label, fmt.Sprintf("%.3f", x.goroutinesPerClient), "≤ 4", verdict(x.goroutinesPerClient <= 4+2/float64(x.clients))},
			targetRow{"connect rate" + at, label, fmt.Sprintf("%.0f/s", x.connectRate), "≥ 1000/s", verdict(x.connectRate >= 1000)},
			targetRow{"fan-out unary call to every client, first time" + at, label, fmtDur(x.fanoutCold) + fmt.Sprintf(", %d failed", x.fanoutColdErrors), "≤ 1 s, none failed", verdict(x.fanoutCold <= time.Second && x.fanoutColdErrors == 0)},
		)
		scale := targetRow{"10,000 clients connected to one server", label, fmt.Sprintf("%d connected", x.clients), "10,000", "not measured (run with -idle 10000)"}
		if x.clients >= 10000 {
			scale.verdict = "met"
		}
		out = append(out, scale)
	}
	return out
}
