package brpc

import (
	"context"
	"crypto/tls"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/metadata"

	"github.com/brpc-go/brpc/internal/client"
	"github.com/brpc-go/brpc/internal/handshake"
	"github.com/brpc-go/brpc/internal/server"
	"github.com/brpc-go/brpc/internal/session"
)

// Defaults for the options below.
const (
	// DefaultKeepaliveInterval is how often a quiet connection is probed. It
	// stays well under the 30 s after which many NATs forget a UDP binding.
	DefaultKeepaliveInterval = 10 * time.Second
	// DefaultKeepaliveTimeout is how long a peer may stay silent before it is
	// declared dead.
	DefaultKeepaliveTimeout = 30 * time.Second
	// DefaultHandshakeTimeout bounds a client's brpc handshake: from the
	// moment its connection is established to the server's welcome.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultMaxHelloSize caps the size of a client's hello message.
	DefaultMaxHelloSize = handshake.DefaultMaxMessageSize
	// DefaultMaxHelloMetadataValues caps the metadata values in a client's
	// hello: far more than a device's connect metadata needs, and few
	// enough that a hello of tiny values costs little to keep.
	DefaultMaxHelloMetadataValues = 256
	// DefaultMaxHelloMetadataValueSize caps the bytes of one key or value of
	// a client's hello metadata (a token or a certificate fits).
	DefaultMaxHelloMetadataValueSize = 16 << 10
	// DefaultMaxStreamsPerSession caps the streams one peer may have open at
	// once on a session: the control stream and 7 of grpc-go's HTTP/2
	// connections. A peer uses one connection per direction, two while
	// grpc-go redials as an old connection drains (a GOAWAY, a reverse
	// connection released when idle and rebuilt); the rest is headroom.
	// Each connection multiplies what the peer's calls can make the other
	// side hold (see docs/security.md), so the cap is not higher.
	DefaultMaxStreamsPerSession = 8
	// DefaultMaxPendingHandshakes caps the clients in the middle of their
	// handshake at once, per phase (TLS, then brpc's hello): high enough for
	// a whole fleet reconnecting after a server restart.
	DefaultMaxPendingHandshakes = 4096
	// DefaultReconnectWindowPerClient is what a stopping server counts, per
	// QUIC client it holds, to size the reconnect window it announces (a
	// TCP client counts half): what one returning client's handshake was
	// measured to take on two CPUs that run the server and the clients
	// (docs/performance.md), so that 10,000 QUIC clients are told to
	// spread their return over 20 s. A shorter window brings them faster
	// than such a server takes them, and its handshakes then queue past
	// the handshake timeout.
	DefaultReconnectWindowPerClient = 2 * time.Millisecond
	// DefaultMaxReconnectWindow caps the reconnect window a server
	// announces, and the one a client accepts.
	DefaultMaxReconnectWindow = 30 * time.Second
	// DefaultMaxConcurrentHandshakes is how many QUIC TLS handshakes a
	// server runs at once: enough to keep its CPUs busy while handshakes
	// wait for their clients' packets (from half of it, 256, new clients
	// answer a Retry first), few enough that a reconnecting fleet's
	// handshakes finish within the handshake timeout rather than sharing
	// the CPU until they all time out.
	DefaultMaxConcurrentHandshakes = 512
	// DefaultReverseIdleTimeout is how long the server keeps a client's
	// reverse-call connection open after its last call ended.
	DefaultReverseIdleTimeout = time.Minute
	// DefaultGatewayMaxCallsPerClient bounds the gateway's relayed calls in
	// flight to one client: four times the calls one HTTP/2 connection of a
	// client built as docs/security.md recommends runs at once
	// (grpc.MaxConcurrentStreams(16)), so that a burst waits for the client
	// (grpc-go queues the calls beyond its stream limit until one ends)
	// rather than failing, while no caller can pile up calls on one client
	// without bound.
	DefaultGatewayMaxCallsPerClient = 64
	// DefaultGatewayMaxCalls bounds the gateway's relayed calls in flight in
	// all. A call whose caller or client stops reading makes the server
	// hold, per direction, a window and a few messages (docs/security.md:
	// about 0.5 MiB with the recommended windows and messages of 16 KiB, up
	// to 3.4 MiB with messages of 128 KiB), so that 1024 such calls hold
	// about 1 to 4 GiB, what the pending-handshake cap allows too; a
	// fleet-wide sweep of short calls rarely needs more at once.
	DefaultGatewayMaxCalls = 1024
	// DefaultForwardIdleTimeout is how long a client keeps its gRPC
	// connection to the server open after its last call ended.
	DefaultForwardIdleTimeout = time.Minute
	// DefaultFallbackDelay is how long a host:port target gives QUIC before
	// trying TCP as well (Happy Eyeballs' usual head start).
	DefaultFallbackDelay = 300 * time.Millisecond
)

