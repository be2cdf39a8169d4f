package server

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc/internal/grpcglue"
	"github.com/brpc-go/brpc/internal/handshake"
	"github.com/brpc-go/brpc/internal/handshake/handshakepb"
	"github.com/brpc-go/brpc/internal/session"
)

// Session is one client's session on the server.
type Session struct {
	srv  *Server
	sess session.Session

	// Set by the handshake, before the session is registered.
	info *grpcglue.SessionInfo
	stub any
	conn atomic.Pointer[grpcglue.LazyConn] // reverse calls; set by the handshake

	ctrlMu sync.Mutex
	ctrl   net.Conn

	helloMD  metadata.MD // what the hello carried, once read
	replaces bool        // its ID was taken when admitted: replace once welcomed
}

// ID is the client's ID.
func (ss *Session) ID() string { return ss.info.Peer.ID }

// Peer describes the client, with a copy of its metadata.
func (ss *Session) Peer() grpcglue.Peer { return ss.info.Snapshot() }

// Conn is the client's reverse connection: calls on it reach the client's
// own *grpc.Server. Calls fail with codes.Unavailable once the session has
// ended.
func (ss *Session) Conn() grpc.ClientConnInterface { return ss.lazy() }

// Stub is what Config.NewStub built on Conn for this session.
func (ss *Session) Stub() any { return ss.stub }

// lazy returns the session's reverse-call connection, which exists once the
// session was welcomed; a session that never was gets a closed one.
func (ss *Session) lazy() *grpcglue.LazyConn {
	if l := ss.conn.Load(); l != nil {
		return l
	}
	return grpcglue.ClosedLazyConn
}

// run handshakes; a welcomed session is then served by serve, on a new
// goroutine: the handshake may have grown this one's stack (TLS state,
// protobuf, the authenticator), and the goroutine that waits for the
// client's streams for the whole session should not keep that.
func (ss *Session) run() {
	s := ss.srv
	err := ss.handshake()
	s.pending.leave()
	if err != nil {
		p := grpcglue.Peer{Metadata: ss.helloMD, RemoteAddr: ss.sess.RemoteAddr(), Transport: ss.sess.Transport()}
		s.emit(ss, Event{Type: Rejected, Peer: p, Reason: status.Convert(err).Message(), Err: err})
		ss.forget()
		s.wg.Done()
		return
	}
	if s.conf.OnWelcome != nil {
		s.conf.OnWelcome(ss)
	}
	s.emit(ss, Event{Type: Connected, Peer: ss.info.Snapshot()})
	// A session that can hand over its streams as they come keeps no
	// goroutine waiting for them: a used client's session opens a stream
	// once per forward gRPC connection, and waits for the next for as long
	// as the client stays connected.
	if st, ok := ss.sess.(session.StreamServer); ok && st.ServeStreams(ss.push, ss.ended) {
		return // ended takes over this goroutine's count in s.wg
	}
	go ss.serve() // takes over this goroutine's count in s.wg
}

// push hands one of the client's streams to the gRPC server.
func (ss *Session) push(c net.Conn) {
	ss.srv.streams.Push(ss.sess.Context(), grpcglue.NewStreamConn(c, ss.info))
}

// ended reports the end of a welcomed session and forgets it.
func (ss *Session) ended() {
	s := ss.srv
	defer s.wg.Done()
	removed := s.peers.Remove(ss.info.Peer.ID, ss)
	if s.conf.OnGone != nil {
		s.conf.OnGone(ss, removed)
	}
	kind, reason, err := ss.disconnectReason()
	s.emit(ss, Event{Type: Disconnected, Peer: ss.info.Snapshot(), Kind: kind, Reason: reason, Err: err})
	ss.forget()
}

// serve feeds the client's streams to the gRPC server until the session
// ends, then reports its end, for sessions that are no StreamServer.
func (ss *Session) serve() {
	defer ss.ended()
	ctx := ss.sess.Context()
	for {
		c, err := ss.sess.AcceptStream(ctx)
		if err != nil {
			break
		}
		ss.push(c)
	}
	// Accepting fails as the connection closes; let the transport finish
	// recording why (the session's Ending) before the disconnect is
	// reported.
	t := time.NewTimer(time.Second)
	select {
	case <-ss.sess.Context().Done():
	case <-t.C:
	}
	t.Stop()
}

// forget ends the session's reverse calls and drops it from the server.
func (ss *Session) forget() {
	s := ss.srv
	ss.lazy().Close(grpcglue.ErrPeerGone)
	s.mu.Lock()
	delete(s.sessions, ss)
	s.mu.Unlock()
}

// handshake reads the client's hello, authenticates it and welcomes or
// rejects it. It returns nil once the session may carry calls, or the
// gRPC status the client was refused with.
func (ss *Session) handshake() error {
	s := ss.srv
	conf := handshake.ServerConfig{
		Timeout:              s.conf.HandshakeTimeout,
		MaxHelloSize:         s.conf.MaxHelloSize,
		MaxMetadataValues:    s.conf.MaxMetadataValues,
		MaxMetadataValueSize: s.conf.MaxMetadataValueSize,
	}
	ctrl, err := handshake.ServeHello(ss.sess, conf, ss.admit)
	if err != nil {
		return err
	}
	if ss.replaces {
		ss.replace()
	}
	ss.ctrlMu.Lock()
	ss.ctrl = ctrl
	ss.ctrlMu.Unlock()
	return nil
}

