package session

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/brpc-go/brpc/internal/muxtls"
)

// The TCP transport: TLS 1.3 over one TCP connection, streams multiplexed
// with hashicorp/yamux. yamux rather than smux (protocol v2) was chosen by
// measurement on this machine kind: the same round-trip latency for 1 KiB
// ping-pong over TLS (p50 38 µs for both), but an idle session costs 3
// goroutines and about 14 KiB with yamux against 4 goroutines and about
// 155 KiB with smux, and smux's send loop may read a frame's bytes after an
// aborted Write has returned.
//
// Liveness is end to end, so that it also holds through proxies that
// terminate TCP: each side pings every keepalive interval, and a ping not
// answered within the rest of the idle timeout closes the session. A peer
// that vanished is therefore detected within the idle timeout.

// TCPConfig holds what brpc tunes on the TCP transport for either side.
type TCPConfig struct {
	Settings
	// MaxPendingHandshakes, on a listener, caps the TLS handshakes in
	// progress at once; connections beyond it are closed at once.
	MaxPendingHandshakes int
	// MaxControlBytes, on a listener, caps what the peer may send on the
	// control stream before its session is admitted: the hello, with its
	// length prefix, and at least yamux's initial stream window (256 KiB).
	// More fails the session with CodeProtocol.
	MaxControlBytes int
}

// maxStreamWindow is the largest receive window of one stream: enough for
// grpc-go's own flow control on loopback and LAN bandwidth-delay products,
// and a bound on what a peer can make a session buffer per stream.
const maxStreamWindow = 4 << 20

// acceptBacklog is how many streams the peer opened may wait to be
// accepted; beyond it yamux resets new ones. brpc accepts every stream at
// once (one per gRPC connection, plus the control stream), so a short
// queue is plenty, and yamux allocates it for every session.
const acceptBacklog = 32

// yamux returns the yamux configuration of c. yamux only reads it, so a
// listener builds it once for all its sessions; its Logger is set, as yamux
// would otherwise build one per session.
func (c TCPConfig) yamux() *yamux.Config {
	conf := yamux.DefaultConfig()
	conf.MaxStreamWindowSize = maxStreamWindow
	conf.LogOutput = nil
	conf.Logger = log.New(io.Discard, "", 0)
	conf.AcceptBacklog = acceptBacklog
	// yamux's own keepalive runs a goroutine per session for its whole
	// life; tcpSession pings from a timer instead (keepalive below), so
	// yamux's KeepAliveInterval is left at its default, unused.
	conf.EnableKeepAlive = false
	if c.IdleTimeout > 0 {
		// How long a ping may wait for its answer, and a frame for the send
		// loop: together with the interval, at most the idle timeout.
		conf.ConnectionWriteTimeout = c.IdleTimeout - c.keepaliveInterval()
	}
	return conf
}

// keepaliveInterval is how often a session pings its peer: the configured
// interval, at most half the idle timeout.
func (c TCPConfig) keepaliveInterval() time.Duration {
	return min(max(c.KeepAlive, time.Millisecond), c.IdleTimeout/2)
}

// tcpSession is a Session over yamux on TLS on TCP.
type tcpSession struct {
	mux   *yamux.Session
	tls   *tls.Conn
	limit int64 // streams the peer may have open at once
	open  atomic.Int64

	ctx    context.Context
	cancel context.CancelCauseFunc // only through finish
	end    endState

	// What runs once the session's context is done (see finish): over is
	// set then; onEnded is the listener's, set through whenEnded.
	hookMu  sync.Mutex
	over    bool
	onEnded func()

	opening chan struct{} // holds a token while a yamux OpenStream runs

	pingEvery time.Duration // 0: no keepalive
	pingMu    sync.Mutex
	pingT     *time.Timer // nil once the session ended

	insp *frameInspector // a listener's session: what the peer may send; nil when dialed

	// ServeStreams' state: taken counts the streams the acceptor took from
	// yamux, against the inspector's count of those the peer opened.
	serveMu    sync.Mutex
	serveFn    func(net.Conn)
	serveDone  func() // nil once called
	taken      int64
	accepting  bool // an acceptor goroutine runs
	serveEnded bool // the session's context is done

	// The open streams, so that their pending reads end as the session
	// does (see unblockReads); nil once it has.
	streamsMu sync.Mutex
	streams   map[*tcpStream]struct{}
}