// ServerOption configures a Server.
type ServerOption interface {
	applyServer(*serverOptions)
}

// DialOption configures Dial.
type DialOption interface {
	applyDial(*dialOptions)
}

// Option configures either side: it is accepted wherever a ServerOption or a
// DialOption is.
type Option interface {
	ServerOption
	DialOption
}

// common holds what both sides share.
type common struct {
	logger            *slog.Logger
	keepaliveInterval time.Duration
	keepaliveTimeout  time.Duration
	grpcDialOptions   []grpc.DialOption
	maxStreams        int64
}

// sessionConfig is what the options set on a session of either transport.
func (o *common) sessionConfig() session.Settings {
	return session.Settings{
		KeepAlive:          o.keepaliveInterval,
		IdleTimeout:        o.keepaliveTimeout,
		MaxIncomingStreams: o.maxStreams,
	}
}

func defaultCommon() common {
	return common{
		keepaliveInterval: DefaultKeepaliveInterval,
		keepaliveTimeout:  DefaultKeepaliveTimeout,
		maxStreams:        DefaultMaxStreamsPerSession,
	}
}

type serverOptions struct {
	common
	auth             Authenticator
	events           []func(PeerEvent)
	handshakeTimeout time.Duration
	maxHelloSize     int
	maxMDValues      int
	maxMDValueSize   int
	maxClients       int
	maxPending       int
	maxHandshaking   int
	ratePerSecond    float64
	rateBurst        int
	reverseIdle      time.Duration
	reconnectCost    time.Duration
	reconnectMax     time.Duration
	gwPerClient      int
	gwTotal          int
	gwServices       []*grpc.ServiceDesc
	cluster          *ClusterConfig
	clusterEvents    []func(ClusterEvent)
}

func defaultServerOptions() serverOptions {
	return serverOptions{
		common:           defaultCommon(),
		handshakeTimeout: DefaultHandshakeTimeout,
		maxHelloSize:     DefaultMaxHelloSize,
		maxMDValues:      DefaultMaxHelloMetadataValues,
		maxMDValueSize:   DefaultMaxHelloMetadataValueSize,
		maxPending:       DefaultMaxPendingHandshakes,
		maxHandshaking:   DefaultMaxConcurrentHandshakes,
		reverseIdle:      DefaultReverseIdleTimeout,
		reconnectCost:    DefaultReconnectWindowPerClient,
		reconnectMax:     DefaultMaxReconnectWindow,
		gwPerClient:      DefaultGatewayMaxCallsPerClient,
		gwTotal:          DefaultGatewayMaxCalls,
	}
}

