package brpc

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Defaults of FanOutOptions.
const (
	// DefaultFanOutConcurrency is how many clients FanOut calls at once
	// when FanOutOptions.Concurrency is 0. A client's first call builds its
	// reverse gRPC connection, which costs both ends CPU; more calls in
	// flight only queue that work behind each other, and over QUIC a
	// burst of them overflows the server's UDP socket, whose lost packets
	// then cost retransmissions: measured at 3,000 clients, 256 calls in
	// flight cost each first QUIC call twice the CPU of 8 to 64. Clients
	// that do not answer hold a slot each for up to PerClientTimeout.
	DefaultFanOutConcurrency = 64
	// DefaultFanOutPerClientTimeout bounds each client's call when
	// FanOutOptions.PerClientTimeout is 0: a client that does not answer
	// holds one slot of the concurrency that long, never the whole fan-out.
	DefaultFanOutPerClientTimeout = 10 * time.Second
)

// FanOutOptions tunes Server.FanOut. The zero value calls every connected
// client with the defaults.
type FanOutOptions struct {
	// Concurrency bounds the calls in flight at once; 0 means
	// DefaultFanOutConcurrency. Negative is invalid.
	Concurrency int
	// PerClientTimeout is the deadline of each client's call, counted from
	// when that call starts (the ctx given to FanOut may end sooner); 0
	// means DefaultFanOutPerClientTimeout. Negative is invalid.
	PerClientTimeout time.Duration
	// Filter, when set, picks the clients to call: it is called once per
	// connected client, on FanOut's goroutine, before any call starts.
	Filter func(Peer) bool
	// Progress, when set, is called each time another client's result is
	// known, with the number known so far and the number of clients picked.
	// It is called on FanOut's goroutine, never concurrently, with done
	// rising by one each time (the clients that ctx's end left uncalled
	// are counted in one last call); a slow Progress delays no call.
	Progress func(done, total int)
}

// FanOutResult is one client's outcome of a fan-out.
type FanOutResult struct {
	// Peer is the client, as it was when the fan-out started.
	Peer Peer
	// Err is what the call returned (nil on success). A client that
	// disconnected before its turn has codes.NotFound; a call that
	// panicked has codes.Internal; a client left uncalled because ctx
	// ended has codes.Canceled or codes.DeadlineExceeded (ctx's error as a
	// status).
	Err error
	// Duration is how long the call took; 0 for a client left uncalled.
	Duration time.Duration
}

// FanOut calls call once for each client connected when it starts (or each
// one opts.Filter picks), at most opts.Concurrency at a time, and returns
// every client's result once all calls have ended, in the order of Peers
// (by ID). Each call gets the client's stub c, its Peer p and a ctx derived
// from FanOut's with opts.PerClientTimeout as its deadline; a call that
// fails, times out or panics ends that client's call only.
//
// When ctx ends, FanOut starts no more calls; the calls in flight see their
// ctx end, FanOut waits for them to return, and the clients not called yet
// get ctx's error. So FanOut returns soon after ctx ends as long as call
// respects its ctx, as gRPC stubs do. The error is a gRPC status with
// codes.InvalidArgument for invalid options or a nil call, and is nil
// otherwise: per-client failures are in the results.
//
// FanOut returns the results rather than streaming them: a caller needs
// every client's outcome to act on the failures, and a slice indexed like
// the picked clients keeps that simple; Progress reports as it goes.
//
// On a replica of a cluster (WithCluster), FanOut calls the clients
// connected to this replica only, those Peers lists; ClusterPeers lists
// the others, which Client reaches one by one.
func (s *Server[C]) FanOut(ctx context.Context, opts FanOutOptions, call func(ctx context.Context, c C, p Peer) error) ([]FanOutResult, error) {
	if call == nil {
		return nil, status.Error(codes.InvalidArgument, "brpc: FanOut needs a call function")
	}
	if opts.Concurrency < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "brpc: FanOut concurrency %d is negative", opts.Concurrency)
	}
	if opts.PerClientTimeout < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "brpc: FanOut per-client timeout %v is negative", opts.PerClientTimeout)
	}
	concurrency := opts.Concurrency
	if concurrency == 0 {
		concurrency = DefaultFanOutConcurrency
	}
	timeout := opts.PerClientTimeout
	if timeout == 0 {
		timeout = DefaultFanOutPerClientTimeout
	}

	peers := s.Peers()
	if opts.Filter != nil {
		picked := peers[:0]
		for _, p := range peers {
			if opts.Filter(p) {
				picked = append(picked, p)
			}
		}
		peers = picked
	}
	results := make([]FanOutResult, len(peers))
	for i, p := range peers {
		results[i].Peer = p
	}
	if len(peers) == 0 {
		return results, nil
	}

	// Workers take the clients in order, so no more than concurrency
	// goroutines ever run calls and each reuses its grown stack. Each
	// result goes to its own slot; done carries the indexes to this
	// goroutine for Progress, buffered so that no worker waits for it.
	var (
		next    atomic.Int64
		started = make([]bool, len(peers))
		done    = make(chan int, len(peers))
		wg      sync.WaitGroup
	)
	for range min(concurrency, len(peers)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= len(peers) {
					return
				}
				started[i] = true
				results[i].Duration, results[i].Err = s.fanOutOne(ctx, timeout, peers[i], call)
				done <- i
			}
		}()
	}
	go func() {
		wg.Wait()
		close(done)
	}()
	n := 0
	for range done {
		n++
		if opts.Progress != nil {
			opts.Progress(n, len(peers))
		}
	}
	// Every worker has returned (done is closed): started and results are
	// theirs no more.
	if n < len(peers) {
		err := status.FromContextError(ctx.Err()).Err()
		for i := range results {
			if !started[i] {
				results[i].Err = err
			}
		}
		if opts.Progress != nil {
			opts.Progress(len(peers), len(peers))
		}
	}
	return results, nil
}

// fanOutOne makes one client's call of a fan-out.
func (s *Server[C]) fanOutOne(ctx context.Context, timeout time.Duration, p Peer, call func(context.Context, C, Peer) error) (took time.Duration, err error) {
	ss, ok := s.core.Lookup(p.ID)
	if !ok {
		return 0, status.Errorf(codes.NotFound, "brpc: client %q disconnected before the fan-out called it", p.ID)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	defer func() {
		took = time.Since(start)
		if r := recover(); r != nil {
			err = status.Errorf(codes.Internal, "brpc: fan-out call to client %q panicked: %v", p.ID, r)
		}
	}()
	return 0, call(ctx, stubOf[C](ss), p)
}