// shrinkStreams drops the receive buffers that the session's streams have
// read empty. yamux keeps a stream's buffer, sized by the largest burst it
// ever held, for the stream's life: a gRPC connection that carried a call
// and went quiet would keep it. Dropping it at every wait for data instead
// would make each frame that arrives after the reader caught up allocate a
// new one (a 64 KiB round trip took about 1.6x as long); from the
// keepalive timer, every interval, it costs nothing measurable.
func (s *tcpSession) shrinkStreams() {
	s.streamsMu.Lock()
	defer s.streamsMu.Unlock()
	for st := range s.streams {
		st.Stream.Shrink()
	}
}

func newTCPSession(tc *tls.Conn, mux *yamux.Session, watch *connWatch, conf TCPConfig) *tcpSession {
	ctx, cancel := context.WithCancelCause(context.Background())
	s := &tcpSession{mux: mux, tls: tc, limit: conf.MaxIncomingStreams, ctx: ctx, cancel: cancel, opening: make(chan struct{}, 1),
		streams: make(map[*tcpStream]struct{})}
	if conf.IdleTimeout > 0 {
		s.pingEvery = conf.keepaliveInterval()
		// Under pingMu: the timer may fire, and keepalive read pingT,
		// before the assignment would otherwise be seen.
		s.pingMu.Lock()
		s.pingT = time.AfterFunc(s.pingEvery, s.keepalive)
		s.pingMu.Unlock()
	}
	// Last: on a connection that is already closed, finish runs at once,
	// and afterEnd must find the keepalive timer to stop.
	watch.notify(func(err error) { s.finish(fmt.Errorf("session: tcp connection ended: %w", err)) })
	return s
}

// finish ends the session's context with cause, and the first time, runs
// afterEnd on a goroutine of its own (the caller may hold locks it takes).
// The context is ended only here: what follows its end is called from
// here rather than registered with context.AfterFunc, which would cost
// every session an allocation per function and a map of them.
func (s *tcpSession) finish(cause error) {
	s.cancel(cause)
	s.hookMu.Lock()
	first := !s.over
	s.over = true
	s.hookMu.Unlock()
	if first {
		go s.afterEnd()
	}
}

// afterEnd runs once the session's context is done: the streams' pending
// reads end, the keepalive stops (a ping on a closed session fails at once
// and is not rescheduled either), the listener forgets the session, and
// ServeStreams' done function runs.
func (s *tcpSession) afterEnd() {
	s.unblockReads()
	s.stopKeepalive()
	s.hookMu.Lock()
	fn := s.onEnded
	s.onEnded = nil
	s.hookMu.Unlock()
	if fn != nil {
		fn()
	}
	s.serveOver()
}

// whenEnded has fn run once the session's context is done: at once, on a
// goroutine of its own, if it is already. A session keeps one such
// function, its listener's.
func (s *tcpSession) whenEnded(fn func()) {
	s.hookMu.Lock()
	if !s.over {
		s.onEnded = fn
		s.hookMu.Unlock()
		return
	}
	s.hookMu.Unlock()
	go fn()
}

// keepalive pings the peer and declares the session dead, as yamux's own
// keepalive would (with yamux.ErrKeepAliveTimeout), when no answer comes
// within the rest of the idle timeout. It runs on a timer, so an idle
// session has no goroutine for it between pings.
func (s *tcpSession) keepalive() {
	s.shrinkStreams()
	_, err := s.mux.Ping()
	if err != nil {
		if !errors.Is(err, yamux.ErrSessionShutdown) && !s.mux.IsClosed() {
			s.ended(yamux.ErrKeepAliveTimeout)
		}
		return
	}
	s.pingMu.Lock()
	if s.pingT != nil {
		s.pingT.Reset(s.pingEvery)
	}
	s.pingMu.Unlock()
}

func (s *tcpSession) stopKeepalive() {
	s.pingMu.Lock()
	if s.pingT != nil {
		s.pingT.Stop()
		s.pingT = nil
	}
	s.pingMu.Unlock()
}