// config fills the server core's configuration; the public types the
// options hold are converted at this boundary.
func (o *serverOptions) config() server.Config {
	conf := server.Config{
		Session:              o.sessionConfig(),
		HandshakeTimeout:     o.handshakeTimeout,
		MaxHelloSize:         o.maxHelloSize,
		MaxMetadataValues:    o.maxMDValues,
		MaxMetadataValueSize: o.maxMDValueSize,
		MaxClients:           o.maxClients,
		MaxPending:           o.maxPending,
		MaxHandshaking:       o.maxHandshaking,
		RatePerSecond:        o.ratePerSecond,
		RateBurst:            o.rateBurst,
		ReverseIdle:          o.reverseIdle,
		DialOptions:          o.grpcDialOptions,
		ReconnectCostQUIC:    o.reconnectCost,
		// A TCP session's TLS handshake costs the server about half of
		// a QUIC one (docs/performance.md, the connect rate's CPU).
		ReconnectCostTCP:   o.reconnectCost / 2,
		MaxReconnectWindow: o.reconnectMax,
	}
	if auth := o.auth; auth != nil {
		conf.Authenticate = func(ctx context.Context, info server.AuthInfo) (string, error) {
			return auth(ctx, AuthInfo(info))
		}
	}
	events, logger := o.events, o.logger
	conf.OnEvent = func(ev server.Event) {
		pe := peerEventOf(ev)
		for _, fn := range events {
			fn(pe)
		}
		logPeerEvent(logger, pe)
	}
	return conf
}

type dialOptions struct {
	common
	tls           *tls.Config
	server        *grpc.Server
	metadata      metadata.MD
	backoff       backoff.Config
	fallbackDelay time.Duration
	forwardIdle   time.Duration
	reconnectMax  time.Duration
}

// config fills the client core's configuration from the options and the
// parsed target.
func (o *dialOptions) config(target, scheme string, endpoints []client.Endpoint) client.Config {
	return client.Config{
		Target:        target,
		Scheme:        scheme,
		Endpoints:     endpoints,
		Session:       o.sessionConfig(),
		DialOptions:   o.grpcDialOptions,
		Server:        o.server,
		Metadata:      o.metadata,
		Backoff:       o.backoff,
		FallbackDelay: o.fallbackDelay,
		ForwardIdle:   o.forwardIdle,
		Logger:        o.logger,
		// The window a server announces spreads the first reconnect.
		MaxReconnectWindow: o.reconnectMax,
	}
}

func defaultDialOptions() dialOptions {
	return dialOptions{
		common:        defaultCommon(),
		backoff:       backoff.DefaultConfig,
		fallbackDelay: DefaultFallbackDelay,
		forwardIdle:   DefaultForwardIdleTimeout,
		reconnectMax:  DefaultMaxReconnectWindow,
	}
}

type serverOptionFunc func(*serverOptions)

func (f serverOptionFunc) applyServer(o *serverOptions) { f(o) }

type dialOptionFunc func(*dialOptions)

func (f dialOptionFunc) applyDial(o *dialOptions) { f(o) }

// commonOption applies the same setting on either side.
type commonOption func(*common)

func (f commonOption) applyServer(o *serverOptions) { f(&o.common) }
func (f commonOption) applyDial(o *dialOptions)     { f(&o.common) }

// WithAuthenticator makes the server run a on every connecting client before
// any RPC in either direction. Without it, every client is admitted under a
// random ID.
func WithAuthenticator(a Authenticator) ServerOption {
	return serverOptionFunc(func(o *serverOptions) { o.auth = a })
}

// WithReverseIdleTimeout sets how long the server keeps the gRPC connection
// that carries its calls to a client once no call to that client is in
// flight. The connection is built on the first call to a client and closed
// after d without calls (a streaming call counts until it ends); the next
// call builds a new one, which costs one stream and one HTTP/2 set-up on the
// session. An idle connected client thus costs only its session, however
// many clients were called once. 0 keeps each connection until the client
// disconnects; a negative d is ignored. The default is
// DefaultReverseIdleTimeout.
func WithReverseIdleTimeout(d time.Duration) ServerOption {
	return serverOptionFunc(func(o *serverOptions) {
		if d >= 0 {
			o.reverseIdle = d
		}
	})
}

