package session

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
)

// Stream and connection receive windows. The stream window must never cap
// grpc-go's own BDP-sized HTTP/2 window, so it is allowed to grow to 16 MiB;
// windows are credit, not allocations, so an idle session costs nothing for them.
//
// They start small and quic-go doubles them as the application reads fast
// enough. Unread data costs more than its size: quic-go keeps every received
// STREAM frame of 128 bytes or more in a buffer of a whole packet (1452
// bytes), so a peer that sends 128-byte frames makes each byte of window
// cost about 11 bytes of heap, 13 with quic-go's bookkeeping. Until a server's
// session is admitted the connection window does not grow at all
// (AllowConnectionWindowIncrease), so what an unadmitted peer can make the
// server hold in unread data is about 13 x InitialConnectionReceiveWindow,
// whatever it sends; see docs/security.md for the measured figure.
const (
	initialStreamReceiveWindow     = 12 << 10
	initialConnectionReceiveWindow = 12 << 10
	maxStreamReceiveWindow         = 16 << 20
	maxConnectionReceiveWindow     = 32 << 20
)

// DefaultRetryThreshold is how many QUIC handshakes may be in progress on a
// listener before it validates the address of every new client with a
// Retry round trip: beyond it, an Initial packet, spoofed or replayed, costs
// the server one Retry packet and no TLS handshake. An ordinary client pays
// one more round trip while the listener is that busy.
const DefaultRetryThreshold = 256

// ListenerReceiveBuffer is the UDP receive buffer a QUIC listener asks
// for. Every client's packets arrive on this one socket: when a server calls
// thousands of clients at once, their answers arrive together, and packets
// that do not fit are dropped and must be sent again after a probe timeout.
// quic-go asks for 7 MiB on every socket; a listener asks for more. The
// kernel grants at most net.core.rmem_max unless the process may exceed it
// (CAP_NET_ADMIN); the memory is used only while packets wait.
const ListenerReceiveBuffer = 32 << 20

// QUICConfig holds what brpc tunes on quic-go for either side.
type QUICConfig struct {
	Settings
	// VerifyAddresses makes a listener validate every client's address with
	// a Retry round trip first, so that Admit sees no spoofed addresses.
	VerifyAddresses bool
	// MaxPendingHandshakes, on a listener, caps the QUIC (TLS) handshakes in
	// progress at once, counted from the first Initial packet quic-go
	// accepts until Accept returns the connection or it dies; attempts
	// beyond it are refused with CONNECTION_REFUSED before any TLS work.
	// 0: no cap.
	MaxPendingHandshakes int
	// MaxHandshaking, on a listener, is how many TLS handshakes run at
	// once; the connections beyond wait for one to end (takeSlot). 0: no
	// limit.
	MaxHandshaking int
	// RetryThreshold, on a listener, is how many handshakes in progress
	// switch on address validation (Retry) for new clients; 0 means
	// DefaultRetryThreshold, or half of MaxPendingHandshakes or of
	// MaxHandshaking when that is lower, so that validation always starts
	// before a cap refuses or holds anyone.
	RetryThreshold int
}

// Config returns the quic-go configuration for c on the dialing side.
// HandshakeTimeout is quic-go's handshake idle timeout: a TLS handshake is
// abandoned when the peer sends nothing for that long, or when it is not
// done after twice that. KeepAlive is how long the connection may be quiet
// before it sends a PING, at most half the idle timeout both sides agreed
// on (quic-go's rule).
func (c QUICConfig) Config() *quic.Config {
	return &quic.Config{
		KeepAlivePeriod:                c.KeepAlive,
		MaxIdleTimeout:                 c.IdleTimeout,
		HandshakeIdleTimeout:           c.HandshakeTimeout,
		MaxIncomingStreams:             c.MaxIncomingStreams,
		MaxIncomingUniStreams:          -1, // brpc uses bidirectional streams only
		InitialStreamReceiveWindow:     initialStreamReceiveWindow,
		InitialConnectionReceiveWindow: initialConnectionReceiveWindow,
		MaxStreamReceiveWindow:         maxStreamReceiveWindow,
		MaxConnectionReceiveWindow:     maxConnectionReceiveWindow,
	}
}

// ListenConfig returns the quic-go configuration for c on a listener:
// Config's without keepalive PINGs, so that only the dialing side probes a
// quiet connection. The client's PINGs keep the path's UDP bindings open
// (a NAT refreshes a binding with what leaves the client; RFC 4787 does not
// require it to do so with what arrives), and the listener's ACKs answer
// them, so each side hears the other every KeepAlive while the path works,
// and each declares the other dead once it has heard nothing for the idle
// timeout, whether it pinged or not: quic-go detects a dead peer by the
// idle timeout alone. Probing from both ends, as both timers count from the
// last packet received, cost an idle session two PINGs and two ACKs every
// KeepAlive instead of one of each, and bought no earlier detection. A
// listener's KeepAlive is therefore unused; the client probes at its own,
// at most half the idle timeout both sides agreed on.
func (c QUICConfig) ListenConfig() *quic.Config {
	qc := c.Config()
	qc.KeepAlivePeriod = 0
	return qc
}

