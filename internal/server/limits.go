package server

import (
	"net"
	"sync/atomic"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc/internal/ratelimit"
)

// addressLimiter rate-limits new connections per remote address (IPv4
// address, IPv6 /64) in a bounded table whose admissions cost O(1).
type addressLimiter struct {
	lim *ratelimit.Limiter
}

func newAddressLimiter(perSecond float64, burst int) *addressLimiter {
	lim := ratelimit.New(perSecond, burst, ratelimit.DefaultMaxTracked)
	if lim == nil {
		return nil
	}
	return &addressLimiter{lim: lim}
}

// admit takes a token for addr's key, or returns a ResourceExhausted status.
func (a *addressLimiter) admit(addr net.Addr) error {
	key := ratelimit.Key(addr)
	if !a.lim.AllowKey(key) {
		return status.Errorf(codes.ResourceExhausted, "brpc: too many connection attempts from %s", key)
	}
	return nil
}

// gate counts work in progress against a cap (0: no cap).
type gate struct {
	max int64
	n   atomic.Int64
}

func (g *gate) enter() bool {
	if g.n.Add(1) > g.max && g.max > 0 {
		g.n.Add(-1)
		return false
	}
	return true
}

func (g *gate) leave() { g.n.Add(-1) }