// DialTCP opens a TLS connection to addr, multiplexes it and returns it as a
// Session.
func DialTCP(ctx context.Context, addr string, tlsConf *tls.Config, conf TCPConfig) (Session, error) {
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	tc, muxConn, _ := tlsLayers(raw, tlsConf, true, 0)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	mux, err := yamux.Client(muxConn, conf.yamux())
	if err != nil {
		tc.Close()
		return nil, err
	}
	return newTCPSession(tc, mux, muxConn, conf), nil
}

// tlsLayers stacks TLS on raw for either side: tc is the TLS connection to
// handshake, and muxConn what yamux runs on once it has. Writes go yamux,
// muxtls.Joiner (a data frame's header joined with its body), TLS,
// muxtls.Batcher (a frame's records in one system call), raw; both sides
// build the stack here, so that both get the joining and the batching. On
// top, a connWatch tells the session when yamux closes the connection.
//
// A listener's side also gets insp, a frameInspector right on TLS that
// follows what the peer sends (controlLimit: see TCPConfig.MaxControlBytes);
// a dialed side gets nil. It sits under the connWatch, so that yamux, which
// stops reading at a violation's error and closes the connection, still
// closes through the watcher.
func tlsLayers(raw net.Conn, tlsConf *tls.Config, client bool, controlLimit int) (tc *tls.Conn, muxConn *connWatch, insp *frameInspector) {
	rb := muxtls.NewBatcher(raw)
	if client {
		tc = tls.Client(rb, tlsConf)
		return tc, &connWatch{ReadWriteCloser: muxtls.NewJoiner(tc, rb)}, nil
	}
	tc = tls.Server(rb, tlsConf)
	insp = newFrameInspector(tc, controlLimit)
	return tc, &connWatch{ReadWriteCloser: muxtls.NewJoiner(insp, rb)}, insp
}

// errYamuxEnded is the cause of a session that yamux ended without an I/O
// error: a frame that broke its protocol, or a stream the peer never
// acknowledged.
var errYamuxEnded = errors.New("yamux ended the session")

// connWatch is what yamux reads and writes. yamux closes it however the
// session ends (a local Close, a read or write error, a protocol error), so
// its Close ends the session's Context then, with the first I/O error as
// the cause: the Context ends with the connection even while nobody
// accepts streams.
type connWatch struct {
	io.ReadWriteCloser

	mu      sync.Mutex
	err     error // the first I/O error
	closed  bool
	onClose func(cause error)
}

func (w *connWatch) Read(p []byte) (int, error) {
	n, err := w.ReadWriteCloser.Read(p)
	if err != nil {
		w.failed(err)
	}
	return n, err
}

func (w *connWatch) Write(p []byte) (int, error) {
	n, err := w.ReadWriteCloser.Write(p)
	if err != nil {
		w.failed(err)
	}
	return n, err
}

func (w *connWatch) failed(err error) {
	w.mu.Lock()
	if w.err == nil && !w.closed {
		w.err = err
	}
	w.mu.Unlock()
}

func (w *connWatch) Close() error {
	err := w.ReadWriteCloser.Close()
	w.mu.Lock()
	w.closed = true
	fn, cause := w.onClose, w.cause()
	w.onClose = nil
	w.mu.Unlock()
	if fn != nil {
		fn(cause)
	}
	return err
}

func (w *connWatch) cause() error {
	if w.err != nil {
		return w.err
	}
	return errYamuxEnded
}

// notify calls fn once the connection is closed: at once if it is already.
func (w *connWatch) notify(fn func(cause error)) {
	w.mu.Lock()
	if !w.closed {
		w.onClose = fn
		w.mu.Unlock()
		return
	}
	cause := w.cause()
	w.mu.Unlock()
	fn(cause)
}

