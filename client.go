package brpc

import (
	"context"
	"errors"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc/internal/handshake"
	"github.com/brpc-go/brpc/internal/handshake/handshakepb"
	"github.com/brpc-go/brpc/internal/session"
)

// maxWelcomeSize caps the messages a client reads from the server's side of
// the control stream.
const maxWelcomeSize = handshake.DefaultMaxMessageSize

// ClientConn is a client's connection to a brpc server. It implements
// grpc.ClientConnInterface, so generated stubs call the server through it,
// and it serves the client's own *grpc.Server (WithServer) to the server.
type ClientConn struct {
	opts   dialOptions
	target string

	sess session.Session
	info *sessionInfo // describes the server
	id   string
	ctrl net.Conn

	cc      *grpc.ClientConn // forward calls
	gs      *grpc.Server     // reverse calls
	ownGS   bool
	streams *streamListener

	goingAway atomic.Bool
	closeOnce sync.Once
	wg        sync.WaitGroup
}

var _ grpc.ClientConnInterface = (*ClientConn)(nil)

// Dial connects, authenticates and returns once the server has accepted the
// client (or the error that rejected it). target is "quic://host:port",
// "tcp://host:port" (TLS over TCP) or "host:port" (QUIC; falling back to TCP
// automatically is not part of this release).
// Errors are gRPC status errors: the server's rejection as it sent it,
// codes.InvalidArgument for a bad target or options, codes.DeadlineExceeded or
// codes.Canceled when ctx ends first, and codes.Unavailable when the server
// cannot be reached.
func Dial(ctx context.Context, target string, opts ...DialOption) (*ClientConn, error) {
	o := defaultDialOptions()
	for _, opt := range opts {
		opt.applyDial(&o)
	}
	if o.tls == nil {
		return nil, status.Error(codes.InvalidArgument, "brpc: Dial needs WithTLSConfig")
	}
	transport, hostport, err := parseTarget(target)
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

	var sess session.Session
	if transport == session.TransportTCP {
		sess, err = session.DialTCP(ctx, hostport, tlsConf, session.TCPConfig{
			KeepAlive:          o.keepaliveInterval,
			IdleTimeout:        o.keepaliveTimeout,
			MaxIncomingStreams: o.maxStreams,
		})
	} else {
		sess, err = session.DialQUIC(ctx, hostport, tlsConf, session.QUICConfig{
			KeepAlive:          o.keepaliveInterval,
			IdleTimeout:        o.keepaliveTimeout,
			MaxIncomingStreams: o.maxStreams,
		})
	}
	if err != nil {
		return nil, dialError(ctx, "dial "+target, err)
	}
	c := &ClientConn{opts: o, target: target, sess: sess}
	if err := c.handshake(ctx); err != nil {
		sess.Close(session.CodeNormal, "handshake failed")
		return nil, err
	}
	c.info = &sessionInfo{
		peer: Peer{RemoteAddr: sess.RemoteAddr(), Transport: sess.Transport(), ConnectedAt: time.Now()},
		tls: credentials.TLSInfo{
			State:          sess.TLS(),
			CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		},
		owner: c,
	}

	dialOpts := append(slices.Clone(o.grpcDialOptions),
		grpc.WithContextDialer(c.dialStream),
		grpc.WithTransportCredentials(sessionCreds{}),
	)
	c.cc, err = grpc.NewClient("passthrough:///"+hostport, dialOpts...)
	if err != nil {
		sess.Close(session.CodeNormal, "client setup failed")
		return nil, status.Errorf(codes.InvalidArgument, "brpc: %v", err)
	}

	c.gs = o.server
	if c.gs == nil {
		// Nothing to serve: the server's calls get codes.Unimplemented.
		c.gs, c.ownGS = grpc.NewServer(), true
	}
	c.streams = newStreamListener(sess.LocalAddr())
	c.wg.Add(3)
	go func() {
		defer c.wg.Done()
		_ = c.gs.Serve(c.streams)
	}()
	go c.acceptLoop()
	go c.controlLoop()
	return c, nil
}

