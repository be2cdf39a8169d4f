package testenv

import (
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Faults says what a UDPRelay does to each datagram. The zero value
// forwards everything at once. Each fraction is drawn independently per
// datagram: a datagram is dropped with probability Drop; one that is not
// dropped is held back (reordered behind later ones) with probability
// Reorder, and sent twice with probability Duplicate.
type Faults struct {
	Drop      float64
	Reorder   float64
	Duplicate float64
	// MaxDelay is the longest a reordered datagram is held back; each one
	// waits a random time in (0, MaxDelay]. Zero means 5ms.
	MaxDelay time.Duration
	// Latency delays every datagram that is not dropped, in each
	// direction (a round trip gains twice this).
	Latency time.Duration
}

// String describes the faults for a test's log.
func (f Faults) String() string {
	return fmt.Sprintf("drop %.1f%%, reorder %.1f%% (up to %v), duplicate %.1f%%, latency %v",
		100*f.Drop, 100*f.Reorder, f.maxDelay(), 100*f.Duplicate, f.Latency)
}

func (f Faults) maxDelay() time.Duration {
	if f.MaxDelay <= 0 {
		return 5 * time.Millisecond
	}
	return f.MaxDelay
}

// RelayCounts are what a UDPRelay did in one direction.
type RelayCounts struct {
	Received, Dropped, Delayed, Duplicated atomic.Int64
}

// String sums the counts up for a test's log.
func (c *RelayCounts) String() string {
	return fmt.Sprintf("%d datagrams: %d dropped, %d delayed, %d duplicated",
		c.Received.Load(), c.Dropped.Load(), c.Delayed.Load(), c.Duplicated.Load())
}

// direction is one way through a UDPRelay. Its rng is shared by the pumps
// of successive upstream sockets (Rebind), hence the lock; the draws for
// the n-th datagram depend only on the seed.
type direction struct {
	mu     sync.Mutex
	rng    *rand.Rand
	counts *RelayCounts
}

// UDPRelay forwards datagrams between one client and a server on
// loopback. It drops, delays (reorders) and duplicates a configurable
// fraction of them in both directions, with a seeded random source per
// direction, and may add a fixed latency. Blackhole makes it drop
// everything: to each side the other has vanished without a word. Rebind
// moves the client, as the server sees it, to a new source port.
type UDPRelay struct {
	front  *net.UDPConn // the client talks to this
	server *net.UDPAddr
	back   atomic.Pointer[net.UDPConn] // this talks to the server
	faults Faults
	client atomic.Pointer[net.UDPAddr]

	dropping atomic.Bool
	up, down direction

	mu     sync.Mutex // serializes Rebind and Close
	closed chan struct{}
	wg     sync.WaitGroup // pumps and held-back datagrams

	// Up is client to server, Down server to client.
	Up, Down RelayCounts
}

// NewUDPRelay starts a relay to server; t.Cleanup closes it, and Close
// may close it earlier.
func NewUDPRelay(t testing.TB, server string, faults Faults, seed uint64) *UDPRelay {
	t.Helper()
	r, err := StartUDPRelay(server, faults, seed)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

// StartUDPRelay starts a relay to server; the caller must Close it.
func StartUDPRelay(server string, faults Faults, seed uint64) (*UDPRelay, error) {
	sa, err := net.ResolveUDPAddr("udp", server)
	if err != nil {
		return nil, err
	}
	front, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	back, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, sa)
	if err != nil {
		front.Close()
		return nil, err
	}
	r := &UDPRelay{front: front, server: sa, faults: faults, closed: make(chan struct{})}
	r.up = direction{rng: rand.New(rand.NewPCG(seed, 1)), counts: &r.Up}
	r.down = direction{rng: rand.New(rand.NewPCG(seed, 2)), counts: &r.Down}
	r.back.Store(back)
	r.wg.Add(2)
	go r.pump(&r.up, func(b []byte) (int, error) {
		n, from, err := front.ReadFromUDP(b)
		if err == nil {
			r.client.Store(from)
		}
		return n, err
	}, func(b []byte) { r.back.Load().Write(b) })
	go r.pumpDown(back)
	return r, nil
}

// pumpDown forwards what the server sends to back, one upstream socket.
func (r *UDPRelay) pumpDown(back *net.UDPConn) {
	r.pump(&r.down, back.Read, func(b []byte) {
		if c := r.client.Load(); c != nil {
			r.front.WriteToUDP(b, c)
		}
	})
}

// pump moves datagrams one way until read fails.
func (r *UDPRelay) pump(d *direction, read func([]byte) (int, error), write func([]byte)) {
	defer r.wg.Done()
	buf := make([]byte, 64<<10)
	maxDelay := r.faults.maxDelay()
	for {
		n, err := read(buf)
		if err != nil {
			return
		}
		d.counts.Received.Add(1)
		if r.dropping.Load() {
			d.counts.Dropped.Add(1)
			continue
		}
		// Three draws for every datagram, so that the decisions for the
		// n-th datagram depend only on the seed.
		d.mu.Lock()
		drop, delay, dup := d.rng.Float64() < r.faults.Drop, d.rng.Float64() < r.faults.Reorder, d.rng.Float64() < r.faults.Duplicate
		wait := time.Duration(1 + d.rng.Int64N(int64(maxDelay)))
		d.mu.Unlock()
		if drop {
			d.counts.Dropped.Add(1)
			continue
		}
		copies := 1
		if dup {
			d.counts.Duplicated.Add(1)
			copies = 2
		}
		hold := r.faults.Latency
		if delay {
			d.counts.Delayed.Add(1)
			hold += wait
		}
		if hold == 0 {
			for range copies {
				write(buf[:n])
			}
			continue
		}
		b := append([]byte(nil), buf[:n]...)
		// This goroutine holds a count on wg, so Add cannot race Wait.
		r.wg.Add(1)
		time.AfterFunc(hold, func() {
			defer r.wg.Done()
			select {
			case <-r.closed:
			default:
				for range copies {
					write(b)
				}
			}
		})
	}
}

// Addr is where clients should dial.
func (r *UDPRelay) Addr() string { return r.front.LocalAddr().String() }

// Blackhole drops every datagram from now on.
func (r *UDPRelay) Blackhole() { r.dropping.Store(true) }

// Restore applies only the configured faults again.
func (r *UDPRelay) Restore() { r.dropping.Store(false) }

// UpstreamAddr is the address the server sees the client's datagrams come
// from now.
func (r *UDPRelay) UpstreamAddr() string { return r.back.Load().LocalAddr().String() }

// Rebind moves the client to a new source port, as a NAT rebinding would:
// from now on the client's datagrams reach the server from a new socket,
// and the old socket is closed, so that what the server still sends to the
// old address is lost. It returns the new address.
func (r *UDPRelay) Rebind() (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-r.closed:
		return "", net.ErrClosed
	default:
	}
	back, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, r.server)
	if err != nil {
		return "", err
	}
	old := r.back.Swap(back)
	r.wg.Add(1)
	go r.pumpDown(back)
	old.Close()
	return back.LocalAddr().String(), nil
}

// Close stops the relay and waits for its goroutines, held-back datagrams
// included. It may be called more than once.
func (r *UDPRelay) Close() {
	r.mu.Lock()
	select {
	case <-r.closed:
	default:
		close(r.closed)
		r.front.Close()
		r.back.Load().Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}