// WithGatewayServices describes, to the server's gateway (Server.Gateway)
// and, on a replica of a cluster, to its replica endpoint, services that
// connected clients serve, so that calls of their methods without client
// streams are relayed more cheaply: the one request is received before
// the client is called, and a unary method's call goes to the client as
// a unary call (no goroutine of the relay's own and fewer of grpc-go's).
// A generated service's description is its _ServiceDesc variable (e.g.
// &pb.Echo_ServiceDesc, the one RegisterEchoServer registers). Methods of
// other services are relayed as before, message by message, whatever
// their kind.
//
// The descriptions must match the clients' services: a method described
// as unary or server-streaming but served as client- or bidirectionally
// streaming gets only one request, and one described as unary but served
// as server-streaming fails with codes.Internal when the client sends a
// second response. A caller that sends no request, or more than one, to a
// described method without client streams gets codes.Internal, as from a
// gRPC server. The option may be given several times; the services add
// up. A nil description is ignored.
func WithGatewayServices(services ...*grpc.ServiceDesc) ServerOption {
	return serverOptionFunc(func(o *serverOptions) {
		o.gwServices = append(o.gwServices, services...)
	})
}

// WithGatewayLimits bounds the calls the server's gateway (Server.Gateway)
// relays at once: at most perClient to any one client and total in all. A
// call counts from the moment it is admitted until it has ended (a
// streaming call until its last message and status, or its cancellation,
// or its caller's or client's going away); a call beyond either bound
// fails with codes.ResourceExhausted before its client is called, and the
// client's handler never runs for it. The defaults are
// DefaultGatewayMaxCallsPerClient and DefaultGatewayMaxCalls; a value that
// is not positive keeps its default. The server's own calls through Client
// and ClientFromContext do not count.
func WithGatewayLimits(perClient, total int) ServerOption {
	return serverOptionFunc(func(o *serverOptions) {
		if perClient > 0 {
			o.gwPerClient = perClient
		}
		if total > 0 {
			o.gwTotal = total
		}
	})
}

// WithHandshakeTimeout bounds how long a client may take, once its connection
// is up, to send its hello and be welcomed. A client that says nothing is
// cut off after d. It bounds the TLS handshake before too: on TCP the whole
// of it, on QUIC as quic-go's handshake idle timeout (a client silent for d
// is dropped, and no TLS handshake lasts more than 2d). The default is
// DefaultHandshakeTimeout.
func WithHandshakeTimeout(d time.Duration) ServerOption {
	return serverOptionFunc(func(o *serverOptions) {
		if d > 0 {
			o.handshakeTimeout = d
		}
	})
}

// WithMaxHelloSize caps the size in bytes of a client's hello (its metadata
// mostly). A larger hello is refused with codes.ResourceExhausted. The
// default is DefaultMaxHelloSize.
func WithMaxHelloSize(n int) ServerOption {
	return serverOptionFunc(func(o *serverOptions) {
		if n > 0 {
			o.maxHelloSize = n
		}
	})
}

// WithMaxHelloMetadata caps the metadata in a client's hello (what it passed
// with WithMetadata): at most values values in all (a key without values
// counts as one), none of them, nor any key, longer than valueSize bytes. A
// client beyond either is refused with codes.ResourceExhausted before its
// metadata is decoded or the Authenticator runs. The defaults are
// DefaultMaxHelloMetadataValues and DefaultMaxHelloMetadataValueSize; a
// value that is not positive keeps its default. The hello's size cap
// (WithMaxHelloSize) applies as well.
func WithMaxHelloMetadata(values, valueSize int) ServerOption {
	return serverOptionFunc(func(o *serverOptions) {
		if values > 0 {
			o.maxMDValues = values
		}
		if valueSize > 0 {
			o.maxMDValueSize = valueSize
		}
	})
}

