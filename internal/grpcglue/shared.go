package grpcglue

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/attributes"
	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/status"
)

// SharedConn is one grpc.ClientConn that carries a server's calls to all of
// its clients. A grpc.ClientConn of its own per client would cost every
// client that was called three goroutines (the connection's callback
// serializers) and its resolver, balancer and channelz state; here each
// client costs only its HTTP/2 connection, a subchannel of the shared
// ClientConn dialed on a stream of that client's session. A balancer of
// brpc's own picks, for each call, the subchannel of the client the call is
// for (its Route, carried in the call's context).
//
// The grpc.ClientConn is built on first use; Close ends it.
type SharedConn struct {
	opts []grpc.DialOption

	mu     sync.Mutex
	cc     *grpc.ClientConn
	closed bool

	bal     atomic.Pointer[routeBalancer]
	balOnce sync.Once
	balSet  chan struct{} // closed once bal is set

	routes sync.Map // subchannel address -> *Route
	n      atomic.Uint64
}

// errSharedClosed is what calls get once the SharedConn is closed.
var errSharedClosed = status.Error(codes.Unavailable, "brpc: the server's reverse connections are closed")

// Receive windows of a SharedConn's HTTP/2 connections, per call and per
// client, unless the application's dial options set their own. Static
// windows switch grpc-go's BDP estimation off: with it, the first DATA
// frame a connection receives after a quiet spell makes grpc-go send a
// WINDOW_UPDATE and a PING, which the client answers, so a server calling
// each of many clients once costs two packets more per call each way over
// QUIC (measured: 7-8 datagrams per call instead of 5-6). They also bound
// what a client's answers can make the server hold: the estimation grows a
// window to 16 MiB whether or not anyone reads. These are the sizes
// docs/security.md recommends for an application's *grpc.Server.
const (
	ReverseStreamWindow = 256 << 10
	ReverseConnWindow   = 4 << 20
)

// NewSharedConn returns a SharedConn whose ClientConn is built with opts
// (brpc's windows, then the application's dial options, then the rest of
// brpc's).
func NewSharedConn(opts []grpc.DialOption) *SharedConn {
	all := append([]grpc.DialOption{
		grpc.WithInitialWindowSize(ReverseStreamWindow),
		grpc.WithInitialConnWindowSize(ReverseConnWindow),
	}, opts...)
	return &SharedConn{opts: all, balSet: make(chan struct{})}
}

// routeBalancerName names brpc's balancer in grpc-go's registry (a service
// config can only name a balancer that is registered there).
const routeBalancerName = "brpc_route"

var registerBalancer sync.Once

// sharedKey holds, in the resolver state of a SharedConn's ClientConn, the
// SharedConn itself: that is how the balancer grpc-go builds from the
// process-wide registry finds the SharedConn it works for.
type sharedKey struct{}