// OpenStream opens a stream, giving up when ctx ends. yamux's OpenStream
// takes no context and can block: while AcceptBacklog streams wait for the
// peer's acknowledgement, and while its first window update waits behind
// the send queue. So it runs on a goroutine of its own, one at a time per
// session; a caller whose ctx ends returns at once, and the goroutine
// outlives it only until yamux returns (a stream is acknowledged, or the
// session ends: yamux's stream open timeout ends a session whose peer
// acknowledges nothing) and then closes the stream nobody took.
func (s *tcpSession) OpenStream(ctx context.Context) (net.Conn, error) {
	if err := s.ctx.Err(); err != nil {
		return nil, context.Cause(s.ctx)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	select {
	case s.opening <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.ctx.Done():
		return nil, context.Cause(s.ctx)
	}
	type result struct {
		st  *yamux.Stream
		err error
	}
	got := make(chan result)
	gaveUp := make(chan struct{})
	go func() {
		st, err := s.mux.OpenStream()
		<-s.opening
		select {
		case got <- result{st, err}:
		case <-gaveUp:
			if st != nil {
				st.Close()
			}
		}
	}()
	var r result
	select {
	case r = <-got:
	case <-ctx.Done():
		close(gaveUp)
		return nil, ctx.Err()
	}
	if r.err != nil {
		if s.mux.IsClosed() {
			s.ended(r.err)
		}
		return nil, r.err
	}
	return s.track(&tcpStream{Stream: r.st, sess: s}), nil
}

// AcceptStream returns the next stream the peer opened. Streams beyond the
// limit of concurrently open ones are reset at once.
func (s *tcpSession) AcceptStream(ctx context.Context) (net.Conn, error) {
	for {
		c, err := s.acceptOne(ctx)
		if c != nil || err != nil {
			return c, err
		}
	}
}

// acceptOne takes the next stream the peer opened from yamux. It returns
// nil and no error for a stream beyond the limit, which it resets.
func (s *tcpSession) acceptOne(ctx context.Context) (net.Conn, error) {
	st, err := s.mux.AcceptStreamWithContext(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		s.ended(err)
		return nil, err
	}
	if s.limit > 0 && s.open.Load() >= s.limit {
		st.Close()
		return nil, nil
	}
	s.open.Add(1)
	return s.track(&tcpStream{Stream: st, sess: s, release: func() { s.open.Add(-1) }}), nil
}

// ServeStreams implements StreamServer on a listener's session, whose
// frameInspector sees the peer open each stream (its SYN) before yamux
// queues it: an acceptor goroutine runs from then until yamux has handed
// over as many streams as were opened, so a session between two streams
// has none. A dialed session has no inspector and reports false.
func (s *tcpSession) ServeStreams(handle func(net.Conn), done func()) bool {
	if s.insp == nil {
		return false
	}
	s.serveMu.Lock()
	s.serveFn, s.serveDone = handle, done
	s.serveMu.Unlock()
	kick := s.kickAcceptor
	s.insp.opened.Store(&kick)
	// A session that ended before done was set: afterEnd's serveOver may
	// have found none to call.
	if s.ctx.Err() != nil {
		go s.serveOver()
		return true
	}
	// Streams opened before the inspector could say so.
	s.kickAcceptor()
	return true
}

// kickAcceptor starts the acceptor if the peer opened streams that nobody
// takes yet. The inspector calls it from yamux's receive loop, after it
// counted the stream and before yamux queues it, so it must not block.
func (s *tcpSession) kickAcceptor() {
	s.serveMu.Lock()
	defer s.serveMu.Unlock()
	if s.serveFn == nil || s.accepting || s.serveEnded || s.insp.syns.Load() == s.taken {
		return
	}
	s.accepting = true
	go s.acceptStreams()
}

// acceptStreams takes from yamux the streams the peer opened and hands
// them to the ServeStreams handler, until it has taken as many as the
// inspector counted or the session ends.
func (s *tcpSession) acceptStreams() {
	for {
		c, err := s.acceptOne(s.ctx)
		s.serveMu.Lock()
		if err == nil {
			s.taken++
		}
		handle := s.serveFn
		s.serveMu.Unlock()
		if c != nil {
			handle(c)
		}
		s.serveMu.Lock()
		if err != nil || s.serveEnded || s.insp.syns.Load() == s.taken {
			s.accepting = false
			done := s.finishServingLocked()
			s.serveMu.Unlock()
			if done != nil {
				done()
			}
			return
		}
		s.serveMu.Unlock()
	}
}

// serveOver runs once the session's context is done (from afterEnd, or
// from ServeStreams on a session that had ended): the ServeStreams done
// function runs now, or when the acceptor returns.
func (s *tcpSession) serveOver() {
	s.serveMu.Lock()
	s.serveEnded = true
	done := s.finishServingLocked()
	s.serveMu.Unlock()
	if done != nil {
		done()
	}
}

// finishServingLocked returns the ServeStreams done function, once, when
// the session is over and no acceptor runs; serveMu is held.
func (s *tcpSession) finishServingLocked() func() {
	if !s.serveEnded || s.accepting || s.serveDone == nil {
		return nil
	}
	done := s.serveDone
	s.serveDone = nil
	return done
}

// ended records that the connection is over and closes what is left of it.
func (s *tcpSession) ended(err error) {
	s.finish(fmt.Errorf("session: tcp connection ended: %w", err))
	s.unblockReads()
	s.mux.Close()
}

// track registers a new stream; on a session that has ended, its reads
// end at once.
func (s *tcpSession) track(st *tcpStream) *tcpStream {
	s.streamsMu.Lock()
	defer s.streamsMu.Unlock()
	if s.streams == nil {
		_ = st.Stream.SetReadDeadline(time.Unix(1, 0))
	} else {
		s.streams[st] = struct{}{}
	}
	return st
}

func (s *tcpSession) untrack(st *tcpStream) {
	s.streamsMu.Lock()
	defer s.streamsMu.Unlock()
	delete(s.streams, st)
}

// unblockReads ends the pending reads of every open stream as the session
// ends. yamux's Session.Close wakes them by closing its shutdown channel
// but marks the streams closed only once its send and receive loops have
// stopped; meanwhile a stream's Read, woken and finding nothing to read,
// waits again on the closed channel, spinning on a CPU. With many sessions
// closing at once (Stop) the spinning readers took the CPUs for a minute. A
// deadline in the past makes such a Read return; data already received is
// still read first.
func (s *tcpSession) unblockReads() {
	s.streamsMu.Lock()
	defer s.streamsMu.Unlock()
	for st := range s.streams {
		_ = st.Stream.SetReadDeadline(time.Unix(1, 0))
	}
	s.streams = nil
}

func (s *tcpSession) Close(code CloseCode, reason string) error {
	s.finish(&localCloseError{code: code, reason: reason})
	s.unblockReads()
	return s.mux.Close()
}

// Ending reports how the session ended. TCP carries no close code: a peer
// that closed without announcing it is seen as the connection's clean end,
// a close with CodeNormal.
func (s *tcpSession) Ending() (Ending, bool) { return s.end.ending(s.ctx) }

func (s *tcpSession) Announce(code CloseCode, reason string) {
	s.end.decide(s.ctx, Ending{Kind: EndClosed, Code: code, Reason: reason})
}

func (s *tcpSession) PeerAnnounced(code CloseCode, reason string) error {
	s.end.decide(s.ctx, Ending{Kind: EndClosed, ByPeer: true, Code: code, Reason: reason})
	return s.Close(CodeNormal, "closing as the peer announced")
}

func (s *tcpSession) Context() context.Context { return s.ctx }
func (s *tcpSession) Closed() <-chan struct{}  { return s.mux.CloseChan() }
func (s *tcpSession) LocalAddr() net.Addr      { return s.tls.LocalAddr() }
func (s *tcpSession) RemoteAddr() net.Addr     { return s.tls.RemoteAddr() }
func (s *tcpSession) TLS() tls.ConnectionState { return s.tls.ConnectionState() }
func (s *tcpSession) Transport() string        { return TransportTCP }

// localCloseError is the cause of a session this side closed.
type localCloseError struct {
	code   CloseCode
	reason string
}

func (e *localCloseError) Error() string {
	return fmt.Sprintf("session closed locally (code %d): %s", e.code, e.reason)
}

// tcpStream is a yamux stream as a net.Conn: its errors, deadlines and
// addresses follow net.Conn's conventions, as the QUIC stream's do. yamux
// has errors of its own (ErrStreamClosed, ErrTimeout), checks a deadline
// only when a call has to wait, and names its addresses "yamux:local" and
// "yamux:remote".
type tcpStream struct {
	*yamux.Stream
	sess    *tcpSession
	once    sync.Once
	closed  atomic.Bool
	release func()

	readDeadline, writeDeadline atomic.Int64 // UnixNano; 0: none
}

func (s *tcpStream) Read(p []byte) (int, error) {
	if s.closed.Load() {
		// yamux's Close is a half-close: what arrived would still be read.
		return 0, net.ErrClosed
	}
	if passed(&s.readDeadline) {
		return 0, os.ErrDeadlineExceeded
	}
	n, err := s.Stream.Read(p)
	return n, s.netError(err)
}

// WaitReadable blocks until the stream holds data to read, or until a Read
// would fail at once (the stream ended, was reset or closed, or its read
// deadline passed), and then returns Read's error. It consumes nothing, so
// a reader need not hold a buffer while it waits: yamux's Read of no bytes
// waits for data like any Read and then returns without taking any. (It
// keeps yamux's own receive buffer: yamux's Shrink before each wait would
// drop it, but then every frame that arrives after the reader caught up
// allocates and grows a new one: a 64 KiB round trip took about 1.6x as
// long.)
func (s *tcpStream) WaitReadable() error {
	if s.closed.Load() {
		return net.ErrClosed
	}
	if passed(&s.readDeadline) {
		return os.ErrDeadlineExceeded
	}
	_, err := s.Stream.Read(nil)
	return s.netError(err)
}

func (s *tcpStream) Write(p []byte) (int, error) {
	if s.closed.Load() {
		return 0, net.ErrClosed
	}
	if passed(&s.writeDeadline) {
		return 0, os.ErrDeadlineExceeded
	}
	n, err := s.Stream.Write(p)
	return n, s.netError(err)
}

func passed(deadline *atomic.Int64) bool {
	d := deadline.Load()
	return d != 0 && time.Now().UnixNano() >= d
}

func store(deadline *atomic.Int64, t time.Time) {
	if t.IsZero() {
		deadline.Store(0)
	} else {
		deadline.Store(t.UnixNano())
	}
}

func (s *tcpStream) SetDeadline(t time.Time) error {
	store(&s.readDeadline, t)
	store(&s.writeDeadline, t)
	return s.Stream.SetDeadline(t)
}

func (s *tcpStream) SetReadDeadline(t time.Time) error {
	store(&s.readDeadline, t)
	return s.Stream.SetReadDeadline(t)
}

func (s *tcpStream) SetWriteDeadline(t time.Time) error {
	store(&s.writeDeadline, t)
	return s.Stream.SetWriteDeadline(t)
}

func (s *tcpStream) LocalAddr() net.Addr  { return s.sess.LocalAddr() }
func (s *tcpStream) RemoteAddr() net.Addr { return s.sess.RemoteAddr() }

// netError is what Read and Write report for yamux's err: net.ErrClosed
// once the stream was closed on this side (Close cut a pending call short),
// and os.ErrDeadlineExceeded, a timeout net.Error, for a passed deadline.
func (s *tcpStream) netError(err error) error {
	switch {
	case err == nil:
		return nil
	case s.closed.Load():
		return net.ErrClosed
	case errors.Is(err, yamux.ErrTimeout):
		return os.ErrDeadlineExceeded
	}
	return err
}

// Close ends the stream both ways. yamux's Close only half-closes (it sends
// FIN and keeps reading until the peer's FIN), but grpc-go waits for its
// reader when it closes a connection, so a pending Read is ended too.
func (s *tcpStream) Close() error {
	s.closed.Store(true)
	_ = s.Stream.SetReadDeadline(time.Unix(1, 0))
	err := s.Stream.Close()
	s.once.Do(func() {
		s.sess.untrack(s)
		if s.release != nil {
			s.release()
		}
	})
	return err
}

// TCPListener accepts TCP sessions: it runs each TLS handshake in its own
// goroutine, bounded by the handshake timeout, so a slow client holds up
// nobody else.
type TCPListener struct {
	ln net.Listener

	mu       sync.Mutex
	started  bool
	closed   bool
	sessions map[*tcpSession]struct{}
	pending  map[net.Conn]struct{} // in TLS handshake

	ready chan Session
	done  chan struct{}
	wg    sync.WaitGroup
}

// ListenTCP binds a TCP socket. Sessions are accepted only after Start.
func ListenTCP(addr string) (*TCPListener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &TCPListener{
		ln:       ln,
		sessions: make(map[*tcpSession]struct{}),
		pending:  make(map[net.Conn]struct{}),
		ready:    make(chan Session),
		done:     make(chan struct{}),
	}, nil
}

// Addr is the bound TCP address.
func (l *TCPListener) Addr() net.Addr { return l.ln.Addr() }

// Start begins accepting connections with tlsConf and conf.
func (l *TCPListener) Start(tlsConf *tls.Config, conf TCPConfig) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return net.ErrClosed
	}
	if l.started {
		return errors.New("session: listener already started")
	}
	l.started = true
	l.wg.Add(1)
	go l.acceptLoop(tlsConf, conf)
	return nil
}