// parseTarget returns the transport and host:port of a target.
func parseTarget(target string) (transport, hostport string, err error) {
	scheme, rest, ok := strings.Cut(target, "://")
	if !ok {
		return session.TransportQUIC, target, nil
	}
	switch scheme {
	case "quic":
		return session.TransportQUIC, rest, nil
	case "tcp":
		return session.TransportTCP, rest, nil
	default:
		return "", "", status.Errorf(codes.InvalidArgument, "brpc: unknown scheme %q in target %q (want quic://, tcp:// or host:port)", scheme, target)
	}
}

// dialError turns a connection failure into a gRPC status.
func dialError(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return status.FromContextError(ctx.Err()).Err()
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	if code, reason, ok := session.PeerCloseCode(err); ok {
		c := closeCodeToGRPC(code)
		if code == session.CodeRejected {
			// A rejection's reason is "<grpc code> <message>".
			num, msg, _ := strings.Cut(reason, " ")
			if n, err := strconv.ParseUint(num, 10, 32); err == nil && n != 0 && n <= 16 {
				c, reason = codes.Code(n), msg
			}
		}
		return status.Errorf(c, "brpc: %s: server closed the session: %s", what, reason)
	}
	return status.Errorf(codes.Unavailable, "brpc: %s: %v", what, err)
}

func closeCodeToGRPC(code session.CloseCode) codes.Code {
	switch code {
	case session.CodeRejected:
		return codes.PermissionDenied
	case session.CodeProtocol:
		return codes.Internal
	case session.CodeHandshakeTimeout:
		return codes.DeadlineExceeded
	default:
		return codes.Unavailable
	}
}

// handshake sends the hello and waits for the welcome.
func (c *ClientConn) handshake(ctx context.Context) error {
	ctrl, err := c.sess.OpenStream(ctx)
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
	c.ctrl, c.id = ctrl, w.GetId()
	return nil
}

// dialStream opens a stream for grpc-go's connection to the server.
func (c *ClientConn) dialStream(ctx context.Context, _ string) (net.Conn, error) {
	if c.goingAway.Load() {
		return nil, errors.New("brpc: the server is going away")
	}
	s, err := c.sess.OpenStream(ctx)
	if err != nil {
		return nil, err
	}
	return newStreamConn(s, c.info), nil
}

// acceptLoop feeds the streams the server opens to the client's gRPC server.
func (c *ClientConn) acceptLoop() {
	defer c.wg.Done()
	ctx := c.sess.Context()
	for {
		s, err := c.sess.AcceptStream(ctx)
		if err != nil {
			return
		}
		c.streams.push(ctx, newStreamConn(s, c.info))
	}
}

// controlLoop reads the server's notices until the session ends.
func (c *ClientConn) controlLoop() {
	defer c.wg.Done()
	for {
		var n handshakepb.Notice
		if err := handshake.ReadMsg(c.ctrl, &n, maxWelcomeSize); err != nil {
			if !errors.Is(err, handshake.ErrTooLarge) && !errors.Is(err, handshake.ErrMalformed) {
				return
			}
			c.sess.Close(session.CodeProtocol, "bad control message")
			return
		}
		if n.GetGoAway() != nil {
			c.goingAway.Store(true)
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

// ID returns the ID the server gave this client.
func (c *ClientConn) ID() string { return c.id }

// Close closes both directions: calls in flight end with an error, the
// session ends and the client's *grpc.Server stops being fed. A *grpc.Server
// given with WithServer is not stopped: it may serve elsewhere too; call its
// Stop to wait for handlers still running.
func (c *ClientConn) Close() error {
	c.closeOnce.Do(func() {
		c.sess.Close(session.CodeNormal, "client closed")
		c.cc.Close()
		c.streams.Close()
		if c.ownGS {
			c.gs.Stop()
		}
		c.wg.Wait()
	})
	return nil
}