// start builds the ClientConn if it is not built yet.
func (s *SharedConn) start() (*grpc.ClientConn, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, errSharedClosed
	}
	if s.cc != nil {
		cc := s.cc
		s.mu.Unlock()
		return cc, nil
	}
	registerBalancer.Do(func() { balancer.Register(routeBalancerBuilder{}) })
	opts := append(slices.Clone(s.opts),
		grpc.WithContextDialer(s.dial),
		grpc.WithTransportCredentials(Credentials{}),
		grpc.WithAuthority("brpc-client"),
		grpc.WithConnectParams(ConnectParams),
		grpc.WithResolvers(sharedResolverBuilder{s}),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"`+routeBalancerName+`":{}}]}`),
		// Subchannels are released per client (Route.Close); grpc-go's
		// idle mode would drop them all at once.
		grpc.WithIdleTimeout(0),
	)
	cc, err := grpc.NewClient(sharedScheme+":///clients", opts...)
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	s.cc = cc
	s.mu.Unlock()
	// Not under s.mu: leaving idle builds the resolver and the balancer,
	// which reports itself to setBalancer.
	cc.Connect()
	return cc, nil
}

// balancer waits for the balancer grpc-go builds for the ClientConn.
func (s *SharedConn) balancer(ctx context.Context) (*routeBalancer, error) {
	select {
	case <-s.balSet:
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	b := s.bal.Load()
	if closed || b == nil {
		return nil, errSharedClosed
	}
	return b, nil
}

func (s *SharedConn) setBalancer(b *routeBalancer) {
	s.balOnce.Do(func() {
		s.bal.Store(b)
		close(s.balSet)
	})
}

// dial opens a stream for the subchannel at addr, on its client's session.
func (s *SharedConn) dial(ctx context.Context, addr string) (net.Conn, error) {
	r, ok := s.routes.Load(addr)
	if !ok {
		return nil, fmt.Errorf("brpc: no client at %q", addr)
	}
	return r.(*Route).dial(ctx)
}

// Close ends the ClientConn and every call on it; later calls fail.
func (s *SharedConn) Close() {
	s.mu.Lock()
	s.closed = true
	cc := s.cc
	s.mu.Unlock()
	// Calls waiting for a balancer that will not come fail now.
	s.balOnce.Do(func() { close(s.balSet) })
	if cc != nil {
		cc.Close()
	}
}

// NewRoute returns the way of one client's calls through s: its own
// subchannel, whose connections dial opens (a new stream on the client's
// session each time). The subchannel connects on the route's first call.
func (s *SharedConn) NewRoute(dial func(ctx context.Context) (net.Conn, error)) (*Route, error) {
	cc, err := s.start()
	if err != nil {
		return nil, err
	}
	r := &Route{
		s:       s,
		cc:      cc,
		addr:    "client-" + strconv.FormatUint(s.n.Add(1), 10),
		dial:    dial,
		state:   connectivity.Idle,
		changed: make(chan struct{}),
	}
	s.routes.Store(r.addr, r)
	return r, nil
}

// Route is one client's way through a SharedConn. It implements
// grpc.ClientConnInterface; Close releases the client's connection.
type Route struct {
	s    *SharedConn
	cc   *grpc.ClientConn
	addr string
	dial func(ctx context.Context) (net.Conn, error)

	mu      sync.Mutex
	sc      balancer.SubConn // nil: none yet, or shut down
	state   connectivity.State
	connErr error         // why the last attempt to connect failed
	changed chan struct{} // closed and replaced at every state change
	closed  bool
}

type routeKey struct{}

// routeFrom returns the route a call's context was given by Invoke or
// NewStream.
func routeFrom(ctx context.Context) *Route {
	r, _ := ctx.Value(routeKey{}).(*Route)
	return r
}

// Invoke makes a unary call to the route's client. It implements
// grpc.ClientConnInterface.
func (r *Route) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	if err := r.awaitConnected(ctx); err != nil {
		return err
	}
	return r.cc.Invoke(context.WithValue(ctx, routeKey{}, r), method, args, reply, opts...)
}

// NewStream begins a streaming call to the route's client. It implements
// grpc.ClientConnInterface.
func (r *Route) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if err := r.awaitConnected(ctx); err != nil {
		return nil, err
	}
	return r.cc.NewStream(context.WithValue(ctx, routeKey{}, r), desc, method, opts...)
}

// awaitConnected connects the route's subchannel if it is not, and waits
// until it is ready or has failed (or ctx ends), before the call is picked.
// grpc-go wakes every call waiting for a pick whenever a subchannel's state
// changes; without this wait, a server calling thousands of clients for the
// first time at once would re-pick every waiting call at each of their
// connections' changes.
func (r *Route) awaitConnected(ctx context.Context) error {
	b, err := r.s.balancer(ctx)
	if err != nil {
		return err
	}
	for {
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			return ErrPeerGone
		}
		if err := r.ensureLocked(b); err != nil {
			r.mu.Unlock()
			return status.Errorf(codes.Internal, "brpc: creating the connection to the client: %v", err)
		}
		st, sc, ch := r.state, r.sc, r.changed
		r.mu.Unlock()
		switch st {
		case connectivity.Ready, connectivity.TransientFailure:
			// A failed subchannel is grpc-go's to report: it fails a
			// fail-fast call, and a wait-for-ready one waits for the retry.
			return nil
		case connectivity.Idle:
			sc.Connect()
		}
		select {
		case <-ch:
		case <-ctx.Done():
			// grpc-go ends the call with the context's status.
			return nil
		}
	}
}

// ensureLocked creates the route's subchannel if it has none.
func (r *Route) ensureLocked(b *routeBalancer) error {
	if r.sc != nil {
		return nil
	}
	// The listener learns which subchannel it reports on under r.mu, as
	// NewSubConn returns only after the listener was handed over.
	mine := new(subConnRef)
	sc, err := b.cc.NewSubConn([]resolver.Address{{Addr: r.addr}}, balancer.NewSubConnOptions{
		StateListener: func(st balancer.SubConnState) { r.onState(b, mine, st) },
	})
	if err != nil {
		return err
	}
	mine.sc = sc
	r.sc, r.state, r.connErr = sc, connectivity.Idle, nil
	return nil
}

// subConnRef names a subchannel for its state listener; r.mu guards it.
type subConnRef struct{ sc balancer.SubConn }

// onState records a state change of a subchannel of the route, and has
// grpc-go pick again the calls that wait for a pick. A subchannel the route
// has replaced or dropped only wakes them.
func (r *Route) onState(b *routeBalancer, mine *subConnRef, st balancer.SubConnState) {
	r.mu.Lock()
	if mine.sc != nil && r.sc == mine.sc {
		r.state = st.ConnectivityState
		switch st.ConnectivityState {
		case connectivity.TransientFailure:
			r.connErr = st.ConnectionError
		case connectivity.Shutdown:
			r.sc = nil
		}
		close(r.changed)
		r.changed = make(chan struct{})
	}
	r.mu.Unlock()
	if st.ConnectivityState != connectivity.Connecting {
		b.wake()
	}
}

// pick picks the route's subchannel for a call.
func (r *Route) pick() (balancer.PickResult, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return balancer.PickResult{}, ErrPeerGone
	}
	if r.sc == nil {
		// Shut down under a call (its session ended, or grpc-go dropped
		// it): awaitConnected of the next call makes a new one.
		return balancer.PickResult{}, ErrPeerGone
	}
	switch r.state {
	case connectivity.Ready:
		return balancer.PickResult{SubConn: r.sc}, nil
	case connectivity.Idle:
		r.sc.Connect()
	case connectivity.TransientFailure:
		// Not a status error: grpc-go fails a fail-fast call with
		// Unavailable and keeps a wait-for-ready one waiting.
		if r.connErr != nil {
			return balancer.PickResult{}, fmt.Errorf("brpc: connecting to the client: %v", r.connErr)
		}
		return balancer.PickResult{}, errors.New("brpc: connecting to the client failed")
	}
	return balancer.PickResult{}, balancer.ErrNoSubConnAvailable
}

// Close releases the route's subchannel (its HTTP/2 connection and stream)
// and refuses calls from now on with ErrPeerGone. It returns nil.
func (r *Route) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	sc := r.sc
	r.sc = nil
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
	r.s.routes.Delete(r.addr)
	if sc != nil {
		// Its state listener reports the shutdown and wakes the calls
		// waiting for a pick, which now fail.
		sc.Shutdown()
	}
	return nil
}

// sharedScheme is the target scheme of a SharedConn's ClientConn.
const sharedScheme = "brpc-clients"

// sharedResolverBuilder gives a SharedConn's ClientConn the SharedConn
// itself as its only resolver state; the routes create the subchannels.
type sharedResolverBuilder struct{ s *SharedConn }

// Scheme implements resolver.Builder.
func (sharedResolverBuilder) Scheme() string { return sharedScheme }

// Build implements resolver.Builder.
func (b sharedResolverBuilder) Build(_ resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	err := cc.UpdateState(resolver.State{Attributes: attributes.New(sharedKey{}, b.s)})
	if err != nil {
		return nil, err
	}
	return nopResolver{}, nil
}

type nopResolver struct{}

// ResolveNow implements resolver.Resolver: the state never changes.
func (nopResolver) ResolveNow(resolver.ResolveNowOptions) {}

// Close implements resolver.Resolver.
func (nopResolver) Close() {}

// routeBalancerBuilder builds the balancer of a SharedConn's ClientConn.
type routeBalancerBuilder struct{}

// Name implements balancer.Builder.
func (routeBalancerBuilder) Name() string { return routeBalancerName }

// Build implements balancer.Builder.
func (routeBalancerBuilder) Build(cc balancer.ClientConn, _ balancer.BuildOptions) balancer.Balancer {
	return &routeBalancer{cc: cc}
}

// routeBalancer is the balancer of a SharedConn's ClientConn: the routes
// make and release its subchannels; its picker sends each call to its
// route's.
type routeBalancer struct {
	cc      balancer.ClientConn
	started atomic.Bool
}

// UpdateClientConnState implements balancer.Balancer: the resolver's state
// names the SharedConn the balancer works for.
func (b *routeBalancer) UpdateClientConnState(st balancer.ClientConnState) error {
	s, _ := st.ResolverState.Attributes.Value(sharedKey{}).(*SharedConn)
	if s == nil {
		return balancer.ErrBadResolverState
	}
	if b.started.CompareAndSwap(false, true) {
		// Ready from the start: the picker sends each call to its own
		// client's subchannel, whatever the others' states.
		b.wake()
		s.setBalancer(b)
	}
	return nil
}

// wake publishes the picker again, so that grpc-go picks again the calls
// that wait for a pick.
func (b *routeBalancer) wake() {
	b.cc.UpdateState(balancer.State{ConnectivityState: connectivity.Ready, Picker: routePicker{}})
}

// ResolverError implements balancer.Balancer: the resolver reports none.
func (b *routeBalancer) ResolverError(error) {}

// UpdateSubConnState implements balancer.Balancer; subchannel states go to
// their StateListener instead.
func (b *routeBalancer) UpdateSubConnState(balancer.SubConn, balancer.SubConnState) {}

// Close implements balancer.Balancer: grpc-go shuts the subchannels down.
func (b *routeBalancer) Close() {}

// ExitIdle implements balancer.Balancer: the routes connect their own
// subchannels.
func (b *routeBalancer) ExitIdle() {}

// routePicker sends each call to the subchannel of the route in its
// context.
type routePicker struct{}

// Pick implements balancer.Picker.
func (routePicker) Pick(info balancer.PickInfo) (balancer.PickResult, error) {
	r := routeFrom(info.Ctx)
	if r == nil {
		return balancer.PickResult{}, status.Error(codes.Internal, "brpc: a reverse call without its client")
	}
	return r.pick()
}
