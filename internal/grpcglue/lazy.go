package grpcglue

import (
	"context"
	"errors"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrPeerGone is what calls get once their session has ended.
var ErrPeerGone = status.Error(codes.Unavailable, "brpc: peer disconnected")

// Channel is the connection a LazyConn makes its calls on: a
// *grpc.ClientConn, or a client's Route through a SharedConn.
type Channel interface {
	grpc.ClientConnInterface
	Close() error
}

// LazyConn is a grpc.ClientConnInterface whose Channel is created on first
// use, so an idle peer costs nothing for it. It also tracks calls in
// flight so that a graceful stop can wait for them, and it reports calls cut
// off by the end of their session as codes.Unavailable.
//
// With a positive idle time, a Channel that has carried no call for that
// long is closed (its stream on the session with it), so a peer called
// once in a while costs nothing between calls; the next call builds a new
// one.
type LazyConn struct {
	build func() (Channel, error)
	idle  time.Duration // 0: keep the connection until close

	mu       sync.Mutex
	cc       Channel
	closeErr error // set once closed: new calls fail with it
	inflight int
	drained  chan struct{} // made by drain; closed when no call is in flight
	idleT    *time.Timer   // releases cc once idle; made on first use
	lastEnd  time.Time     // when inflight last dropped to 0
}

// NewLazyConn returns a LazyConn that creates its gRPC connection with
// build; idle is as described on LazyConn.
func NewLazyConn(build func() (Channel, error), idle time.Duration) *LazyConn {
	return &LazyConn{build: build, idle: idle}
}

// begin registers a call and returns the connection to make it on.
func (l *LazyConn) begin() (Channel, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closeErr != nil {
		return nil, l.closeErr
	}
	if l.cc == nil {
		cc, err := l.build()
		if err != nil {
			if _, ok := status.FromError(err); ok {
				return nil, err
			}
			return nil, status.Errorf(codes.Internal, "brpc: creating the gRPC connection: %v", err)
		}
		l.cc = cc
	}
	l.inflight++
	return l.cc, nil
}

func (l *LazyConn) end() {
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
func (l *LazyConn) releaseIdle() {
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
// its session ended. A call that failed with Unavailable once the LazyConn
// was closed gets the close's error: why the session ended (replaced, the
// server stopping) rather than which read of the connection failed.
func (l *LazyConn) fixErr(ctx context.Context, err error) error {
	if err == nil || errors.Is(ctx.Err(), context.Canceled) {
		return err
	}
	code := status.Code(err)
	if code != codes.Canceled && code != codes.Unavailable {
		return err
	}
	l.mu.Lock()
	cerr := l.closeErr
	l.mu.Unlock()
	switch {
	case cerr != nil:
		return cerr
	case code == codes.Canceled:
		// Canceled although the caller did not cancel (its deadline may
		// have passed since, but it was not what ended the call).
		return ErrPeerGone
	}
	return err
}

// Invoke makes a unary call. It implements grpc.ClientConnInterface.
func (l *LazyConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	cc, err := l.begin()
	if err != nil {
		return err
	}
	defer l.end()
	return l.fixErr(ctx, cc.Invoke(ctx, method, args, reply, opts...))
}

// NewStream begins a streaming call. It implements
// grpc.ClientConnInterface.
func (l *LazyConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
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

// Drain stops new calls with err and returns a channel closed once the calls
// in flight have ended.
func (l *LazyConn) Drain(err error) <-chan struct{} {
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

// Close stops new calls with err and closes the gRPC connection, which ends
// the calls in flight.
func (l *LazyConn) Close(err error) {
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
	l             *LazyConn
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

// ClosedLazyConn is a LazyConn that refuses every call with ErrPeerGone,
// for a session that never carried calls.
var ClosedLazyConn = func() *LazyConn {
	l := NewLazyConn(nil, 0)
	l.Close(ErrPeerGone)
	return l
}()
