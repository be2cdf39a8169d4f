package brpc

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"math/rand/v2"
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
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc/internal/handshake"
	"github.com/brpc-go/brpc/internal/handshake/handshakepb"
	"github.com/brpc-go/brpc/internal/session"
)

// maxWelcomeSize caps the messages a client reads from the server's side of
// the control stream.
const maxWelcomeSize = handshake.DefaultMaxMessageSize

// minConnectTimeout bounds one reconnect attempt, as grpc-go's
// MinConnectTimeout does for its connection attempts.
const minConnectTimeout = 20 * time.Second

// streamConnParams are the connect parameters of the gRPC connections brpc
// runs over streams of a session (the client's connection to the server and
// the server's to each client). Opening such a connection costs no network
// round trip beyond HTTP/2's preface, and a failed attempt fails at once, so
// retries are quick. grpc-go's 20 s MinConnectTimeout would end an attempt
// whose peer is merely busy (a server calling thousands of clients at once
// waits that long for some prefaces); a dead peer ends the session, and with
// it the attempt, within the keepalive timeout, so the attempt is given much
// longer.
var streamConnParams = grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 200 * time.Millisecond},
	MinConnectTimeout: 5 * time.Minute,
}

// ClientConn is a client's connection to a brpc server. It implements
// grpc.ClientConnInterface, so generated stubs call the server through it,
// and it serves the client's own *grpc.Server (WithServer) to the server.
//
// A ClientConn outlives its sessions: when a session ends for any reason
// other than Close, it reconnects with exponential backoff and jitter,
// authenticates again and goes on serving. Stubs built on it keep working.
// Calls made while it is disconnected wait or fail as grpc's wait-for-ready
// call option says. The one exception is a session the server closed
// because another connection took this client's ID: the ClientConn then
// stops (GetState reports Shutdown) rather than take the ID back.
type ClientConn struct {
	opts     dialOptions
	target   string
	hostport string
	tls      *tls.Config
	scheme   string // "quic", "tcp" or "" (race both)

	cc      *grpc.ClientConn // forward calls; lives as long as the ClientConn
	gs      *grpc.Server     // reverse calls
	ownGS   bool
	streams *streamListener // feeds gs from whichever session is current

	ctx    context.Context // ended by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	cur     *clientSession // nil while disconnected
	id      string
	winner  string // transport of the last session, tried first next time
	state   connectivity.State
	stateCh chan struct{} // closed and replaced at every state change
	stopErr error         // why the ClientConn stopped for good, if it did
	closed  bool
}

// clientSession is one session of a ClientConn.
type clientSession struct {
	sess      session.Session
	id        string
	ctrl      net.Conn
	info      *sessionInfo // describes the server
	goingAway atomic.Bool
}

var _ grpc.ClientConnInterface = (*ClientConn)(nil)

// Dial connects, authenticates and returns once the server has accepted the
// client (or the error that rejected it). target is "quic://host:port",
// "tcp://host:port" (TLS over TCP) or "host:port": QUIC first, and TCP as
// well when QUIC has not connected within the fallback delay
// (WithFallbackDelay); whichever connects first is used, and tried first
// when reconnecting. Dial does not retry: it fails within ctx's deadline
// when nothing answers. Errors are gRPC status errors: the server's
// rejection as it sent it, codes.InvalidArgument for a bad target or
// options, codes.DeadlineExceeded or codes.Canceled when ctx ends first, and
// codes.Unavailable when the server cannot be reached.
func Dial(ctx context.Context, target string, opts ...DialOption) (*ClientConn, error) {
	o := defaultDialOptions()
	for _, opt := range opts {
		opt.applyDial(&o)
	}
	if o.tls == nil {
		return nil, status.Error(codes.InvalidArgument, "brpc: Dial needs WithTLSConfig")
	}
	scheme, hostport, err := parseTarget(target)
	if err != nil {
		return nil, err
	}
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "brpc: bad target %q: %v", target, err)
	}
	tlsConf := protocolTLS(o.tls)
	if tlsConf.ServerName == "" {
		tlsConf.ServerName = host
	}

	c := &ClientConn{
		opts:     o,
		target:   target,
		hostport: hostport,
		tls:      tlsConf,
		scheme:   scheme,
		state:    connectivity.Connecting,
		stateCh:  make(chan struct{}),
	}
	cs, err := c.connect(ctx)
	if err != nil {
		return nil, err
	}

	dialOpts := append(slices.Clone(o.grpcDialOptions),
		grpc.WithContextDialer(c.dialStream),
		grpc.WithTransportCredentials(sessionCreds{}),
		// The dialer fails at once, without touching the network, while
		// the ClientConn reconnects: grpc-go may retry it often, so that it
		// finds the new session soon after it is there. The network-facing
		// backoff is the ClientConn's own (WithConnectBackoff).
		grpc.WithConnectParams(streamConnParams),
	)
	c.cc, err = grpc.NewClient("passthrough:///"+hostport, dialOpts...)
	if err != nil {
		cs.sess.Close(session.CodeNormal, "client setup failed")
		return nil, status.Errorf(codes.InvalidArgument, "brpc: %v", err)
	}
	c.gs = o.server
	if c.gs == nil {
		// Nothing to serve: the server's calls get codes.Unimplemented.
		c.gs, c.ownGS = grpc.NewServer(), true
	}
	c.streams = newStreamListener(cs.sess.LocalAddr())
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