func (l *TCPListener) acceptLoop(tlsConf *tls.Config, conf TCPConfig) {
	defer l.wg.Done()
	ymux := conf.yamux()
	for {
		raw, err := l.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		if conf.Admit != nil && conf.Admit(raw.RemoteAddr()) != nil {
			raw.Close()
			continue
		}
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			raw.Close()
			return
		}
		if conf.MaxPendingHandshakes > 0 && len(l.pending) >= conf.MaxPendingHandshakes {
			l.mu.Unlock()
			raw.Close()
			continue
		}
		l.pending[raw] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		go l.handshake(raw, tlsConf, conf, ymux)
	}
}

func (l *TCPListener) handshake(raw net.Conn, tlsConf *tls.Config, conf TCPConfig, ymux *yamux.Config) {
	defer l.wg.Done()
	s, err := l.establish(raw, tlsConf, conf, ymux)
	l.mu.Lock()
	delete(l.pending, raw)
	if err == nil && !l.closed {
		l.sessions[s] = struct{}{}
		s.whenEnded(func() {
			l.mu.Lock()
			delete(l.sessions, s)
			l.mu.Unlock()
		})
	} else if err == nil {
		err = net.ErrClosed
	}
	l.mu.Unlock()
	if err != nil {
		if s != nil {
			s.Close(CodeShutdown, "listener closed")
		}
		raw.Close()
		return
	}
	select {
	case l.ready <- s:
	case <-l.done:
		s.Close(CodeShutdown, "listener closed")
	}
}

