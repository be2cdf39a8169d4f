package main

import (
	"bytes"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// The idle measurement re-executes this binary as its client process.
	if len(os.Args) > 1 && os.Args[1] == childCommand {
		os.Exit(childMain(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == fleetChildCommand {
		os.Exit(fleetChildMain(os.Args[2:]))
	}
	goleak.VerifyTestMain(m)
}

// TestShortRun runs the whole benchmark with tiny counts and checks that
// every figure of every path was measured and is positive.
func TestShortRun(t *testing.T) {
	chart := filepath.Join(t.TempDir(), "chart.png")
	var out, logs bytes.Buffer
	rep, err := run([]string{"-short", "-png", chart}, &out, &logs)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, logs.String())
	}
	table := out.String()
	t.Logf("\n%s", table)

	if len(rep.paths) != len(allPaths()) {
		t.Errorf("%d paths measured, want %d", len(rep.paths), len(allPaths()))
	}
	for _, p := range allPaths() {
		if !strings.Contains(table, "| "+p.label+" |") {
			t.Errorf("no row for %s in the table", p.label)
		}
		for _, m := range rpcMetrics {
			v, ok := rep.value(p.key, m)
			if applies(p, m) && (!ok || !(v > 0)) {
				t.Errorf("%s %s = %v (measured: %v), want a positive figure", p.key, m, v, ok)
			}
			if !applies(p, m) && ok {
				t.Errorf("%s %s was measured but does not apply", p.key, m)
			}
		}
	}

	if !strings.Contains(table, "Gateway against a direct call") {
		t.Error("no gateway table")
	}
	for _, tr := range gatewayTransports {
		for _, variant := range gatewayVariants {
			for _, m := range gatewayFigures {
				if v, ok := rep.value(gatewayKey(tr.transport, variant), m); !ok || !(v > 0) {
					t.Errorf("gateway %s %s %s = %v (measured: %v), want a positive figure", tr.transport, variant, m, v, ok)
				}
			}
			if variant == gwDirect {
				continue
			}
			for _, m := range gatewayFigures {
				if m == mCPU && variant != gwPlain {
					continue
				}
				if q, ok := rep.gatewayFloor(tr.transport, variant, m); !ok || !(q > 0) {
					t.Errorf("gateway %s %s %s: floor %v (computed: %v), want a positive ratio", tr.transport, variant, m, q, ok)
				}
			}
		}
	}
	for _, variant := range refVariants {
		for _, m := range gatewayFigures {
			if v, ok := rep.value(refKey(variant), m); !ok || !(v > 0) {
				t.Errorf("relay reference %s %s = %v (measured: %v), want a positive figure", variant, m, v, ok)
			}
		}
		if !strings.Contains(table, "| "+refVariantLabels[variant]+" |") {
			t.Errorf("no row for the relay reference's %s", variant)
		}
	}

	if len(rep.idle) != 3 {
		t.Fatalf("%d idle setups measured, want 3", len(rep.idle))
	}
	for _, x := range rep.idle {
		if !strings.Contains(table, "| "+idleLabels[x.kind]+" |") {
			t.Errorf("no idle row for %s in the table", x.kind)
		}
		if !(x.clientBytes > 0) || !(x.clientGoroutines > 0) {
			t.Errorf("idle %s: the client process reported %v bytes and %v goroutines per client: want both positive",
				x.kind, x.clientBytes, x.clientGoroutines)
		}
		if x.clients <= 0 || !(x.connectRate > 0) || !(x.bytesPerClient > 0) || !(x.goroutinesPerClient > 0) {
			t.Errorf("idle %s: clients %d, connect rate %v, bytes %v, goroutines %v: want all positive",
				x.kind, x.clients, x.connectRate, x.bytesPerClient, x.goroutinesPerClient)
		}
		if x.kind != idleGRPC {
			if x.fanoutCold <= 0 || x.fanoutWarm <= 0 || x.fanoutColdErrors != 0 || x.fanoutWarmErrors != 0 {
				t.Errorf("idle %s: fan-out %v then %v with %d and %d errors: want two positive times, no errors",
					x.kind, x.fanoutCold, x.fanoutWarm, x.fanoutColdErrors, x.fanoutWarmErrors)
			}
			// Each client's reverse connection adds goroutines while it is
			// open and none once the server has released it; the server's
			// one shared reverse connection keeps its own three.
			shared := 3 / float64(x.clients)
			if !(x.goroutinesAfterFanout > x.goroutinesPerClient+1) || !(x.goroutinesAfterRelease < x.goroutinesPerClient+0.5+shared) {
				t.Errorf("idle %s: goroutines per client %.2f idle, %.2f after the fan-outs, %.2f after the release: want more after the fan-outs and back to the idle count after the release",
					x.kind, x.goroutinesPerClient, x.goroutinesAfterFanout, x.goroutinesAfterRelease)
			}
		}
	}
	if len(rep.used) != len(allUsed) {
		t.Fatalf("%d used-client setups measured, want %d", len(rep.used), len(allUsed))
	}
	for _, x := range rep.used {
		if !(x.bytesPerClient > 0) || !(x.goroutinesPerClient > 0) || x.reverseErrors != 0 {
			t.Errorf("used %s: %v bytes, %v goroutines per client, %d reverse calls failed: want positive figures and no failure",
				x.kind, x.bytesPerClient, x.goroutinesPerClient, x.reverseErrors)
		}
		if isBRPC(x.kind) && (x.warmForward <= 0 || x.coldForward <= 0 || x.warmReverse <= 0 || x.coldReverse <= 0) {
			t.Errorf("used %s: warm and first-after-release calls: forward %v, %v, reverse %v, %v: want all timed",
				x.kind, x.warmForward, x.coldForward, x.warmReverse, x.coldReverse)
		}
		if isBRPC(x.kind) && (!x.released || !(x.goroutinesAfterRelease < x.goroutinesPerClient)) {
			t.Errorf("used %s: goroutines per client %.2f used, %.2f after the idle timeouts (measured: %v): want fewer after",
				x.kind, x.goroutinesPerClient, x.goroutinesAfterRelease, x.released)
		}
	}
	if !strings.Contains(table, "Targets") {
		t.Error("no targets table")
	}

	f, err := os.Open(chart)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("chart: %v", err)
	}
	if b := img.Bounds(); b.Dx() < 100 || b.Dy() < 100 {
		t.Errorf("chart is %v, want a real image", b)
	}
}

func TestFlags(t *testing.T) {
	var logs bytes.Buffer
	if _, err := parseFlags([]string{"-paths", "nope"}, &logs); err == nil {
		t.Error("an unknown path was accepted")
	}
	if _, err := parseFlags([]string{"-metrics", "nope"}, &logs); err == nil {
		t.Error("an unknown figure was accepted")
	}
	c, err := parseFlags([]string{"-short", "-calls", "7"}, &logs)
	if err != nil {
		t.Fatal(err)
	}
	if c.calls != 7 || c.rounds != 1 || c.idle <= 0 {
		t.Errorf("-short -calls 7: calls %d, rounds %d, idle %d; want 7, 1 and a few idle clients", c.calls, c.rounds, c.idle)
	}
}
