package brpc

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// streamListener hands the streams a peer opens to a *grpc.Server: whoever
// accepts a stream is the gRPC server on it.
type streamListener struct {
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newStreamListener(addr net.Addr) *streamListener {
	return &streamListener{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

// push waits until the gRPC server takes c, the listener closes or ctx ends.
// It reports whether c was taken; if not, it closed c.
func (l *streamListener) push(ctx context.Context, c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.done:
	case <-ctx.Done():
	}
	c.Close()
	return false
}

func (l *streamListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *streamListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *streamListener) Addr() net.Addr { return l.addr }

// sessionCreds are the transport credentials of the gRPC connections brpc
// builds on a session. The session is already authenticated and encrypted,
// so the handshake only reports it: the AuthInfo is a credentials.TLSInfo
// with the session's TLS state, which TLS-aware gRPC code (per-RPC
// credentials, authz) understands.
type sessionCreds struct{}

func (sessionCreds) ClientHandshake(_ context.Context, _ string, c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c, authInfoOf(c), nil
}

func (sessionCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c, authInfoOf(c), nil
}

func (sessionCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls", SecurityVersion: "1.3"}
}

func (c sessionCreds) Clone() credentials.TransportCredentials { return c }

func (sessionCreds) OverrideServerName(string) error { return nil }

func authInfoOf(c net.Conn) credentials.AuthInfo {
	if sc, ok := c.(*streamConn); ok {
		return sc.remote.info.tls
	}
	return credentials.TLSInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}
}

// errPeerGone is what calls get once their session has ended.
var errPeerGone = status.Error(codes.Unavailable, "brpc: peer disconnected")

// lazyConn is a grpc.ClientConnInterface whose grpc.ClientConn is created on
// first use, so an idle peer costs nothing for it. It also tracks calls in
// flight so that a graceful stop can wait for them, and it reports calls cut
// off by the end of their session as codes.Unavailable.
//
// With a positive idle time, a grpc.ClientConn that has carried no call for
// that long is closed (its stream on the session with it), so a peer called
// once in a while costs nothing between calls; the next call builds a new
// one.
type lazyConn struct {
	build func() (*grpc.ClientConn, error)
	idle  time.Duration // 0: keep the connection until close

	mu       sync.Mutex
	cc       *grpc.ClientConn
	closeErr error // set once closed: new calls fail with it
	inflight int
	drained  chan struct{} // made by drain; closed when no call is in flight
	idleT    *time.Timer   // releases cc once idle; made on first use
	lastEnd  time.Time     // when inflight last dropped to 0
}

func newLazyConn(build func() (*grpc.ClientConn, error), idle time.Duration) *lazyConn {
	return &lazyConn{build: build, idle: idle}
}

// begin registers a call and returns the connection to make it on.
func (l *lazyConn) begin() (*grpc.ClientConn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closeErr != nil {
		return nil, l.closeErr
	}
	if l.cc == nil {
		cc, err := l.build()
		if err != nil {
			return nil, status.Errorf(codes.Internal, "brpc: creating the gRPC connection: %v", err)
		}
		l.cc = cc
	}
	l.inflight++
	return l.cc, nil
}

func (l *lazyConn) end() {
	l.mu.Lock()
	l.inflight--
	if l.inflight == 0 {
		if l.drained != nil {
			close(l.drained)
		}
		if l.idle > 0 && l.closeErr == nil {
			l.lastEnd = time.Now()
			if l.idleT == nil {
				l.idleT = time.AfterFunc(l.idle, l.releaseIdle)
			} else {
				l.idleT.Reset(l.idle)
			}
		}
	}
	l.mu.Unlock()
}

// releaseIdle closes the gRPC connection if no call has been in flight for
// the idle time.
func (l *lazyConn) releaseIdle() {
	l.mu.Lock()
	if l.cc == nil || l.inflight > 0 || l.closeErr != nil {
		l.mu.Unlock()
		return
	}
	if wait := l.idle - time.Since(l.lastEnd); wait > 0 {
		l.idleT.Reset(wait) // a call ended after the timer was set
		l.mu.Unlock()
		return
	}
	cc := l.cc
	l.cc = nil
	l.mu.Unlock()
	cc.Close()
}

// fixErr maps grpc-go's "connection is closing" (codes.Canceled although the
// caller did not cancel) to codes.Unavailable: the call was cut off because
// its session ended.
func (l *lazyConn) fixErr(ctx context.Context, err error) error {
	if err == nil || errors.Is(ctx.Err(), context.Canceled) {
		return err
	}
	// Canceled although the caller did not cancel (its deadline may have
	// passed since, but it was not what ended the call).
	if status.Code(err) == codes.Canceled {
		l.mu.Lock()
		cerr := l.closeErr
		l.mu.Unlock()
		if cerr == nil {
			cerr = errPeerGone
		}
		return cerr
	}
	return err
}

func (l *lazyConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	cc, err := l.begin()
	if err != nil {
		return err
	}
	defer l.end()
	return l.fixErr(ctx, cc.Invoke(ctx, method, args, reply, opts...))
}

func (l *lazyConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	cc, err := l.begin()
	if err != nil {
		return nil, err
	}
	cs, err := cc.NewStream(ctx, desc, method, opts...)
	if err != nil {
		l.end()
		return nil, l.fixErr(ctx, err)
	}
	ts := &trackedStream{ClientStream: cs, l: l, ctx: ctx, serverStreams: desc.ServerStreams}
	// A stream whose context ends is over even if nobody reads it again.
	ts.stop = context.AfterFunc(cs.Context(), ts.finish)
	return ts, nil
}

// drain stops new calls with err and returns a channel closed once the calls
// in flight have ended.
func (l *lazyConn) drain(err error) <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closeErr == nil {
		l.closeErr = err
	}
	if l.drained == nil {
		l.drained = make(chan struct{})
		if l.inflight == 0 {
			close(l.drained)
		}
	}
	return l.drained
}

// close stops new calls with err and closes the gRPC connection, which ends
// the calls in flight.
func (l *lazyConn) close(err error) {
	l.mu.Lock()
	if l.closeErr == nil {
		l.closeErr = err
	}
	cc := l.cc
	l.cc = nil
	if l.idleT != nil {
		l.idleT.Stop()
	}
	l.mu.Unlock()
	if cc != nil {
		cc.Close()
	}
}

// trackedStream counts as in flight until it has ended.
type trackedStream struct {
	grpc.ClientStream
	l             *lazyConn
	ctx           context.Context
	serverStreams bool
	once          sync.Once
	stop          func() bool
}

func (s *trackedStream) finish() { s.once.Do(s.l.end) }

func (s *trackedStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if err != nil || !s.serverStreams {
		s.stop()
		s.finish()
	}
	return s.l.fixErr(s.ctx, err)
}

func (s *trackedStream) SendMsg(m any) error {
	return s.l.fixErr(s.ctx, s.ClientStream.SendMsg(m))
}