// retryThreshold is the number of handshakes in progress from which a
// listener validates addresses.
func (c QUICConfig) retryThreshold() int64 {
	if c.RetryThreshold > 0 {
		return int64(c.RetryThreshold)
	}
	t := DefaultRetryThreshold
	if c.MaxPendingHandshakes > 0 {
		t = min(t, max(c.MaxPendingHandshakes/2, 1))
	}
	if c.MaxHandshaking > 0 {
		t = min(t, max(c.MaxHandshaking/2, 1))
	}
	return int64(t)
}

// quicSession is a Session over one QUIC connection: streams are native.
type quicSession struct {
	conn  *quic.Conn
	end   endState
	guard *streamGuard // on a listener's sessions until admitted; nil otherwise
}

// NewQUIC wraps an established QUIC connection.
func NewQUIC(conn *quic.Conn) Session { return &quicSession{conn: conn} }

// DialQUIC opens a QUIC connection to addr and returns it as a Session.
func DialQUIC(ctx context.Context, addr string, tlsConf *tls.Config, conf QUICConfig) (Session, error) {
	conn, err := quic.DialAddr(ctx, addr, tlsConf, conf.Config())
	if err != nil {
		return nil, err
	}
	return NewQUIC(conn), nil
}

func (s *quicSession) OpenStream(ctx context.Context) (net.Conn, error) {
	st, err := s.conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, err
	}
	return newQUICStream(st, s.conn), nil
}

func (s *quicSession) AcceptStream(ctx context.Context) (net.Conn, error) {
	if s.guard != nil {
		st, err := s.guard.accept(ctx)
		if st != nil || err != nil {
			return st, err
		}
	}
	st, err := s.conn.AcceptStream(ctx)
	if err != nil {
		return nil, err
	}
	return newQUICStream(st, s.conn), nil
}

func (s *quicSession) Close(code CloseCode, reason string) error {
	return s.conn.CloseWithError(quic.ApplicationErrorCode(code), reason)
}

func (s *quicSession) Ending() (Ending, bool) { return s.end.ending(s.conn.Context()) }

func (s *quicSession) Announce(code CloseCode, reason string) {
	s.end.decide(s.conn.Context(), Ending{Kind: EndClosed, Code: code, Reason: reason})
}

func (s *quicSession) PeerAnnounced(code CloseCode, reason string) error {
	s.end.decide(s.conn.Context(), Ending{Kind: EndClosed, ByPeer: true, Code: code, Reason: reason})
	return s.conn.CloseWithError(quic.ApplicationErrorCode(CodeNormal), "closing as the peer announced")
}

func (s *quicSession) Context() context.Context { return s.conn.Context() }
func (s *quicSession) Closed() <-chan struct{}  { return s.conn.Context().Done() }
func (s *quicSession) LocalAddr() net.Addr      { return s.conn.LocalAddr() }
func (s *quicSession) RemoteAddr() net.Addr     { return s.conn.RemoteAddr() }
func (s *quicSession) TLS() tls.ConnectionState { return s.conn.ConnectionState().TLS }
func (s *quicSession) Transport() string        { return TransportQUIC }
func (s *quicSession) String() string           { return fmt.Sprintf("quic %v", s.conn.RemoteAddr()) }

// quicStream adapts a *quic.Stream to net.Conn.
//
// quic-go's Stream.Close only closes the send side and must not run
// concurrently with Write. grpc-go closes a transport's conn from one
// goroutine while another may be blocked writing, and it waits for its reader
// to return, so Close here also cancels the receive side and unblocks a
// pending Write before sending FIN.
type quicStream struct {
	st   *quic.Stream
	conn *quic.Conn

	wmu       sync.Mutex // serialises Write and the final Close of the send side
	closeOnce sync.Once
	closed    chan struct{}
	peek      [1]byte // WaitReadable's, kept here so that waiting allocates nothing
}

func newQUICStream(st *quic.Stream, conn *quic.Conn) *quicStream {
	return &quicStream{st: st, conn: conn, closed: make(chan struct{})}
}

func (s *quicStream) Read(b []byte) (int, error) { return s.st.Read(b) }

// WaitReadable blocks until the stream holds data to read, or until a Read
// would fail at once (the stream ended, was reset or closed, or its read
// deadline passed), and then returns Read's error. It consumes nothing, so
// a reader need not hold a buffer while it waits: quic-go's Peek of one byte
// waits for it, and the next Read returns at least that byte without
// blocking.
//
// After a local Close it reports net.ErrClosed, whatever quic-go's wait
// ended with, so that a waiter never takes its own Close for the peer's end
// of the stream.
func (s *quicStream) WaitReadable() error {
	_, err := s.st.Peek(s.peek[:])
	if err != nil {
		select {
		case <-s.closed:
			return net.ErrClosed
		default:
		}
	}
	return err
}

func (s *quicStream) Write(b []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	select {
	case <-s.closed:
		return 0, net.ErrClosed
	default:
	}
	n, err := s.st.Write(b)
	if err != nil {
		select {
		case <-s.closed:
			// Close expired the write: report the close, not a timeout.
			err = net.ErrClosed
		default:
		}
	}
	return n, err
}

