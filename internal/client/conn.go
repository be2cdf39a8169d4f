// Package client is the core of a brpc client: the supervisor that keeps
// one session to the server current (reconnecting with backoff, racing QUIC
// and TCP for a bare host:port), the forward gRPC connection whose dialer
// takes streams from the current session, and the feed of the server's
// streams to the client's own *grpc.Server. The public brpc.ClientConn is a
// thin layer over Conn.
package client

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc/internal/grpcglue"
	"github.com/brpc-go/brpc/internal/session"
)

// minConnectTimeout bounds one reconnect attempt, as grpc-go's
// MinConnectTimeout does for its connection attempts.
const minConnectTimeout = 20 * time.Second

// Config is a client's configuration, filled by the public dial options and
// the parsed target.
type Config struct {
	Target string // as given to Dial, for errors and logs
	Scheme string // "quic", "tcp" or "" (race both), for every endpoint
	// Endpoints are the server's addresses: every connect tries them in
	// turn, starting at a random one, until one welcomes the client.
	Endpoints []Endpoint

	Session       session.Settings
	DialOptions   []grpc.DialOption
	Server        *grpc.Server // the client's own services; nil: none
	Metadata      metadata.MD  // sent in every hello
	Backoff       backoff.Config
	FallbackDelay time.Duration
	// ForwardIdle is how long the forward gRPC connection stays open
	// without calls (grpc-go's idle mode); 0: for as long as the session.
	ForwardIdle time.Duration
	// MaxReconnectWindow caps the reconnect window a server's Closing
	// notice announces; 0 ignores announcements.
	MaxReconnectWindow time.Duration
	Logger             *slog.Logger // nil: no logging
}

// Conn is a client's connection to a brpc server, across sessions: when a
// session ends for any reason other than Close, it reconnects, unless the
// server closed it because another connection took this client's ID.
type Conn struct {
	conf Config

	cc      *grpc.ClientConn // forward calls; lives as long as the Conn
	forward *sessionResolver // gives cc an address per session
	gs      *grpc.Server     // reverse calls
	ownGS   bool
	streams *grpcglue.Listener // feeds gs from whichever session is current

	ctx    context.Context // ended by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	cur     *clientSession // nil while disconnected
	id      string
	winner  string // transport of the last session, tried first next time
	state   connectivity.State
	stateCh chan struct{} // closed and replaced at every state change
	stopErr error         // why the Conn stopped for good, if it did
	closed  bool
}

// Endpoint is one address a Conn may reach its server at.
type Endpoint struct {
	HostPort string
	TLS      *tls.Config // with brpc's protocol settings and ServerName set
}

// clientSession is one session of a Conn.
type clientSession struct {
	sess      session.Session
	endpoint  int // index in Config.Endpoints
	id        string
	ctrl      net.Conn
	info      *grpcglue.SessionInfo // describes the server
	goingAway atomic.Bool
	// reconnectWindow is what the server's Closing notice asked the
	// first reconnect attempt to be spread over (0: none). Set and read
	// on the supervising goroutine only.
	reconnectWindow time.Duration
}

var _ grpc.ClientConnInterface = (*Conn)(nil)

// Dial connects, authenticates and returns once the server has accepted the
// client (or the error that rejected it). It does not retry. Errors are
// gRPC status errors.
func Dial(ctx context.Context, conf Config) (*Conn, error) {
	if len(conf.Endpoints) == 0 {
		return nil, status.Errorf(codes.InvalidArgument, "brpc: target %q names no endpoint", conf.Target)
	}
	c := &Conn{
		conf:    conf,
		state:   connectivity.Connecting,
		stateCh: make(chan struct{}),
	}
	cs, err := c.connect(ctx, -1)
	if err != nil {
		return nil, err
	}

	dialOpts := append(slices.Clone(conf.DialOptions),
		grpc.WithContextDialer(c.dialStream),
		grpc.WithTransportCredentials(grpcglue.Credentials{}),
		// The dialer fails at once, without touching the network, while
		// the Conn reconnects: grpc-go may retry it often. A new session
		// reaches grpc-go at once as a new address (forward). The
		// network-facing backoff is the Conn's own (Config.Backoff).
		grpc.WithConnectParams(grpcglue.ConnectParams),
		// grpc-go's idle mode closes the connection's transport (its
		// stream, and the HTTP/2 server transport on the server) and
		// reopens one on the current session at the next call.
		grpc.WithIdleTimeout(conf.ForwardIdle),
	)
	c.forward = &sessionResolver{}
	dialOpts = append(dialOpts, grpc.WithResolvers(c.forward))
	// The first endpoint names the server for grpc-go (its :authority);
	// every address the resolver gives reaches the current session.
	c.cc, err = grpc.NewClient(sessionScheme+":///"+conf.Endpoints[0].HostPort, dialOpts...)
	if err != nil {
		cs.sess.Close(session.CodeNormal, "client setup failed")
		return nil, status.Errorf(codes.InvalidArgument, "brpc: %v", err)
	}
	c.gs = conf.Server
	if c.gs == nil {
		// Nothing to serve: the server's calls get codes.Unimplemented.
		c.gs, c.ownGS = grpc.NewServer(), true
	}
	c.streams = grpcglue.NewListener(cs.sess.LocalAddr())
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.setSession(cs)

	c.wg.Add(2)
	go func() {
		defer c.wg.Done()
		_ = c.gs.Serve(c.streams)
	}()
	go c.supervise(cs)
	return c, nil
}

