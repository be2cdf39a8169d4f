package brpc_test

import (
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// lossConfig says what a lossyRelay does to each datagram. Each fraction is
// drawn independently per datagram: a datagram is dropped with probability
// Drop; a datagram that is not dropped is held back (reordered behind later
// ones) with probability Reorder, and sent twice with probability
// Duplicate.
type lossConfig struct {
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

func (c lossConfig) String() string {
	return fmt.Sprintf("drop %.1f%%, reorder %.1f%% (up to %v), duplicate %.1f%%, latency %v",
		100*c.Drop, 100*c.Reorder, c.maxDelay(), 100*c.Duplicate, c.Latency)
}

func (c lossConfig) maxDelay() time.Duration {
	if c.MaxDelay <= 0 {
		return 5 * time.Millisecond
	}
	return c.MaxDelay
}

// relayCounts are what a lossyRelay did in one direction.
type relayCounts struct {
	received, dropped, delayed, duplicated atomic.Int64
}

func (c *relayCounts) String() string {
	return fmt.Sprintf("%d datagrams: %d dropped, %d delayed, %d duplicated",
		c.received.Load(), c.dropped.Load(), c.delayed.Load(), c.duplicated.Load())
}

// lossyRelay forwards datagrams between one client and a server on loopback
// like udpRelay, but drops, delays (reorders) and duplicates a configurable
// fraction of them in both directions, with a seeded random source per
// direction, and may add a fixed latency. Blackhole makes it drop
// everything, as udpRelay's does.
type lossyRelay struct {
	front  *net.UDPConn // the client talks to this
	back   *net.UDPConn // this talks to the server
	cfg    lossConfig
	client atomic.Pointer[net.UDPAddr]

	dropping atomic.Bool
	closed   chan struct{}
	once     sync.Once
	wg       sync.WaitGroup // pumps and held-back datagrams

	// Up is client to server, Down server to client.
	Up, Down relayCounts
}

// newLossyRelay starts a relay to server; t.Cleanup closes it, and Close
// may close it earlier.
func newLossyRelay(t *testing.T, server string, cfg lossConfig, seed uint64) *lossyRelay {
	t.Helper()
	r, err := startLossyRelay(server, cfg, seed)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

// startLossyRelay starts a relay to server; the caller must Close it.
func startLossyRelay(server string, cfg lossConfig, seed uint64) (*lossyRelay, error) {
	front, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	sa, err := net.ResolveUDPAddr("udp", server)
	if err != nil {
		front.Close()
		return nil, err
	}
	back, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, sa)
	if err != nil {
		front.Close()
		return nil, err
	}
	r := &lossyRelay{front: front, back: back, cfg: cfg, closed: make(chan struct{})}
	r.wg.Add(2)
	go r.pump(rand.New(rand.NewPCG(seed, 1)), &r.Up, func(b []byte) (int, error) {
		n, from, err := front.ReadFromUDP(b)
		if err == nil {
			r.client.Store(from)
		}
		return n, err
	}, func(b []byte) { back.Write(b) })
	go r.pump(rand.New(rand.NewPCG(seed, 2)), &r.Down, back.Read, func(b []byte) {
		if c := r.client.Load(); c != nil {
			front.WriteToUDP(b, c)
		}
	})
	return r, nil
}

// pump moves datagrams one way. Only this goroutine uses rng.
func (r *lossyRelay) pump(rng *rand.Rand, counts *relayCounts, read func([]byte) (int, error), write func([]byte)) {
	defer r.wg.Done()
	buf := make([]byte, 64<<10)
	maxDelay := r.cfg.maxDelay()
	for {
		n, err := read(buf)
		if err != nil {
			return
		}
		counts.received.Add(1)
		if r.dropping.Load() {
			counts.dropped.Add(1)
			continue
		}
		// Three draws for every datagram, so that the decisions for the
		// n-th datagram depend only on the seed.
		drop, delay, dup := rng.Float64() < r.cfg.Drop, rng.Float64() < r.cfg.Reorder, rng.Float64() < r.cfg.Duplicate
		wait := time.Duration(1 + rng.Int64N(int64(maxDelay)))
		if drop {
			counts.dropped.Add(1)
			continue
		}
		copies := 1
		if dup {
			counts.duplicated.Add(1)
			copies = 2
		}
		hold := r.cfg.Latency
		if delay {
			counts.delayed.Add(1)
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
func (r *lossyRelay) Addr() string { return r.front.LocalAddr().String() }

// Blackhole drops every datagram from now on.
func (r *lossyRelay) Blackhole() { r.dropping.Store(true) }

// Restore applies only the configured faults again.
func (r *lossyRelay) Restore() { r.dropping.Store(false) }

// Close stops the relay and waits for its goroutines, held-back datagrams
// included. It may be called more than once.
func (r *lossyRelay) Close() {
	r.once.Do(func() {
		close(r.closed)
		r.front.Close()
		r.back.Close()
	})
	r.wg.Wait()
}