func (s *quicStream) Close() error {
	s.closeOnce.Do(func() {
		close(s.closed)
		s.st.CancelRead(0)
		// A Write blocked on flow control would hold wmu forever: expire it.
		_ = s.st.SetWriteDeadline(time.Unix(1, 0))
		s.wmu.Lock()
		_ = s.st.Close()
		s.wmu.Unlock()
	})
	return nil
}

func (s *quicStream) LocalAddr() net.Addr                { return s.conn.LocalAddr() }
func (s *quicStream) RemoteAddr() net.Addr               { return s.conn.RemoteAddr() }
func (s *quicStream) SetDeadline(t time.Time) error      { return s.st.SetDeadline(t) }
func (s *quicStream) SetReadDeadline(t time.Time) error  { return s.st.SetReadDeadline(t) }
func (s *quicStream) SetWriteDeadline(t time.Time) error { return s.st.SetWriteDeadline(t) }

// QUICListener accepts QUIC sessions on one UDP socket.
type QUICListener struct {
	udp *net.UDPConn
	tr  *quic.Transport
	ln  *quic.Listener

	// handshaking counts the connections quic-go is handshaking (TLS) and
	// those it finished that Accept has not returned yet.
	handshaking atomic.Int64
	// slots holds a token per connection counted in handshaking while
	// QUICConfig.MaxHandshaking is set (nil otherwise); stopping is closed
	// when the listener stops accepting, which ends a wait for one.
	slots    chan struct{}
	stopping chan struct{}
	stopOnce sync.Once
	waiting  atomic.Int64 // new connections waiting for a slot (0 or 1: one intake goroutine)
	slotWait time.Duration

	mu    sync.Mutex
	conns map[*quic.Conn]struct{} // accepted and not yet ended
}

// ListenUDP binds the UDP socket a QUIC listener will use. Sessions are
// accepted only after Start, once the server's configuration is known.
func ListenUDP(addr string) (*QUICListener, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	udp, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, err
	}
	growReceiveBuffer(udp, ListenerReceiveBuffer)
	return &QUICListener{udp: udp, tr: &quic.Transport{Conn: udp}, conns: make(map[*quic.Conn]struct{}), stopping: make(chan struct{}), slotWait: defaultSlotWait}, nil
}

// Addr is the bound UDP address.
func (l *QUICListener) Addr() net.Addr { return l.udp.LocalAddr() }

// Start begins accepting QUIC connections with tlsConf and conf.
func (l *QUICListener) Start(tlsConf *tls.Config, conf QUICConfig) error {
	qc := conf.ListenConfig()
	qc.AllowConnectionWindowIncrease = allowWindowIncrease
	if conf.MaxHandshaking > 0 {
		l.slots = make(chan struct{}, conf.MaxHandshaking)
	}
	l.tr.ConnContext = l.connContext(int64(conf.MaxPendingHandshakes))
	if conf.Admit != nil {
		perConn := qc.Clone()
		qc.GetConfigForClient = func(info *quic.ClientInfo) (*quic.Config, error) {
			if err := conf.Admit(info.RemoteAddr); err != nil {
				return nil, err
			}
			return perConn, nil
		}
	}
	if conf.VerifyAddresses {
		l.tr.VerifySourceAddress = func(net.Addr) bool { return true }
	} else {
		threshold := conf.retryThreshold()
		l.tr.VerifySourceAddress = func(net.Addr) bool { return l.handshaking.Load() >= threshold }
	}
	ln, err := l.tr.Listen(tlsConf, qc)
	if err != nil {
		return err
	}
	l.ln = ln
	return nil
}

// Accept returns the next session whose QUIC handshake completed.
func (l *QUICListener) Accept(ctx context.Context) (Session, error) {
	conn, err := l.ln.Accept(ctx)
	if err != nil {
		return nil, err
	}
	handshakeOf(conn).done()
	l.mu.Lock()
	l.conns[conn] = struct{}{}
	l.mu.Unlock()
	context.AfterFunc(conn.Context(), func() {
		l.mu.Lock()
		delete(l.conns, conn)
		l.mu.Unlock()
	})
	return &quicSession{conn: conn, guard: newStreamGuard(conn)}, nil
}

// StopAccepting closes the listening side only; established sessions go on.
func (l *QUICListener) StopAccepting() error {
	l.stopOnce.Do(func() { close(l.stopping) })
	if l.ln == nil {
		return nil
	}
	return l.ln.Close()
}

// Close stops accepting, ends every session on the socket, telling each
// peer with CodeShutdown, and closes the socket.
func (l *QUICListener) Close() error {
	_ = l.StopAccepting()
	l.mu.Lock()
	conns := make([]*quic.Conn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	for _, c := range conns {
		_ = c.CloseWithError(quic.ApplicationErrorCode(CodeShutdown), "listener closed")
	}
	err := l.tr.Close()
	if cerr := l.udp.Close(); err == nil && !errors.Is(cerr, net.ErrClosed) {
		err = cerr
	}
	return err
}
