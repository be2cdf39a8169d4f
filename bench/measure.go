package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/brpc-go/brpc/internal/testpb"
)

// payload returns n random (incompressible) bytes.
func payload(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// measureLatency makes warm sequential echo calls, then n more, and returns
// the median round-trip time. The payload travels both ways.
func measureLatency(ctx context.Context, c testpb.EchoClient, size, warm, n int) (time.Duration, error) {
	req := &testpb.EchoRequest{Payload: payload(size)}
	for i := 0; i < warm; i++ {
		if _, err := c.Unary(ctx, req); err != nil {
			return 0, fmt.Errorf("warm-up call: %w", err)
		}
	}
	lat := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		t := time.Now()
		resp, err := c.Unary(ctx, req)
		d := time.Since(t)
		if err != nil {
			return 0, err
		}
		if len(resp.GetPayload()) != size {
			return 0, fmt.Errorf("echo returned %d bytes, want %d", len(resp.GetPayload()), size)
		}
		lat = append(lat, d)
	}
	slices.Sort(lat)
	return lat[len(lat)/2], nil
}

// runWorkers runs callers goroutines, each calling call in a loop, for warm
// and then dur. Each worker makes at least one call after the warm-up. It
// returns the units (calls or bytes, as call reports) completed after the
// warm-up and the time from the end of the warm-up until every worker
// returned, so that calls still in flight at the stop are counted in both.
func runWorkers(ctx context.Context, callers int, warm, dur time.Duration, call func(ctx context.Context, worker int) (int64, error)) (int64, time.Duration, error) {
	n, elapsed, _, err := runWorkersCPU(ctx, callers, warm, dur, call)
	return n, elapsed, err
}

// runWorkersCPU is runWorkers that also returns the CPU time the whole
// process used over the same span (0 where the system does not tell).
func runWorkersCPU(ctx context.Context, callers int, warm, dur time.Duration, call func(ctx context.Context, worker int) (int64, error)) (int64, time.Duration, time.Duration, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		measuring atomic.Bool
		stop      atomic.Bool
		units     atomic.Int64
		wg        sync.WaitGroup
		errOnce   sync.Once
		firstErr  error
	)
	for w := 0; w < callers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			counted := false
			for !stop.Load() || !counted {
				m := measuring.Load()
				u, err := call(ctx, w)
				if err != nil {
					errOnce.Do(func() { firstErr = err; cancel() })
					return
				}
				if m {
					units.Add(u)
					counted = true
				}
			}
		}()
	}
	if warm > 0 {
		time.Sleep(warm)
	}
	cpu0, _ := processCPU()
	measuring.Store(true)
	t0 := time.Now()
	time.Sleep(dur)
	stop.Store(true)
	wg.Wait()
	elapsed := time.Since(t0)
	cpu1, ok := processCPU()
	if firstErr != nil {
		return 0, 0, 0, firstErr
	}
	var cpu time.Duration
	if ok {
		cpu = cpu1 - cpu0
	}
	return units.Load(), elapsed, cpu, nil
}

// measureCallRate returns unary calls per second with callers concurrent
// callers and size-byte payloads echoed.
func measureCallRate(ctx context.Context, c testpb.EchoClient, callers, size int, warm, dur time.Duration) (float64, error) {
	rate, _, err := measureCallRateCPU(ctx, c, callers, size, warm, dur)
	return rate, err
}

// measureCallRateCPU is measureCallRate that also returns the CPU time the
// process used per call meanwhile (0 where the system does not tell): both
// ends of every call run in this process, so it is the whole path's cost,
// whatever else shares the machine's CPUs.
func measureCallRateCPU(ctx context.Context, c testpb.EchoClient, callers, size int, warm, dur time.Duration) (float64, time.Duration, error) {
	data := payload(size)
	reqs := make([]*testpb.EchoRequest, callers)
	for i := range reqs {
		reqs[i] = &testpb.EchoRequest{Payload: data}
	}
	n, elapsed, cpu, err := runWorkersCPU(ctx, callers, warm, dur, func(ctx context.Context, w int) (int64, error) {
		_, err := c.Unary(ctx, reqs[w])
		return 1, err
	})
	if err != nil {
		return 0, 0, err
	}
	return float64(n) / elapsed.Seconds(), cpu / time.Duration(max(n, 1)), nil
}

// measureBulkUnary returns payload bytes per second moved by unary calls of
// size bytes each (answered with an empty response) from callers
// concurrent callers.
func measureBulkUnary(ctx context.Context, c testpb.EchoClient, callers, size int, warm, dur time.Duration) (float64, error) {
	data := payload(size)
	reqs := make([]*testpb.EchoRequest, callers)
	for i := range reqs {
		reqs[i] = &testpb.EchoRequest{Message: sinkMessage, Payload: data}
	}
	n, elapsed, err := runWorkers(ctx, callers, warm, dur, func(ctx context.Context, w int) (int64, error) {
		_, err := c.Unary(ctx, reqs[w])
		return int64(size), err
	})
	if err != nil {
		return 0, err
	}
	return float64(n) / elapsed.Seconds(), nil
}

// measureBulkStream returns payload bytes per second sent on one
// client-streaming call in messages of size bytes: the clock stops once the
// receiver has answered, so every byte counted was received.
func measureBulkStream(ctx context.Context, c testpb.EchoClient, size int, warm, dur time.Duration) (float64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := c.ClientStream(ctx)
	if err != nil {
		return 0, err
	}
	req := &testpb.EchoRequest{Payload: payload(size)}
	n, t0, err := sendFor(func() error { return st.Send(req) }, size, warm, dur)
	if err != nil {
		return 0, err
	}
	resp, err := st.CloseAndRecv()
	if err != nil {
		return 0, err
	}
	elapsed := time.Since(t0)
	if resp == nil {
		return 0, errors.New("no response to the stream")
	}
	return float64(n) / elapsed.Seconds(), nil
}

// sendFor calls send, which sends size bytes, over and over for warm and
// then for dur. It returns the bytes sent after the warm-up and the time the
// warm-up ended.
func sendFor(send func() error, size int, warm, dur time.Duration) (int64, time.Time, error) {
	loop := func(until time.Time) (int64, error) {
		var n int64
		for {
			if err := send(); err != nil {
				return n, err
			}
			n += int64(size)
			if !time.Now().Before(until) {
				return n, nil
			}
		}
	}
	if warm > 0 {
		if _, err := loop(time.Now().Add(warm)); err != nil {
			return 0, time.Time{}, err
		}
	}
	t0 := time.Now()
	n, err := loop(t0.Add(dur))
	return n, t0, err
}