// parseTarget returns the scheme ("" for a bare host:port) and host:port.
func parseTarget(target string) (scheme, hostport string, err error) {
	scheme, rest, ok := strings.Cut(target, "://")
	if !ok {
		return "", target, nil
	}
	switch scheme {
	case session.TransportQUIC, session.TransportTCP:
		return scheme, rest, nil
	default:
		return "", "", status.Errorf(codes.InvalidArgument, "brpc: unknown scheme %q in target %q (want quic://, tcp:// or host:port)", scheme, target)
	}
}

// supervise runs sessions one after the other until Close: it serves the
// current one until it ends, then reconnects.
func (c *ClientConn) supervise(cs *clientSession) {
	defer c.wg.Done()
	for {
		c.serveSession(cs)
		if c.ctx.Err() != nil {
			return
		}
		err := c.sessionEnded(cs)
		c.log(slog.LevelInfo, "brpc: session ended", cs, slog.String("cause", errString(context.Cause(cs.sess.Context()))))
		if err != nil {
			c.log(slog.LevelWarn, "brpc: not reconnecting", cs, slog.String("reason", err.Error()))
			c.stop(err)
			return
		}
		if cs = c.reconnect(); cs == nil || !c.setSession(cs) {
			return
		}
	}
}

// serveSession feeds the streams the server opens to the client's gRPC
// server and reads the server's notices, until the session ends.
func (c *ClientConn) serveSession(cs *clientSession) {
	var accepting sync.WaitGroup
	accepting.Add(1)
	go func() {
		defer accepting.Done()
		ctx := cs.sess.Context()
		for {
			s, err := cs.sess.AcceptStream(ctx)
			if err != nil {
				return
			}
			c.streams.push(ctx, newStreamConn(s, cs.info))
		}
	}()
	for {
		var n handshakepb.Notice
		if err := handshake.ReadMsg(cs.ctrl, &n, maxWelcomeSize); err != nil {
			if errors.Is(err, handshake.ErrTooLarge) || errors.Is(err, handshake.ErrMalformed) {
				cs.sess.Close(session.CodeProtocol, "bad control message")
			}
			break
		}
		switch {
		case n.GetGoAway() != nil:
			cs.goingAway.Store(true)
		case n.GetClosing() != nil:
			// The server's last word: close the session from this side,
			// with the server's code as the session's ending.
			cs.goingAway.Store(true)
			cs.sess.PeerAnnounced(session.CloseCode(n.GetClosing().GetCode()), n.GetClosing().GetReason())
		}
	}
	// The control stream lives as long as the session: past it, the
	// session is over whatever the transport says.
	cs.sess.Close(session.CodeNormal, "control stream ended")
	accepting.Wait()
	c.setSession(nil)
}

// sessionEnded decides what the end of cs means: nil to reconnect, or the
// error the ClientConn stops with.
func (c *ClientConn) sessionEnded(cs *clientSession) error {
	if e, _ := cs.sess.Ending(); e.Kind == session.EndClosed && e.ByPeer && e.Code == session.CodeReplaced {
		return status.Errorf(codes.Unavailable, "brpc: another connection took this client's ID %q: %s", cs.id, e.Reason)
	}
	return nil
}

// reconnect dials until a session is welcomed, with grpc-go's backoff
// semantics: the first attempt at once, then exponentially growing,
// jittered delays. It returns nil once the ClientConn is closed.
func (c *ClientConn) reconnect() *clientSession {
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			t := time.NewTimer(backoffDelay(c.opts.backoff, attempt-1))
			select {
			case <-t.C:
			case <-c.ctx.Done():
				t.Stop()
				return nil
			}
		}
		c.setState(connectivity.Connecting)
		ctx, cancel := context.WithTimeout(c.ctx, minConnectTimeout)
		cs, err := c.connect(ctx)
		cancel()
		if err == nil {
			return cs
		}
		if c.ctx.Err() != nil {
			return nil
		}
		c.log(slog.LevelWarn, "brpc: reconnect failed", nil, slog.Int("attempt", attempt+1), slog.String("error", err.Error()))
		c.setState(connectivity.TransientFailure)
	}
}

