package client

import (
	"context"
	"slices"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParseTarget(t *testing.T) {
	for _, tc := range []struct {
		target, scheme string
		hostports      []string
		code           codes.Code
	}{
		{"quic://h:1", "quic", []string{"h:1"}, codes.OK},
		{"tcp://h:1", "tcp", []string{"h:1"}, codes.OK},
		{"h:1", "", []string{"h:1"}, codes.OK},
		{"quic://a:1,b:2", "quic", []string{"a:1", "b:2"}, codes.OK},
		{"tcp://a:1,b:2,c:3", "tcp", []string{"a:1", "b:2", "c:3"}, codes.OK},
		{"a:1,b:2", "", []string{"a:1", "b:2"}, codes.OK},
		{"a:1, b:2 ", "", []string{"a:1", "b:2"}, codes.OK},
		{"[::1]:1,[::1]:2", "", []string{"[::1]:1", "[::1]:2"}, codes.OK},
		{"http://h:1", "", nil, codes.InvalidArgument},
		{"h", "", nil, codes.InvalidArgument},
		{"", "", nil, codes.InvalidArgument},
		{"quic://", "", nil, codes.InvalidArgument},
		{"a:1,", "", nil, codes.InvalidArgument},
		{",a:1", "", nil, codes.InvalidArgument},
		{"a:1,,b:2", "", nil, codes.InvalidArgument},
		{"quic://a:1,tcp://b:2", "", nil, codes.InvalidArgument},
		{"quic://a:1,quic://b:2", "", nil, codes.InvalidArgument},
		{"a:1,quic://b:2", "", nil, codes.InvalidArgument},
		{"a:1,b", "", nil, codes.InvalidArgument},
	} {
		scheme, hostports, err := ParseTarget(tc.target)
		if status.Code(err) != tc.code || scheme != tc.scheme || !slices.Equal(hostports, tc.hostports) {
			t.Errorf("ParseTarget(%q) = %q, %q, %v; want %q, %q, %v", tc.target, scheme, hostports, err, tc.scheme, tc.hostports, tc.code)
		}
	}
}

func TestEndpointOrderStartsAnywhereAndPutsTheAvoidedLast(t *testing.T) {
	firsts := map[int]bool{}
	for range 200 {
		order := endpointOrder(4, -1)
		firsts[order[0]] = true
		for i := 1; i < len(order); i++ {
			if order[i] != (order[i-1]+1)%4 {
				t.Fatalf("endpointOrder(4, -1) = %v, want consecutive endpoints from a random one", order)
			}
		}
		if avoided := endpointOrder(4, 2); len(avoided) != 4 || avoided[3] != 2 {
			t.Fatalf("endpointOrder(4, 2) = %v, want all four with 2 last", avoided)
		}
	}
	if len(firsts) != 4 {
		t.Errorf("in 200 orders the first endpoint was only ever one of %v, want each of the 4", firsts)
	}
}

func TestEndpointContextSharesTheDeadline(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 9*time.Second)
	defer cancel()
	actx, acancel := endpointContext(ctx, 3)
	defer acancel()
	dl, ok := actx.Deadline()
	if left := time.Until(dl); !ok || left > 3*time.Second || left < 2*time.Second {
		t.Errorf("the first of 3 endpoints with 9s left gets %v (deadline: %v), want about 3s", left, ok)
	}
	lctx, lcancel := endpointContext(ctx, 1)
	defer lcancel()
	if dl, _ := lctx.Deadline(); time.Until(dl) < 8*time.Second {
		t.Errorf("the last endpoint gets %v, want all that is left", time.Until(dl))
	}
	nctx, ncancel := endpointContext(context.Background(), 3)
	defer ncancel()
	if dl, ok := nctx.Deadline(); !ok || time.Until(dl) > minConnectTimeout {
		t.Errorf("without a deadline on ctx an endpoint attempt gets %v (deadline: %v), want at most %v", time.Until(dl), ok, minConnectTimeout)
	}
	lctx2, lcancel2 := endpointContext(context.WithoutCancel(ctx), 1)
	defer lcancel2()
	if dl, ok := lctx2.Deadline(); !ok || time.Until(dl) > minConnectTimeout {
		t.Errorf("the last endpoint of a list without a deadline gets %v (deadline: %v), want at most %v", time.Until(dl), ok, minConnectTimeout)
	}
	long, lcancelLong := context.WithTimeout(context.Background(), time.Hour)
	defer lcancelLong()
	cctx, ccancel := endpointContext(long, 2)
	defer ccancel()
	if dl, _ := cctx.Deadline(); time.Until(dl) > minConnectTimeout {
		t.Errorf("the first of 2 endpoints with an hour left gets %v, want at most %v", time.Until(dl), minConnectTimeout)
	}
}

func TestBackoffDelayGrowsWithinJitterUpToTheCap(t *testing.T) {
	bc := backoff.Config{BaseDelay: time.Second, Multiplier: 2, Jitter: 0.2, MaxDelay: 10 * time.Second}
	for _, tc := range []struct {
		retries int
		base    time.Duration
	}{
		{0, time.Second},
		{1, 2 * time.Second},
		{3, 8 * time.Second},
		{4, 10 * time.Second},
		{50, 10 * time.Second},
	} {
		lo, hi := time.Duration(float64(tc.base)*0.8), time.Duration(float64(tc.base)*1.2)
		for range 100 {
			if d := backoffDelay(bc, tc.retries); d < lo || d > hi {
				t.Fatalf("backoffDelay(retries %d) = %v, want within [%v, %v]", tc.retries, d, lo, hi)
			}
		}
	}
}
