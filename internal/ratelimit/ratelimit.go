// Package ratelimit limits connection attempts per network address with a
// token bucket each, in a table of bounded size.
//
// The table is what an attacker with many addresses aims at, so every
// operation on it is O(1): an address is found through a map, and entries are
// kept in least-recently-used order so that the table never has to be
// scanned. An entry whose bucket has refilled says nothing an empty table
// would not, so such entries are dropped as admissions pass them; when the
// table is full of addresses that are all still throttled, the one seen
// longest ago is forgotten to make room. An address that is forgotten that way
// gets a full bucket again the next time: under a flood from more addresses
// than the table holds, the limit applies to the most recent ones, and the
// memory stays bounded either way.
//
// IPv4 addresses are keyed by the whole address, IPv6 addresses by their /64
// prefix: a single host is commonly given a whole /64, so per-address keys
// would give it 2^64 buckets.
package ratelimit

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// DefaultMaxTracked is the table size used when New is given no positive
// size: about 64 bytes of key and bucket each, a few MiB in all.
const DefaultMaxTracked = 1 << 16

// Limiter admits connection attempts per address key at an average rate with
// bursts. The zero value is not usable; use New.
type Limiter struct {
	rate  float64 // tokens per second
	burst float64
	max   int
	now   func() time.Time

	mu   sync.Mutex
	keys map[netip.Addr]*entry
	// head is the most recently used entry, tail the least; the list is
	// doubly linked through the entries themselves.
	head, tail *entry
}

type entry struct {
	key        netip.Addr
	tokens     float64
	last       time.Time // when tokens was computed
	prev, next *entry
}

// New returns a limiter allowing perSecond attempts per key on average and
// bursts of burst, tracking at most maxTracked keys (DefaultMaxTracked when
// not positive). It returns nil when perSecond or burst is not positive: no
// limit.
func New(perSecond float64, burst, maxTracked int) *Limiter {
	if perSecond <= 0 || burst <= 0 {
		return nil
	}
	if maxTracked <= 0 {
		maxTracked = DefaultMaxTracked
	}
	return &Limiter{
		rate:  perSecond,
		burst: float64(burst),
		max:   maxTracked,
		now:   time.Now,
		keys:  make(map[netip.Addr]*entry),
	}
}

// Allow takes a token for addr's key and reports whether there was one.
// Addresses that are neither UDP, TCP nor parseable as host:port share one
// key.
func (l *Limiter) Allow(addr net.Addr) bool {
	return l.AllowKey(Key(addr))
}

// AllowKey is Allow for a key made by Key.
func (l *Limiter) AllowKey(key netip.Addr) bool {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.expireLocked(now)
	e, ok := l.keys[key]
	if ok {
		l.unlinkLocked(e)
		e.tokens = min(l.burst, e.tokens+now.Sub(e.last).Seconds()*l.rate)
		e.last = now
	} else {
		if len(l.keys) >= l.max {
			old := l.tail
			l.unlinkLocked(old)
			delete(l.keys, old.key)
		}
		e = &entry{key: key, tokens: l.burst, last: now}
		l.keys[key] = e
	}
	l.pushFrontLocked(e)
	if e.tokens < 1 {
		return false
	}
	e.tokens--
	return true
}

// Len is the number of keys tracked now.
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.keys)
}

// expireLocked drops, from the least recently used end, entries whose bucket
// is full again by now: forgetting them changes nothing for their
// addresses. It stops at the first entry that is not full, and after a few
// entries in any case, so an admission's cost stays constant; entries it
// leaves behind are dropped by later admissions, or make room when the table
// is full.
func (l *Limiter) expireLocked(now time.Time) {
	const maxPerCall = 8
	for i := 0; i < maxPerCall && l.tail != nil; i++ {
		e := l.tail
		if e.tokens+now.Sub(e.last).Seconds()*l.rate < l.burst {
			return
		}
		l.unlinkLocked(e)
		delete(l.keys, e.key)
	}
}

func (l *Limiter) unlinkLocked(e *entry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		l.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		l.tail = e.prev
	}
	e.prev, e.next = nil, nil
}

func (l *Limiter) pushFrontLocked(e *entry) {
	e.next = l.head
	if l.head != nil {
		l.head.prev = e
	}
	l.head = e
	if l.tail == nil {
		l.tail = e
	}
}

// Key is the rate-limit key of addr: the IPv4 address, or the /64 prefix of
// an IPv6 address (as the prefix's first address). IPv4-mapped IPv6
// addresses count as IPv4.
func Key(addr net.Addr) netip.Addr {
	var ip netip.Addr
	switch a := addr.(type) {
	case *net.UDPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	case *net.TCPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	default:
		if addr == nil {
			return netip.Addr{}
		}
		ap, err := netip.ParseAddrPort(addr.String())
		if err != nil {
			return netip.Addr{}
		}
		ip = ap.Addr()
	}
	ip = ip.Unmap()
	if ip.Is6() {
		p, err := ip.WithZone("").Prefix(64)
		if err == nil {
			return p.Addr()
		}
	}
	return ip
}