// WithKeepalive sets how often a quiet connection is probed (interval) and
// how long a peer may stay silent before it is declared dead (timeout). A
// dead peer leaves Peers() and its calls fail with codes.Unavailable within
// timeout. The effective timeout of a session is the smaller of the two
// sides' values. On QUIC the timeout cannot be shorter than three probe
// timeouts (about three round trips plus margins), as the QUIC
// specification requires: on a path whose round trip is a sizeable fraction
// of the timeout, a dead peer is detected after that floor instead. On
// QUIC only the client probes (the server answers its probes and detects a
// dead client by the timeout alone), so a server's interval applies to its
// TCP sessions only; a QUIC client probes at its own interval, at most half
// the session's effective timeout. On TCP both sides probe.
// Defaults: DefaultKeepaliveInterval and DefaultKeepaliveTimeout. Values that are not positive keep the default; an
// interval of at least the timeout is lowered to half the timeout.
func WithKeepalive(interval, timeout time.Duration) Option {
	return commonOption(func(o *common) {
		if timeout > 0 {
			o.keepaliveTimeout = timeout
		}
		if interval > 0 {
			o.keepaliveInterval = interval
		}
		if o.keepaliveInterval >= o.keepaliveTimeout {
			o.keepaliveInterval = o.keepaliveTimeout / 2
		}
	})
}

// WithGRPCDialOptions adds grpc.DialOptions to the gRPC connections brpc
// builds: on a server, the one connection that carries its calls to every
// client (each client has an HTTP/2 connection of its own in it); on a
// client, its connection to the server. Use it for interceptors, stats
// handlers, default call options and message size limits. The
// transport-level options (dialer, transport credentials, authority) are
// brpc's and cannot be overridden, and so are, on a server, the resolver,
// the service config and the idle timeout of its connection: brpc's
// balancer sends each call to its client, so a default service config
// given here does not apply to reverse calls. A server's connections to its
// clients receive with static windows unless these options set others
// (grpc.WithInitialWindowSize, grpc.WithInitialConnWindowSize): 256 KiB
// per call and 4 MiB per client, the sizes docs/security.md recommends for
// a *grpc.Server. A static window turns grpc-go's BDP estimation off, which
// would otherwise send a PING, answered by the client, with nearly every
// call to a client that was quiet, and grow a window to 16 MiB whether or
// not the caller reads; on a path with a long round trip a 256 KiB window
// caps one reverse call's download at 256 KiB per round trip.
func WithGRPCDialOptions(opts ...grpc.DialOption) Option {
	return commonOption(func(o *common) {
		o.grpcDialOptions = append(o.grpcDialOptions, opts...)
	})
}

// WithMaxStreamsPerSession caps how many streams the peer may have open on a
// session at once, the control stream included. Each stream carries one of
// grpc-go's HTTP/2 connections, not one call: calls are multiplexed within
// it, up to the receiving *grpc.Server's grpc.MaxConcurrentStreams. A QUIC
// peer at the cap waits to open another stream; over TCP a stream past the
// cap is reset. Fewer than 3 streams leave no room for grpc-go to redial
// while an old connection drains. The default is
// DefaultMaxStreamsPerSession.
func WithMaxStreamsPerSession(n int) Option {
	return commonOption(func(o *common) {
		if n > 0 {
			o.maxStreams = int64(n)
		}
	})
}

// WithTLSConfig gives the client its TLS settings: RootCAs to verify the
// server and, for mTLS, Certificates. It is required. brpc clones c and sets
// TLS 1.3 minimum and brpc's ALPN protocol name; an empty ServerName becomes
// the target's host.
func WithTLSConfig(c *tls.Config) DialOption {
	return dialOptionFunc(func(o *dialOptions) { o.tls = c })
}

// WithServer gives the client's own services, which the server can call. The
// server is fed the streams the brpc server opens. Build it with
// grpc.Creds(TransportCredentials()) for its handlers to see the server's TLS
// state as peer.AuthInfo, or with no transport credentials; other credentials
// (grpc-go's TLS) cannot serve the session, which is TLS already. Without it,
// the server's calls to this client fail with codes.Unimplemented.
func WithServer(gs *grpc.Server) DialOption {
	return dialOptionFunc(func(o *dialOptions) { o.server = gs })
}

// WithMetadata sets metadata sent once at connect, in the hello. The server's
// Authenticator sees it, and Peer.Metadata keeps it.
func WithMetadata(md metadata.MD) DialOption {
	return dialOptionFunc(func(o *dialOptions) { o.metadata = md.Copy() })
}