func (l *TCPListener) establish(raw net.Conn, tlsConf *tls.Config, conf TCPConfig, ymux *yamux.Config) (*tcpSession, error) {
	timeout := conf.HandshakeTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	raw.SetDeadline(time.Now().Add(timeout))
	tc, muxConn, insp := tlsLayers(raw, tlsConf, false, conf.MaxControlBytes)
	if err := tc.Handshake(); err != nil {
		return nil, err
	}
	// Go's TLS server lets a client that offers no ALPN through; brpc
	// speaks only to clients that asked for its protocol.
	if len(tlsConf.NextProtos) > 0 && !slices.Contains(tlsConf.NextProtos, tc.ConnectionState().NegotiatedProtocol) {
		return nil, errors.New("session: the client did not negotiate the application protocol")
	}
	raw.SetDeadline(time.Time{})
	mux, err := yamux.Server(muxConn, ymux)
	if err != nil {
		return nil, err
	}
	s := newTCPSession(tc, mux, muxConn, conf)
	s.insp = insp
	insp.setFail(func(err error) { s.finish(err) })
	return s, nil
}

// Accept returns the next session whose TLS handshake completed.
func (l *TCPListener) Accept(ctx context.Context) (Session, error) {
	select {
	case s := <-l.ready:
		return s, nil
	case <-l.done:
		return nil, net.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// StopAccepting closes the listening socket; established sessions go on.
func (l *TCPListener) StopAccepting() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stopLocked()
}

func (l *TCPListener) stopLocked() error {
	if l.closed {
		return nil
	}
	l.closed = true
	close(l.done)
	for c := range l.pending {
		c.Close()
	}
	return l.ln.Close()
}

// Close stops accepting and ends every session accepted through l.
func (l *TCPListener) Close() error {
	l.mu.Lock()
	err := l.stopLocked()
	sessions := make([]*tcpSession, 0, len(l.sessions))
	for s := range l.sessions {
		sessions = append(sessions, s)
	}
	l.mu.Unlock()
	for _, s := range sessions {
		s.Close(CodeShutdown, "listener closed")
	}
	l.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}
