package session

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
)

// What a QUIC listener does for a connection before its session is
// admitted: count its TLS handshake, keep its connection window at the
// initial size, and treat any stream but the first (the control stream) as
// a protocol error.

// errTooManyHandshakes refuses a connection attempt beyond the cap on
// handshakes in progress.
var errTooManyHandshakes = errors.New("session: too many QUIC handshakes in progress")

// connState is what a listener keeps about one of its connections, in the
// connection's context.
type connState struct {
	l           *QUICListener
	handshaking atomic.Bool // still counted in l.handshaking
	admitted    atomic.Bool // its session was admitted: windows may grow
}

type connStateKey struct{}

// done stops counting the connection as handshaking; it may be called more
// than once.
func (st *connState) done() {
	if st != nil && st.handshaking.CompareAndSwap(true, false) {
		st.l.handshaking.Add(-1)
		if st.l.slots != nil {
			<-st.l.slots
		}
	}
}

// defaultSlotWait bounds how long a new connection waits for a handshake
// slot before it is refused (CONNECTION_REFUSED: the client backs off).
// Slots held by handshakes whose client went silent free only at the
// handshake timeout; a full second of no slot freeing means that is what
// holds them.
const defaultSlotWait = time.Second

// takeSlot waits for one of the listener's handshake slots, if it limits
// them, and reports whether it got one. While it waits, quic-go's intake of
// new connections waits with it (connContext runs on its one goroutine):
// the Initial packets behind are queued up to quic-go's limit and dropped
// beyond it, and their clients send them again. So the handshakes beyond
// the limit wait, in the order their packets came, instead of all sharing
// the CPU until the handshake timeout ends them together, which is what a
// reconnecting fleet larger than the server can take at once otherwise
// does: none finishes, and all the work is redone.
func (l *QUICListener) takeSlot() bool {
	if l.slots == nil {
		return true
	}
	select {
	case l.slots <- struct{}{}:
		return true
	default:
	}
	l.waiting.Add(1)
	defer l.waiting.Add(-1)
	t := time.NewTimer(l.slotWait)
	defer t.Stop()
	select {
	case l.slots <- struct{}{}:
		return true
	case <-t.C:
	case <-l.stopping:
	}
	return false
}

// handshakeOf returns the listener's state of conn, nil for a dialed one.
func handshakeOf(conn *quic.Conn) *connState {
	st, _ := conn.Context().Value(connStateKey{}).(*connState)
	return st
}

// connContext is the transport's ConnContext: quic-go calls it for every
// connection attempt it is about to handshake, before any TLS work, and
// ends the returned context when the attempt fails or the connection
// closes. max caps the attempts counted at once (0: no cap).
func (l *QUICListener) connContext(max int64) func(context.Context, *quic.ClientInfo) (context.Context, error) {
	return func(ctx context.Context, _ *quic.ClientInfo) (context.Context, error) {
		if !l.takeSlot() {
			return nil, errTooManyHandshakes
		}
		if n := l.handshaking.Add(1); max > 0 && n > max {
			l.handshaking.Add(-1)
			if l.slots != nil {
				<-l.slots
			}
			return nil, errTooManyHandshakes
		}
		st := &connState{l: l}
		st.handshaking.Store(true)
		context.AfterFunc(ctx, st.done)
		return context.WithValue(ctx, connStateKey{}, st), nil
	}
}

// allowWindowIncrease keeps a listener's connection at its initial
// connection window until its session is admitted. Reading the hello would
// otherwise let quic-go's auto-tuning grow the window, and the peer could
// then park that much more unread data, at about 13 times its size in
// heap. It only reads the connection's context, as quic-go requires of
// this callback.
func allowWindowIncrease(conn *quic.Conn, _ uint64) bool {
	st := handshakeOf(conn)
	return st == nil || st.admitted.Load()
}

// streamGuard accepts the streams of a listener's session until it is
// admitted: the first is the control stream, handed to the first
// AcceptStream; any other closes the session with CodeProtocol, so quic-go
// never holds data on streams nobody would read. It runs one goroutine,
// which ends at admission or with the connection.
type streamGuard struct {
	conn     *quic.Conn
	cancel   context.CancelFunc
	admitted atomic.Bool

	first chan *quic.Stream // the first stream, until an AcceptStream takes it
	done  chan struct{}     // closed when the guard stopped accepting
	ctrl  atomic.Pointer[quic.Stream]
	carry atomic.Pointer[quic.Stream] // accepted by the guard after admission
}

func newStreamGuard(conn *quic.Conn) *streamGuard {
	ctx, cancel := context.WithCancel(conn.Context())
	g := &streamGuard{
		conn:   conn,
		cancel: cancel,
		first:  make(chan *quic.Stream, 1),
		done:   make(chan struct{}),
	}
	go g.run(ctx)
	return g
}

func (g *streamGuard) run(ctx context.Context) {
	defer close(g.done)
	defer g.cancel()
	st, err := g.conn.AcceptStream(ctx)
	if err != nil {
		return
	}
	g.ctrl.Store(st)
	g.first <- st
	st, err = g.conn.AcceptStream(ctx)
	if err != nil {
		return
	}
	if g.admitted.Load() {
		// Accepted as admission happened: an ordinary stream.
		g.carry.Store(st)
		return
	}
	st.CancelRead(0)
	st.CancelWrite(0)
	_ = g.conn.CloseWithError(quic.ApplicationErrorCode(CodeProtocol), "a stream was opened before the welcome")
}

// accept returns the control stream to the first caller. After admission
// it returns what the guard accepted and nobody took yet; (nil, nil) then
// means the caller accepts from the connection itself.
func (g *streamGuard) accept(ctx context.Context) (net.Conn, error) {
	if !g.admitted.Load() {
		select {
		case st := <-g.first:
			return newQUICStream(st, g.conn), nil
		case <-g.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	select {
	case <-g.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case st := <-g.first:
		return newQUICStream(st, g.conn), nil
	default:
	}
	if st := g.carry.Swap(nil); st != nil {
		return newQUICStream(st, g.conn), nil
	}
	return nil, nil
}

// Admitted ends the pending phase of a listener's session: the peer may now
// open streams, the connection window may grow, and the control stream's
// receive side is cancelled. In protocol v1 the client sends nothing after
// its hello; once cancelled, quic-go drops what arrives on it instead of
// buffering it (in v0.65, (*ReceiveStream).handleStreamFrameImpl returns
// before queueing once cancelledLocally) and tells the peer to stop
// sending, so no goroutine needs to read it. What arrived before stays
// queued, at most the connection window the session was held to. Writing
// on it (notices) goes on as before.
func (s *quicSession) Admitted() {
	g := s.guard
	if g == nil || !g.admitted.CompareAndSwap(false, true) {
		return
	}
	if st := handshakeOf(s.conn); st != nil {
		st.admitted.Store(true)
	}
	if ctrl := g.ctrl.Load(); ctrl != nil {
		ctrl.CancelRead(0)
	}
	g.cancel()
}