// WithConnectBackoff sets the delays between reconnect attempts, with
// grpc-go's semantics and type: the first attempt after a session ends is
// immediate, then BaseDelay, growing by Multiplier up to MaxDelay, each
// randomized by ±Jitter. The default is backoff.DefaultConfig (1 s base,
// 1.6 multiplier, 0.2 jitter, 120 s max), as in grpc-go. A server that
// stops may announce a reconnect window (WithReconnectWindow): the first
// attempt then comes at a random point of it (WithMaxReconnectWindow), and
// the later ones as above.
func WithConnectBackoff(bc backoff.Config) DialOption {
	return dialOptionFunc(func(o *dialOptions) {
		if bc.BaseDelay > 0 && bc.MaxDelay >= bc.BaseDelay && bc.Multiplier >= 1 && bc.Jitter >= 0 && bc.Jitter <= 1 {
			o.backoff = bc
		}
	})
}

// WithForwardIdleTimeout sets how long the client keeps the gRPC connection
// that carries its calls to the server once no call is in flight. After d
// without calls (a streaming call counts until it ends) the connection and
// its stream on the session are closed, so a client that called once costs
// the server only its session again; the next call opens a new one on the
// same session, which costs it one stream and one HTTP/2 set-up (no new TLS
// or brpc handshake). The session itself, and the server's calls to the
// client, are not affected. 0 keeps the connection open while the session
// lasts; a negative d is ignored. The default is DefaultForwardIdleTimeout.
func WithForwardIdleTimeout(d time.Duration) DialOption {
	return dialOptionFunc(func(o *dialOptions) {
		if d >= 0 {
			o.forwardIdle = d
		}
	})
}

// WithMaxReconnectWindow caps the reconnect window the client accepts from
// a server that stops (see WithReconnectWindow): the client's first
// reconnect attempt after such a stop comes at a uniformly random point of
// the announced window, cut to d. 0 ignores announcements: the first
// attempt is immediate, as without one. A negative d is ignored. The
// default is DefaultMaxReconnectWindow. The end of a session that no
// notice announced (the server crashed, the network failed) is not
// delayed.
func WithMaxReconnectWindow(d time.Duration) DialOption {
	return dialOptionFunc(func(o *dialOptions) {
		if d >= 0 {
			o.reconnectMax = d
		}
	})
}

// WithFallbackDelay sets how long a "host:port" target waits for QUIC to
// connect before trying TCP at the same time. The default is
// DefaultFallbackDelay. The transport that wins is tried first on later
// reconnects.
func WithFallbackDelay(d time.Duration) DialOption {
	return dialOptionFunc(func(o *dialOptions) {
		if d >= 0 {
			o.fallbackDelay = d
		}
	})
}

// WithPeerEvents makes the server call fn when a client is admitted
// (PeerConnected, after its welcome) and when an admitted client's session
// ends (PeerDisconnected, after it left Peers()), with the reason, and when
// a connecting client is refused (PeerRejected). It may be given several
// times; every fn is called. fn runs
// on the session's own goroutine, in order for each session; it should
// return quickly (hand work to another goroutine).
func WithPeerEvents(fn func(PeerEvent)) ServerOption {
	return serverOptionFunc(func(o *serverOptions) {
		if fn != nil {
			o.events = append(o.events, fn)
		}
	})
}

// WithMaxClients caps the clients connected at once. A client beyond it is
// refused with codes.ResourceExhausted; a client reconnecting under an ID
// that is connected replaces itself and is not counted twice. The default, 0,
// sets no cap: memory per idle client is small and bounded.
func WithMaxClients(n int) ServerOption {
	return serverOptionFunc(func(o *serverOptions) {
		if n >= 0 {
			o.maxClients = n
		}
	})
}

