package ratelimit

import (
	"net"
	"net/netip"
	"testing"
	"testing/synctest"
	"time"
)

func udp(s string) net.Addr { return net.UDPAddrFromAddrPort(netip.MustParseAddrPort(s)) }

func TestBurstThenRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := New(2, 3, 0) // 2/s, bursts of 3
		a := udp("192.0.2.1:1000")
		for i := range 3 {
			if !l.Allow(a) {
				t.Fatalf("attempt %d of the burst refused", i+1)
			}
		}
		if l.Allow(a) {
			t.Fatal("attempt beyond the burst allowed")
		}
		time.Sleep(500 * time.Millisecond) // one token at 2/s
		if !l.Allow(a) {
			t.Fatal("refused after the bucket gained a token")
		}
		if l.Allow(a) {
			t.Fatal("allowed twice on one refilled token")
		}
		if !l.Allow(udp("192.0.2.2:1000")) {
			t.Fatal("another address was refused")
		}
	})
}

func TestKeys(t *testing.T) {
	for _, c := range []struct {
		a, b string
		same bool
	}{
		{"192.0.2.1:1", "192.0.2.1:2", true},                      // ports do not matter
		{"192.0.2.1:1", "192.0.2.2:1", false},                     // IPv4: whole address
		{"[2001:db8:1:2::1]:1", "[2001:db8:1:2:ffff::9]:1", true}, // one /64
		{"[2001:db8:1:2::1]:1", "[2001:db8:1:3::1]:1", false},     // another /64
		{"[::ffff:192.0.2.1]:1", "192.0.2.1:1", true},             // mapped IPv4 is IPv4
		{"[fe80::1%eth0]:1", "[fe80::2%eth1]:1", true},            // zones do not matter
	} {
		ka, kb := Key(udp(c.a)), Key(udp(c.b))
		if (ka == kb) != c.same {
			t.Errorf("Key(%s) = %v, Key(%s) = %v: same = %v, want %v", c.a, ka, c.b, kb, ka == kb, c.same)
		}
	}
	tcp := net.TCPAddrFromAddrPort(netip.MustParseAddrPort("[2001:db8::5]:7"))
	if Key(tcp) != Key(udp("[2001:db8::6]:8")) {
		t.Error("TCP and UDP addresses of one /64 have different keys")
	}
	if Key(nil) != (netip.Addr{}) {
		t.Error("a nil address has a key")
	}
}

func TestSixtyFourSharesABucket(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := New(1, 2, 0)
		if !l.Allow(udp("[2001:db8:0:1::1]:1")) || !l.Allow(udp("[2001:db8:0:1::2]:1")) {
			t.Fatal("burst refused")
		}
		if l.Allow(udp("[2001:db8:0:1:abcd::3]:1")) {
			t.Fatal("a third address of the same /64 got a fresh bucket")
		}
		if !l.Allow(udp("[2001:db8:0:2::1]:1")) {
			t.Fatal("a neighbouring /64 was refused")
		}
	})
}

// A flood from more addresses than the table holds, each throttled, keeps the
// table at its bound.
func TestTableStaysBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const max = 1000
		l := New(0.001, 1, max) // a bucket takes 1000 s to refill
		for i := range 20 * max {
			a := udp(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 1).String())
			if !l.Allow(a) {
				t.Fatalf("new address %v refused", a)
			}
			if n := l.Len(); n > max {
				t.Fatalf("after %d addresses the table holds %d keys, bound %d", i+1, n, max)
			}
		}
	})
}

// Admission into a full table of throttled addresses costs the same as into an
// empty one: nothing scans the table.
func TestAdmissionIntoAFullTableIsConstantTime(t *testing.T) {
	const max = DefaultMaxTracked
	l := New(0.001, 1, max)
	key := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}) }
	for i := range max {
		l.AllowKey(key(i))
	}
	const n = 20000
	start := time.Now()
	for i := range n {
		l.AllowKey(key(max + i))
	}
	// A scan of the table per admission (the cost this guards against) makes
	// this take minutes; constant-time admissions take milliseconds.
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("%d admissions into a full table of %d took %v", n, max, d)
	}
	if got := l.Len(); got != max {
		t.Fatalf("table holds %d keys, want %d", got, max)
	}
}

func TestRefilledEntriesExpire(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := New(10, 1, 0) // refills in 100 ms
		for i := range 50 {
			l.AllowKey(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}))
		}
		if l.Len() != 50 {
			t.Fatalf("Len = %d, want 50", l.Len())
		}
		time.Sleep(time.Second)
		// Each admission drops a few refilled entries from the old end.
		for i := range 20 {
			l.AllowKey(netip.AddrFrom4([4]byte{10, 1, 0, byte(i)}))
		}
		if l.Len() >= 50 {
			t.Fatalf("refilled entries were not dropped: Len = %d", l.Len())
		}
	})
}

// When the table is full of throttled addresses, the least recently seen one
// makes room; the most recent ones stay throttled.
func TestFullTableForgetsTheLeastRecent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := New(0.001, 1, 2)
		a, b, c := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3")
		l.AllowKey(a)
		l.AllowKey(b)
		if l.AllowKey(a) { // a is now the most recent, and throttled
			t.Fatal("a allowed twice")
		}
		l.AllowKey(c) // forgets b, the least recent
		if l.AllowKey(a) {
			t.Fatal("a was forgotten although b was seen longer ago")
		}
		if !l.AllowKey(b) {
			t.Fatal("b is still tracked in a table of two after a and c")
		}
	})
}

func TestNoLimit(t *testing.T) {
	if New(0, 5, 0) != nil || New(5, 0, 0) != nil {
		t.Fatal("a limiter without rate or burst should be nil (no limit)")
	}
}

func BenchmarkAllowFullTable(b *testing.B) {
	l := New(0.001, 1, DefaultMaxTracked)
	for i := 0; b.Loop(); i++ {
		l.AllowKey(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
	}
}