// ParseTarget returns the scheme ("" for bare host:port endpoints) and the
// endpoints of a Dial target: one host:port or several, comma-separated,
// after one optional scheme that applies to all. Blanks around an endpoint
// are ignored. Its error is a codes.InvalidArgument status.
func ParseTarget(target string) (scheme string, hostports []string, err error) {
	rest := target
	if sch, after, ok := strings.Cut(target, "://"); ok {
		switch sch {
		case session.TransportQUIC, session.TransportTCP:
			scheme, rest = sch, after
		default:
			return "", nil, status.Errorf(codes.InvalidArgument, "brpc: unknown scheme %q in target %q (want quic://, tcp:// or host:port)", sch, target)
		}
	}
	for _, ep := range strings.Split(rest, ",") {
		ep = strings.TrimSpace(ep)
		switch {
		case ep == "":
			return "", nil, status.Errorf(codes.InvalidArgument, "brpc: bad target %q: an empty endpoint in the list", target)
		case strings.Contains(ep, "://"):
			return "", nil, status.Errorf(codes.InvalidArgument, "brpc: bad target %q: endpoint %q has a scheme of its own (a scheme goes once, before the first endpoint, and applies to all)", target, ep)
		}
		if _, _, err := net.SplitHostPort(ep); err != nil {
			return "", nil, status.Errorf(codes.InvalidArgument, "brpc: bad target %q: %v", target, err)
		}
		hostports = append(hostports, ep)
	}
	return scheme, hostports, nil
}

// setSession makes cs (nil: none) the current session. It reports false,
// having closed cs, when the Conn was closed meanwhile.
func (c *Conn) setSession(cs *clientSession) bool {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		if cs != nil {
			cs.sess.Close(session.CodeNormal, "client closed")
		}
		return false
	}
	c.cur = cs
	if cs != nil {
		c.id = cs.id
		c.winner = cs.sess.Transport()
	}
	c.mu.Unlock()
	if cs != nil {
		c.forward.next()
		c.awaitForward(cs)
		c.log(slog.LevelInfo, "brpc: connected", cs)
		c.setState(connectivity.Ready)
	} else {
		c.setState(connectivity.Connecting)
	}
	return true
}

// stop ends the Conn's life on its own, when reconnecting would be
// wrong; Close still has to be called.
func (c *Conn) stop(err error) {
	c.mu.Lock()
	c.stopErr = err
	c.mu.Unlock()
	c.setState(connectivity.Shutdown)
}

func (c *Conn) setState(s connectivity.State) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == s || c.state == connectivity.Shutdown {
		return
	}
	c.state = s
	close(c.stateCh)
	c.stateCh = make(chan struct{})
}

// GetState returns the connectivity state: Ready while a session is up
// (after a reconnect, once forward calls run on the new session), Connecting
// or TransientFailure while reconnecting, Shutdown once closed (or stopped
// because another connection took the client's ID).
func (c *Conn) GetState() connectivity.State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// WaitForStateChange waits until the state differs from source or ctx ends;
// it reports whether the state changed, like grpc.ClientConn's method.
func (c *Conn) WaitForStateChange(ctx context.Context, source connectivity.State) bool {
	for {
		c.mu.Lock()
		state, ch := c.state, c.stateCh
		c.mu.Unlock()
		if state != source {
			return true
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}

// Invoke performs a unary RPC on the server. It implements
// grpc.ClientConnInterface.
func (c *Conn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	return c.cc.Invoke(ctx, method, args, reply, opts...)
}

// NewStream begins a streaming RPC on the server. It implements
// grpc.ClientConnInterface.
func (c *Conn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return c.cc.NewStream(ctx, desc, method, opts...)
}

// ServerPeer describes the server end of the current session: its address,
// the transport in use and when the session started (the ID is empty). It
// reports false while the Conn is disconnected.
func (c *Conn) ServerPeer() (grpcglue.Peer, bool) {
	c.mu.Lock()
	cs := c.cur
	c.mu.Unlock()
	if cs == nil {
		return grpcglue.Peer{}, false
	}
	return cs.info.Snapshot(), true
}

// ID returns the ID the server gave this client on its current (or last)
// session. An authenticator that returns the same ID on every connection
// keeps it stable across reconnects.
func (c *Conn) ID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.id
}

// Close closes both directions and stops reconnecting: calls in flight end
// with an error, the session ends and the client's *grpc.Server stops being
// fed. A *grpc.Server given in Config.Server is not stopped: it may serve
// elsewhere too; call its Stop to wait for handlers still running.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	cs := c.cur
	c.cur = nil
	c.stopErr = status.Error(codes.Canceled, "brpc: the client connection is closed")
	c.mu.Unlock()

	c.cancel()
	if cs != nil {
		cs.sess.Close(session.CodeNormal, "client closed")
	}
	c.cc.Close()
	c.streams.Close()
	if c.ownGS {
		c.gs.Stop()
	}
	c.wg.Wait()
	c.setState(connectivity.Shutdown)
	return nil
}

// log writes a record about cs (nil: the Conn in general), if there
// is a logger.
func (c *Conn) log(level slog.Level, msg string, cs *clientSession, attrs ...slog.Attr) {
	l := c.conf.Logger
	if l == nil {
		return
	}
	base := []slog.Attr{slog.String("target", c.conf.Target)}
	if cs != nil {
		base = append(base,
			slog.String("client_id", cs.id),
			slog.String("transport", cs.sess.Transport()),
			slog.String("remote_addr", addrString(cs.sess.RemoteAddr())))
	}
	l.LogAttrs(context.Background(), level, msg, append(base, attrs...)...)
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}