// WithMaxPendingHandshakes caps the clients in the middle of their handshake
// at once, in each phase (the TLS handshake, then brpc's hello and
// authentication). Connections beyond it are closed at once, so clients
// that open connections and say nothing cannot exhaust the server. On QUIC
// the TLS phase counts from the client's first Initial packet, and attempts
// beyond the cap are refused before any cryptographic work; once 256
// handshakes are in progress (or half of n, if lower), new QUIC clients
// must first answer a Retry, so that a flood of Initial packets, spoofed or
// replayed, costs the server a Retry packet each rather than a TLS
// handshake. The default is DefaultMaxPendingHandshakes; 0 sets no cap.
func WithMaxPendingHandshakes(n int) ServerOption {
	return serverOptionFunc(func(o *serverOptions) {
		if n >= 0 {
			o.maxPending = n
		}
	})
}

// WithReconnectWindow sizes the reconnect window a server announces when it
// stops (Stop, and GracefulStop once drained): each client it holds is
// told to make its first reconnect attempt at a uniformly random point of
// the window, so that a whole fleet does not come back to the restarted
// server (or another replica) at once, with more handshakes than it can
// finish within the handshake timeout. The window is perClient for every
// QUIC client held and half that for every TCP one (whose handshake costs
// the server about half), at most max: set perClient to about what one
// client's handshake costs the server that takes the fleet back, divided
// by the CPUs it has. Clients older than the announcement, and those that
// set WithMaxReconnectWindow(0), reconnect at once as before. Defaults:
// DefaultReconnectWindowPerClient and DefaultMaxReconnectWindow; 0 for
// either announces no window. Negative values are ignored.
func WithReconnectWindow(perClient, max time.Duration) ServerOption {
	return serverOptionFunc(func(o *serverOptions) {
		if perClient >= 0 && max >= 0 {
			o.reconnectCost, o.reconnectMax = perClient, max
		}
	})
}

// WithMaxConcurrentHandshakes caps the QUIC TLS handshakes the server runs
// at once. A client beyond it waits for one of them to finish: its first
// packets are held, or dropped and sent again by the client, in the order
// they came, and a client that finds no handshake finishing within a
// second is refused and backs off. Without a cap, a fleet larger than the
// server can take within the handshake timeout (a restart of a server
// holding many clients) shares the CPU among all its handshakes, which
// then time out together and are redone; with one, they finish a batch
// at a time. It also sets when QUIC clients must first answer a Retry (see
// WithMaxPendingHandshakes): once n/2 are in progress, if that is fewer
// than 256. The default is DefaultMaxConcurrentHandshakes; 0 sets no cap.
// TCP handshakes are not affected.
func WithMaxConcurrentHandshakes(n int) ServerOption {
	return serverOptionFunc(func(o *serverOptions) {
		if n >= 0 {
			o.maxHandshaking = n
		}
	})
}

// WithHandshakeRateLimit limits new connections per remote IP address (per
// /64 prefix for IPv6, which hands a host a whole /64) to perSecond on
// average, with bursts of burst. Connections beyond it are refused before
// any cryptographic work. The server tracks at most 65,536 addresses at once,
// at a constant cost per connection; past that, the address seen longest ago
// is forgotten, so a flood from more addresses than that is limited for the
// most recent ones and costs a few MiB at most. On QUIC, addresses are validated
// first (one extra round trip), so a spoofed address cannot use up another
// address's allowance. It is off by default: many devices may share one NAT
// address, so pick values for the largest fleet behind one address.
func WithHandshakeRateLimit(perSecond float64, burst int) ServerOption {
	return serverOptionFunc(func(o *serverOptions) {
		o.ratePerSecond, o.rateBurst = perSecond, burst
	})
}

// WithLogger makes brpc log to l: on a server, clients connecting and
// disconnecting at Info and refused or lost clients at Warn; on a client,
// sessions starting and ending and, with several endpoints, each endpoint
// passed over (its address and error) at Info, the start of each reconnect
// attempt (its number and the delay before it) at Debug, and failed
// reconnect attempts at Warn. Records carry the peer ID, transport and remote address as
// attributes. Without it, brpc logs nothing.
func WithLogger(l *slog.Logger) Option {
	return commonOption(func(o *common) { o.logger = l })
}
