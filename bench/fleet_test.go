package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestFleetShortRun runs the fleet measurement with a handful of clients
// and checks that every setup and the storms made a row, with no failed
// call and every client back.
func TestFleetShortRun(t *testing.T) {
	var out, logs bytes.Buffer
	if err := fleetMain([]string{"-n", "4", "-dialers", "2", "-probe-rate", "50"}, &out, &logs); err != nil {
		t.Fatalf("fleet: %v\n%s", err, logs.String())
	}
	table := out.String()
	t.Logf("\n%s", table)
	for _, kind := range allFleet {
		if strings.Count(table, "| "+kind+" |") < 1 {
			t.Errorf("no row for %s", kind)
		}
	}
	for _, kind := range []string{idleQUIC, idleTCP} {
		if n := strings.Count(table, "| "+kind+" |"); n != 2 {
			t.Errorf("%d rows for %s, want 2 (fan-out and storm)", n, kind)
		}
	}
	if strings.Contains(table, "only ") {
		t.Errorf("a storm left clients behind:\n%s", table)
	}
	for _, line := range strings.Split(table, "\n") {
		if strings.HasPrefix(line, "| brpc") && strings.Count(line, "|") == 13 && !strings.HasSuffix(line, "| 0, 0 |") {
			t.Errorf("failed calls: %s", line)
		}
	}
}