// backoffDelay is the delay before retry number retries (0-based), as
// grpc-go computes it.
func backoffDelay(bc backoffConfig, retries int) time.Duration {
	d, max := float64(bc.BaseDelay), float64(bc.MaxDelay)
	for ; d < max && retries > 0; retries-- {
		d *= bc.Multiplier
	}
	d = min(d, max)
	d *= 1 + bc.Jitter*(rand.Float64()*2-1)
	if d < 0 {
		return 0
	}
	return time.Duration(d)
}

// connect establishes a session and runs the handshake on it.
func (c *ClientConn) connect(ctx context.Context) (*clientSession, error) {
	sess, err := c.dialSession(ctx)
	if err != nil {
		return nil, dialError(ctx, "dial "+c.target, err)
	}
	cs := &clientSession{sess: sess}
	if err := c.handshake(ctx, cs); err != nil {
		sess.Close(session.CodeNormal, "handshake failed")
		return nil, err
	}
	cs.info = &sessionInfo{
		peer: Peer{RemoteAddr: sess.RemoteAddr(), Transport: sess.Transport(), ConnectedAt: time.Now()},
		tls: credentials.TLSInfo{
			State:          sess.TLS(),
			CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		},
		owner: c,
	}
	return cs, nil
}

// dialSession opens a session on the target's transport or, for a bare
// host:port, races the transports: the preferred one (the last winner, QUIC
// at first) starts at once, the other after the fallback delay or as soon
// as the first fails, and the first session established wins.
func (c *ClientConn) dialSession(ctx context.Context) (session.Session, error) {
	if c.scheme != "" {
		return c.dialTransport(ctx, c.scheme)
	}
	c.mu.Lock()
	first, second := session.TransportQUIC, session.TransportTCP
	if c.winner == session.TransportTCP {
		first, second = second, first
	}
	c.mu.Unlock()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		sess session.Session
		err  error
	}
	results := make(chan result, 2)
	start := func(tr string) {
		go func() {
			s, err := c.dialTransport(ctx, tr)
			results <- result{s, err}
		}()
	}
	start(first)
	fallback := time.NewTimer(c.opts.fallbackDelay)
	defer fallback.Stop()
	started, done := 1, 0
	var errs []error
	for done < started {
		select {
		case <-fallback.C:
			if started == 1 {
				start(second)
				started++
			}
			continue
		case r := <-results:
			done++
			if r.err == nil {
				cancel()
				// The other attempt, if any, is abandoned: close what it
				// may still establish.
				if started > done {
					go func() {
						if r := <-results; r.err == nil {
							r.sess.Close(session.CodeNormal, "lost the transport race")
						}
					}()
				}
				return r.sess, nil
			}
			errs = append(errs, r.err)
			if started == 1 {
				start(second)
				started++
			}
		}
	}
	return nil, errors.Join(errs...)
}

func (c *ClientConn) dialTransport(ctx context.Context, transport string) (session.Session, error) {
	conf := c.opts.sessionConfig()
	if transport == session.TransportTCP {
		return session.DialTCP(ctx, c.hostport, c.tls, session.TCPConfig{Settings: conf})
	}
	return session.DialQUIC(ctx, c.hostport, c.tls, session.QUICConfig{Settings: conf})
}

// dialError turns a connection failure into a gRPC status.
func dialError(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return status.FromContextError(ctx.Err()).Err()
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	if e, ok := session.EndingOf(err); ok && e.Kind == session.EndClosed && e.ByPeer {
		return status.Errorf(e.Code.GRPCCode(), "brpc: %s: server closed the session: %s", what, e.Reason)
	}
	return status.Errorf(codes.Unavailable, "brpc: %s: %v", what, err)
}

