package client

import (
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
		target, scheme, hostport string
		code                     codes.Code
	}{
		{"quic://h:1", "quic", "h:1", codes.OK},
		{"tcp://h:1", "tcp", "h:1", codes.OK},
		{"h:1", "", "h:1", codes.OK},
		{"http://h:1", "", "", codes.InvalidArgument},
	} {
		scheme, hostport, err := ParseTarget(tc.target)
		if status.Code(err) != tc.code || scheme != tc.scheme || hostport != tc.hostport {
			t.Errorf("ParseTarget(%q) = %q, %q, %v; want %q, %q, %v", tc.target, scheme, hostport, err, tc.scheme, tc.hostport, tc.code)
		}
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
