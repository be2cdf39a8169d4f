package client

import (
	"context"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/resolver"
)

// sessionScheme is the target scheme of the forward gRPC connection, whose
// addresses come from a sessionResolver.
const sessionScheme = "brpc-session"

// sessionResolver gives the forward gRPC connection a new address for every
// session (the dialer ignores it and opens a stream on the current session).
// A new address makes grpc-go build a new subchannel and connect it at
// once, where the subchannel that failed while there was no session would
// wait out its backoff first. (grpc-go's ResetConnectBackoff would also do,
// but in v1.85 it reads the ClientConn's subchannels without its lock.)
type sessionResolver struct {
	mu   sync.Mutex
	n    uint64
	addr resolver.Address
	cc   resolver.ClientConn // nil while grpc-go holds no resolver (idle)
}

// Scheme implements resolver.Builder.
func (r *sessionResolver) Scheme() string { return sessionScheme }

// Build implements resolver.Builder; grpc-go builds a resolver each time the
// connection leaves idleness.
func (r *sessionResolver) Build(_ resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	r.mu.Lock()
	r.cc = cc
	addr := r.addr
	r.mu.Unlock()
	// A session that began meanwhile may have pushed its address first,
	// and the older one is then set now: harmless, since every address
	// reaches the current session.
	_ = cc.UpdateState(resolver.State{Addresses: []resolver.Address{addr}})
	return &builtSessionResolver{r: r, cc: cc}, nil
}

// next gives the connection the address of a new session.
func (r *sessionResolver) next() {
	r.mu.Lock()
	r.n++
	r.addr = resolver.Address{Addr: "session-" + strconv.FormatUint(r.n, 10)}
	addr, cc := r.addr, r.cc
	r.mu.Unlock()
	if cc != nil {
		_ = cc.UpdateState(resolver.State{Addresses: []resolver.Address{addr}})
	}
}

// builtSessionResolver is the resolver grpc-go holds while it is not idle.
type builtSessionResolver struct {
	r  *sessionResolver
	cc resolver.ClientConn
}

// ResolveNow implements resolver.Resolver: the address changes only with
// the session.
func (b *builtSessionResolver) ResolveNow(resolver.ResolveNowOptions) {}

// Close implements resolver.Resolver.
func (b *builtSessionResolver) Close() {
	b.r.mu.Lock()
	if b.r.cc == b.cc {
		b.r.cc = nil
	}
	b.r.mu.Unlock()
}

// forwardReadyTimeout bounds how long a new session waits for the forward
// gRPC connection to come up on it before the Conn reports Ready anyway.
const forwardReadyTimeout = 5 * time.Second

// awaitForward waits until the forward gRPC connection runs on the session
// just set up, so that Ready means that forward calls go through: after
// failing while there was no session, grpc-go's pick_first stays in
// TRANSIENT_FAILURE, and fails fail-fast calls, until its new subchannel is
// ready. An idle connection has nothing to wait for: the next call
// connects it and waits. The wait also ends with the session.
func (c *Conn) awaitForward(cs *clientSession) {
	ctx, cancel := context.WithTimeout(c.ctx, forwardReadyTimeout)
	defer cancel()
	stop := context.AfterFunc(cs.sess.Context(), cancel)
	defer stop()
	for {
		st := c.cc.GetState()
		if st != connectivity.Connecting && st != connectivity.TransientFailure {
			return
		}
		if !c.cc.WaitForStateChange(ctx, st) {
			return
		}
	}
}