// handshake sends the hello and waits for the welcome.
func (c *ClientConn) handshake(ctx context.Context, cs *clientSession) error {
	ctrl, err := cs.sess.OpenStream(ctx)
	if err != nil {
		return dialError(ctx, "handshake", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		ctrl.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { ctrl.SetDeadline(time.Unix(1, 0)) })
	fail := func(err error) error {
		stop()
		ctrl.Close()
		return dialError(ctx, "handshake", err)
	}
	werr := handshake.WriteMsg(ctrl, handshake.NewHello(c.opts.metadata))
	// A server that refuses the hello part-way (too large) stops reading it
	// and answers at once: the welcome is worth reading even when the write
	// failed.
	var w handshakepb.Welcome
	if err := handshake.ReadMsg(ctrl, &w, maxWelcomeSize); err != nil {
		if werr != nil {
			return fail(werr)
		}
		return fail(err)
	}
	if w.GetStatus() != nil {
		stop()
		ctrl.Close()
		return handshake.StatusFromProto(w.GetStatus())
	}
	if err := handshake.CheckWelcomeVersion(&w); err != nil {
		return fail(err)
	}
	if w.GetId() == "" {
		return fail(status.Error(codes.Internal, "brpc: the server's welcome carries no ID"))
	}
	if !stop() {
		// ctx ended just as the welcome came: the control stream's deadline
		// may already have been cut short.
		ctrl.Close()
		return status.FromContextError(ctx.Err()).Err()
	}
	ctrl.SetDeadline(time.Time{})
	cs.ctrl, cs.id = ctrl, w.GetId()
	return nil
}

// dialStream opens a stream for grpc-go's connection to the server on the
// current session. While there is none, it fails at once: grpc-go then
// fails calls fast or holds wait-for-ready ones, and retries the dialer on
// its short backoff until a session is back.
func (c *ClientConn) dialStream(ctx context.Context, _ string) (net.Conn, error) {
	c.mu.Lock()
	cs, stopErr := c.cur, c.stopErr
	c.mu.Unlock()
	if cs == nil {
		if stopErr != nil {
			return nil, stopErr
		}
		return nil, errors.New("brpc: not connected to the server; reconnecting")
	}
	if cs.goingAway.Load() {
		return nil, errors.New("brpc: the server is going away")
	}
	s, err := cs.sess.OpenStream(ctx)
	if err != nil {
		return nil, err
	}
	return newStreamConn(s, cs.info), nil
}

// setSession makes cs (nil: none) the current session. It reports false,
// having closed cs, when the ClientConn was closed meanwhile.
func (c *ClientConn) setSession(cs *clientSession) bool {
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
		c.log(slog.LevelInfo, "brpc: connected", cs)
		c.setState(connectivity.Ready)
	} else {
		c.setState(connectivity.Connecting)
	}
	return true
}

// stop ends the ClientConn's life on its own, when reconnecting would be
// wrong; Close still has to be called.
func (c *ClientConn) stop(err error) {
	c.mu.Lock()
	c.stopErr = err
	c.mu.Unlock()
	c.setState(connectivity.Shutdown)
}

func (c *ClientConn) setState(s connectivity.State) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == s || c.state == connectivity.Shutdown {
		return
	}
	c.state = s
	close(c.stateCh)
	c.stateCh = make(chan struct{})
}

// GetState returns the connectivity state: Ready while a session is up,
// Connecting or TransientFailure while reconnecting, Shutdown once closed
// (or stopped because another connection took the client's ID).
func (c *ClientConn) GetState() connectivity.State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// WaitForStateChange waits until the state differs from source or ctx ends;
// it reports whether the state changed, like grpc.ClientConn's method.
func (c *ClientConn) WaitForStateChange(ctx context.Context, source connectivity.State) bool {
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
func (c *ClientConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	return c.cc.Invoke(ctx, method, args, reply, opts...)
}

// NewStream begins a streaming RPC on the server. It implements
// grpc.ClientConnInterface.
func (c *ClientConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return c.cc.NewStream(ctx, desc, method, opts...)
}

// ServerPeer describes the server end of the current session: its address,
// the transport in use and when the session started (the ID is empty). It
// reports false while the ClientConn is disconnected.
func (c *ClientConn) ServerPeer() (Peer, bool) {
	c.mu.Lock()
	cs := c.cur
	c.mu.Unlock()
	if cs == nil {
		return Peer{}, false
	}
	return cs.info.snapshot(), true
}

// ID returns the ID the server gave this client on its current (or last)
// session. An Authenticator that returns the same ID on every connection
// keeps it stable across reconnects.
func (c *ClientConn) ID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.id
}

// Close closes both directions and stops reconnecting: calls in flight end
// with an error, the session ends and the client's *grpc.Server stops being
// fed. A *grpc.Server given with WithServer is not stopped: it may serve
// elsewhere too; call its Stop to wait for handlers still running.
func (c *ClientConn) Close() error {
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

// log writes a record about cs (nil: the ClientConn in general), if there
// is a logger.
func (c *ClientConn) log(level slog.Level, msg string, cs *clientSession, attrs ...slog.Attr) {
	l := c.opts.logger
	if l == nil {
		return
	}
	base := []slog.Attr{slog.String("target", c.target)}
	if cs != nil {
		base = append(base,
			slog.String("client_id", cs.id),
			slog.String("transport", cs.sess.Transport()),
			slog.String("remote_addr", addrString(cs.sess.RemoteAddr())))
	}
	l.LogAttrs(context.Background(), level, msg, append(base, attrs...)...)
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