// admit authenticates a client whose hello was read and registers it under
// a new ID; an older session under the same ID is replaced only once the
// welcome is written (handshake).
func (ss *Session) admit(ctx context.Context, md metadata.MD) (string, func(), error) {
	s := ss.srv
	// One map serves the Authenticator, a rejection's event and the peer:
	// a session keeps its metadata once.
	ss.helloMD = md
	id, err := s.authenticate(ctx, AuthInfo{Metadata: md, TLS: ss.sess.TLS(), RemoteAddr: ss.sess.RemoteAddr()})
	if err != nil {
		return "", nil, err
	}

	ss.info = grpcglue.NewSessionInfo(grpcglue.Peer{
		ID:          id,
		Metadata:    md,
		Transport:   ss.sess.Transport(),
		ConnectedAt: time.Now(),
	}, ss.sess, ss)
	conn := grpcglue.NewLazyConn(ss.dialGRPC, s.conf.ReverseIdle)
	if s.conf.NewStub != nil {
		ss.stub = s.conf.NewStub(conn)
	}
	ss.conn.Store(conn)

	s.mu.Lock()
	if s.state != stateServing {
		s.mu.Unlock()
		return "", nil, errShuttingDown
	}
	_, taken := s.peers.Get(id)
	if max := s.conf.MaxClients; max > 0 && !taken && s.peers.Len() >= max {
		s.mu.Unlock()
		return "", nil, status.Errorf(codes.ResourceExhausted, "brpc: the server is full (%d clients)", max)
	}
	if !taken {
		// A new ID holds its place (against MaxClients) while the welcome
		// is written; it evicts nobody.
		s.peers.Add(id, ss)
	}
	s.mu.Unlock()
	// A taken ID is replaced only once the welcome is written (replace):
	// a session whose welcome fails evicts nobody.
	ss.replaces = taken
	return id, func() { s.peers.Remove(id, ss) }, nil
}

// replace registers a welcomed session under its ID, closing the older
// session it takes the ID from, if any (a new ID is registered already,
// unless a newer session took it since, which then wins).
func (ss *Session) replace() {
	s := ss.srv
	id := ss.info.Peer.ID
	old, replaced := s.peers.Add(id, ss)
	if !replaced {
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		old.CloseReplaced()
	}()
}

// CloseReplaced ends the session as one whose ID a newer session took, here
// or on another replica of a cluster: the client is told so (and stops
// instead of reconnecting) and its calls end with codes.Unavailable. It
// returns once the session is closed, at most handshake.Linger from now.
func (ss *Session) CloseReplaced() {
	ss.closeTold(session.CodeReplaced, "replaced by a newer session of the same client",
		status.Errorf(codes.Unavailable, "brpc: client %q reconnected; this session was replaced", ss.ID()),
		time.Now().Add(handshake.Linger), 0)
}

// dialGRPC returns the route of the server's calls to this client through
// the server's shared reverse connection: a subchannel of its own, each of
// whose connections is a new stream on the session.
func (ss *Session) dialGRPC() (grpcglue.Channel, error) {
	return ss.srv.reverse.NewRoute(func(ctx context.Context) (net.Conn, error) {
		c, err := ss.sess.OpenStream(ctx)
		if err != nil {
			return nil, err
		}
		return grpcglue.NewStreamConn(c, ss.info), nil
	})
}

// goAway tells the client that the server is going away, giving up at
// deadline. It reports false when the notice could not be written; a
// session not welcomed (yet) has nothing to be told and reports true.
func (ss *Session) goAway(reason string, deadline time.Time) bool {
	ss.ctrlMu.Lock()
	welcomed := ss.ctrl != nil
	ss.ctrlMu.Unlock()
	return !welcomed || ss.notify(handshake.NewGoAway(reason), deadline)
}

// notify writes a notice on the control stream of a welcomed session,
// giving up at deadline or a second from now, whichever comes first. It
// reports whether the notice was written.
func (ss *Session) notify(n *handshakepb.Notice, deadline time.Time) bool {
	ss.ctrlMu.Lock()
	defer ss.ctrlMu.Unlock()
	if ss.ctrl == nil {
		return false
	}
	if soon := time.Now().Add(time.Second); soon.Before(deadline) {
		deadline = soon
	}
	ss.ctrl.SetWriteDeadline(deadline)
	return handshake.WriteMsg(ss.ctrl, n) == nil
}

// closeTold ends the session after telling the client why on the control
// stream, for transports that carry no close code of their own (TCP), and
// over what window to spread its first reconnect attempt (0: none). The
// client closes the session when it reads the notice; the server closes it
// itself at deadline (closing first could reset the connection before the
// notice is read), or at once if the notice could not be written.
func (ss *Session) closeTold(code session.CloseCode, reason string, callErr error, deadline time.Time, reconnectWindow time.Duration) {
	// From here on the session's Ending is this close, whichever side
	// then ends the connection.
	ss.sess.Announce(code, reason)
	ss.lazy().Drain(callErr)
	if ss.notify(handshake.NewClosing(code, reason, reconnectWindow), deadline) {
		t := time.NewTimer(time.Until(deadline))
		select {
		case <-ss.sess.Closed():
		case <-t.C:
		}
		t.Stop()
	}
	ss.closeNow(code, reason, callErr)
}

// closeNow ends the session at once, as this side's close with code; its
// reverse calls fail with callErr. The session closes before its reverse
// connection: closing that connection's stream on a TCP session whose
// client stopped reading would wait for yamux's write timeout, unless the
// session is closed already.
func (ss *Session) closeNow(code session.CloseCode, reason string, callErr error) {
	l := ss.lazy()
	l.Drain(callErr) // new reverse calls fail with callErr from now on
	ss.sess.Close(code, reason)
	l.Close(callErr)
}

// OpenStream opens a new stream on the session, as the reverse
// connection's dialer does: the client's *grpc.Server takes it for a new
// gRPC connection from the server.
func (ss *Session) OpenStream(ctx context.Context) (net.Conn, error) {
	return ss.sess.OpenStream(ctx)
}
