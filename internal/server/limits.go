package server

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// maxTrackedAddresses bounds the per-address limiters kept at once; beyond
// it, limiters whose buckets are full again (addresses that went quiet) are
// forgotten.
const maxTrackedAddresses = 1 << 16

// addressLimiter rate-limits new connections per remote IP address.
type addressLimiter struct {
	limit rate.Limit
	burst int

	mu    sync.Mutex
	perIP map[netip.Addr]*rate.Limiter
}

func newAddressLimiter(perSecond float64, burst int) *addressLimiter {
	if perSecond <= 0 || burst <= 0 {
		return nil
	}
	return &addressLimiter{limit: rate.Limit(perSecond), burst: burst, perIP: make(map[netip.Addr]*rate.Limiter)}
}

// admit takes a token for addr's IP, or returns a ResourceExhausted status.
func (a *addressLimiter) admit(addr net.Addr) error {
	ip := addrIP(addr)
	a.mu.Lock()
	defer a.mu.Unlock()
	lim, ok := a.perIP[ip]
	if !ok {
		if len(a.perIP) >= maxTrackedAddresses {
			a.sweepLocked()
		}
		lim = rate.NewLimiter(a.limit, a.burst)
		a.perIP[ip] = lim
	}
	if !lim.Allow() {
		return status.Errorf(codes.ResourceExhausted, "brpc: too many connection attempts from %s", ip)
	}
	return nil
}

// sweepLocked forgets addresses whose bucket has refilled: forgetting them
// changes nothing for them.
func (a *addressLimiter) sweepLocked() {
	for ip, lim := range a.perIP {
		if lim.Tokens() >= float64(a.burst) {
			delete(a.perIP, ip)
		}
	}
}

func addrIP(addr net.Addr) netip.Addr {
	switch a := addr.(type) {
	case *net.UDPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	}
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
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
