package brpc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc/internal/handshake"
	"github.com/brpc-go/brpc/internal/handshake/handshakepb"
	"github.com/brpc-go/brpc/internal/registry"
	"github.com/brpc-go/brpc/internal/session"
)

// ErrServerStopped is returned by Serve when the server was stopped before it
// was called.
var ErrServerStopped = errors.New("brpc: the server has been stopped")

// errShuttingDown is what reverse calls and late handshakes get while the
// server stops.
var errShuttingDown = status.Error(codes.Unavailable, "brpc: server is shutting down")

// rejectLinger bounds how long a rejected client is given to read its
// welcome and close the session itself before the server closes it.
const rejectLinger = 2 * time.Second

type serverState int

const (
	stateServing serverState = iota
	stateDraining
	stateStopped
)

// Server accepts brpc clients. It serves the application's *grpc.Server to
// them and reaches each of them through a typed stub C.
type Server[C any] struct {
	gs        *grpc.Server
	newClient func(grpc.ClientConnInterface) C
	opts      serverOptions

	streams *streamListener // feeds gs the streams clients open
	peers   *registry.Registry[*serverSession[C]]
	limiter *addressLimiter // nil: no per-address limit
	pending gate            // sessions between accept and welcome

	mu          sync.Mutex
	state       serverState
	grpcStarted bool // gs.Serve runs
	listeners   map[Listener]acceptor
	sessions    map[*serverSession[C]]struct{} // every live session, welcomed or not
	wg          sync.WaitGroup                 // session goroutines and gs.Serve
}

// NewServer wraps the application's own *grpc.Server (its services,
// interceptors, stats handlers and options stay the application's) and
// builds, for every connected client, a typed stub C with newClient —
// normally a protoc-generated NewXxxClient.
//
// gs must not have transport credentials: brpc's sessions are TLS already.
// The Server owns gs from now on: GracefulStop and Stop stop it too.
func NewServer[C any](gs *grpc.Server, newClient func(grpc.ClientConnInterface) C, opts ...ServerOption) *Server[C] {
	o := defaultServerOptions()
	for _, opt := range opts {
		opt.applyServer(&o)
	}
	srv := &Server[C]{
		gs:        gs,
		newClient: newClient,
		opts:      o,
		streams:   newStreamListener(&net.UnixAddr{Name: "brpc", Net: "brpc"}),
		peers:     registry.New[*serverSession[C]](),
		listeners: make(map[Listener]acceptor),
		sessions:  make(map[*serverSession[C]]struct{}),
		limiter:   newAddressLimiter(o.ratePerSecond, o.rateBurst),
	}
	srv.pending.max = int64(o.maxPending)
	return srv
}

// Serve accepts clients from lis until Stop/GracefulStop or lis fails. It may
// be called several times (e.g. once for a QUIC and once for a TCP listener)
// from separate goroutines; all clients share one registry. Serve returns nil
// after Stop or GracefulStop, and otherwise the error that ended accepting.
func (s *Server[C]) Serve(lis Listener) error {
	if lis == nil {
		return errors.New("brpc: Serve needs a Listener")
	}
	s.mu.Lock()
	if s.state != stateServing {
		s.mu.Unlock()
		lis.Close()
		return ErrServerStopped
	}
	acc, err := lis.start(listenConfig{quic: s.quicConfig(), tcp: s.tcpConfig()})
	if err != nil {
		s.mu.Unlock()
		return err
	}
	s.listeners[lis] = acc
	if !s.grpcStarted {
		// Under s.mu, with the state checked: Stop's wg.Wait never races
		// this Add.
		s.grpcStarted = true
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			_ = s.gs.Serve(s.streams)
		}()
	}
	s.mu.Unlock()

	for {
		sess, err := acc.accept()
		if err != nil {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.state != stateServing {
				return nil // Stop closes the listener
			}
			delete(s.listeners, lis)
			lis.Close()
			return fmt.Errorf("brpc: accept: %w", err)
		}
		if !s.pending.enter() {
			sess.Close(session.CodeRejected, fmt.Sprintf("%d brpc: too many handshakes in progress", codes.ResourceExhausted))
			continue
		}
		s.mu.Lock()
		if s.state != stateServing {
			s.mu.Unlock()
			s.pending.leave()
			sess.Close(session.CodeShutdown, "server is shutting down")
			continue
		}
		ss := &serverSession[C]{srv: s, sess: sess}
		s.sessions[ss] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go ss.run()
	}
}

// sessionConfig is what both listeners' sessions are tuned with.
func (s *Server[C]) sessionConfig() session.Settings {
	conf := s.opts.sessionConfig()
	conf.Admit = s.admit()
	return conf
}

func (s *Server[C]) tcpConfig() session.TCPConfig {
	conf := s.sessionConfig()
	// The TLS handshake of a TCP session is the listener's; QUIC's is bounded
	// by quic-go's handshake idle timeout.
	conf.HandshakeTimeout = s.opts.handshakeTimeout
	return session.TCPConfig{Settings: conf, MaxPendingHandshakes: s.opts.maxPending, MaxControlBytes: s.opts.maxHelloSize + 4}
}

func (s *Server[C]) quicConfig() session.QUICConfig {
	conf := s.sessionConfig()
	conf.HandshakeTimeout = s.opts.handshakeTimeout
	return session.QUICConfig{Settings: conf, VerifyAddresses: s.limiter != nil, MaxPendingHandshakes: s.opts.maxPending}
}

// admit is the listeners' admission check, nil when there is none.
func (s *Server[C]) admit() func(net.Addr) error {
	if s.limiter == nil {
		return nil
	}
	return s.limiter.admit
}

// ClientFromContext returns the stub of the client whose call is being
// handled. Identity comes from the connection the call arrived on, never
// from metadata. The error is a gRPC status: codes.FailedPrecondition when
// ctx is not that of a call from one of this server's clients, and
// codes.Unavailable when that client's session has ended.
func (s *Server[C]) ClientFromContext(ctx context.Context) (C, error) {
	var zero C
	sa := sessionAddrFromContext(ctx)
	if sa == nil {
		return zero, status.Error(codes.FailedPrecondition, "brpc: the context is not that of a call from a brpc client")
	}
	ss, ok := sa.info.owner.(*serverSession[C])
	if !ok || ss.srv != s {
		return zero, status.Error(codes.FailedPrecondition, "brpc: the context is not that of a call from a client of this server")
	}
	if ss.sess.Context().Err() != nil {
		return zero, status.Errorf(codes.Unavailable, "brpc: client %q has disconnected", sa.info.peer.ID)
	}
	return ss.stub, nil
}

// Client returns the stub of the connected client with this ID; the error is
// a gRPC status error with codes.NotFound when no such client is connected.
func (s *Server[C]) Client(id string) (C, error) {
	ss, ok := s.peers.Get(id)
	if !ok {
		var zero C
		return zero, status.Errorf(codes.NotFound, "brpc: no client %q is connected", id)
	}
	return ss.stub, nil
}

// Peers lists the clients connected right now, ordered by ID.
func (s *Server[C]) Peers() []Peer {
	list := s.peers.List()
	out := make([]Peer, 0, len(list))
	for _, ss := range list {
		out = append(out, ss.info.snapshot())
	}
	return out
}

// GracefulStop stops accepting clients, lets the calls in flight finish in
// both directions, then closes every session. Forward calls are drained first
// (their handlers may still call their client back); reverse calls started
// after that fail with codes.Unavailable. It also gracefully stops the
// *grpc.Server given to NewServer.
func (s *Server[C]) GracefulStop() {
	s.mu.Lock()
	if s.state != stateServing {
		s.mu.Unlock()
		s.wg.Wait()
		return
	}
	s.state = stateDraining
	s.stopAcceptingLocked()
	sessions := s.sessionsLocked()
	s.mu.Unlock()

	for _, ss := range sessions {
		ss.goAway("server is shutting down")
	}
	s.gs.GracefulStop()
	for _, ss := range sessions {
		<-ss.lazy().drain(errShuttingDown)
	}
	s.Stop()
}

// Stop closes everything now: listeners, sessions and the *grpc.Server given
// to NewServer. Calls in flight in either direction end with
// codes.Unavailable.
func (s *Server[C]) Stop() {
	s.mu.Lock()
	if s.state == stateStopped {
		s.mu.Unlock()
		s.wg.Wait()
		return
	}
	s.state = stateStopped
	s.stopAcceptingLocked()
	sessions := s.sessionsLocked()
	listeners := make([]Listener, 0, len(s.listeners))
	for l := range s.listeners {
		listeners = append(listeners, l)
	}
	s.mu.Unlock()

	s.gs.Stop()
	s.streams.Close()
	for _, ss := range sessions {
		ss.close(DisconnectServerStopped, session.CodeShutdown, "server stopped", errShuttingDown)
	}
	for _, l := range listeners {
		l.Close()
	}
	s.wg.Wait()
}

func (s *Server[C]) stopAcceptingLocked() {
	for _, acc := range s.listeners {
		acc.stopAccepting()
	}
}

func (s *Server[C]) sessionsLocked() []*serverSession[C] {
	out := make([]*serverSession[C], 0, len(s.sessions))
	for ss := range s.sessions {
		out = append(out, ss)
	}
	return out
}

// serverSession is one client's session on the server.
type serverSession[C any] struct {
	srv  *Server[C]
	sess session.Session

	// Set by the handshake, before the session is registered.
	info *sessionInfo
	stub C
	conn atomic.Pointer[lazyConn] // reverse calls; set by the handshake

	ctrlMu sync.Mutex
	ctrl   net.Conn

	endReason atomic.Pointer[string] // set when the server ends the session
	endKind   atomic.Pointer[DisconnectKind]
	helloMD   metadata.MD // what the hello carried, once read
}

// lazy returns the session's reverse-call connection, which exists once the
// session was welcomed; a session that never was gets a closed one.
func (ss *serverSession[C]) lazy() *lazyConn {
	if l := ss.conn.Load(); l != nil {
		return l
	}
	return closedLazyConn
}

var closedLazyConn = func() *lazyConn {
	l := newLazyConn(nil, 0)
	l.close(errPeerGone)
	return l
}()

// run handshakes; a welcomed session is then served by serve, on a new
// goroutine: the handshake may have grown this one's stack (TLS state,
// protobuf, the authenticator), and the goroutine that waits for the
// client's streams for the whole session should not keep that.
func (ss *serverSession[C]) run() {
	s := ss.srv
	err := ss.handshake()
	s.pending.leave()
	if err != nil {
		p := Peer{Metadata: ss.helloMD, RemoteAddr: ss.sess.RemoteAddr(), Transport: ss.sess.Transport()}
		s.emit(PeerEvent{Type: PeerRejected, Peer: p, Reason: status.Convert(err).Message(), Err: err})
		ss.forget()
		s.wg.Done()
		return
	}
	s.emit(PeerEvent{Type: PeerConnected, Peer: ss.info.snapshot()})
	go ss.serve() // takes over this goroutine's count in s.wg
}

// serve feeds the client's streams to the gRPC server until the session
// ends, then forgets the session.
func (ss *serverSession[C]) serve() {
	s := ss.srv
	defer s.wg.Done()
	defer func() {
		s.peers.Remove(ss.info.peer.ID, ss)
		kind, reason, err := ss.disconnectReason()
		s.emit(PeerEvent{Type: PeerDisconnected, Peer: ss.info.snapshot(), Kind: kind, Reason: reason, Err: err})
		ss.forget()
	}()
	ctx := ss.sess.Context()
	for {
		c, err := ss.sess.AcceptStream(ctx)
		if err != nil {
			break
		}
		s.streams.push(ctx, newStreamConn(c, ss.info))
	}
	// Accepting fails as the connection closes; let the transport finish
	// recording why before the disconnect is reported.
	t := time.NewTimer(time.Second)
	select {
	case <-ss.sess.Closed():
	case <-t.C:
	}
	t.Stop()
}

// forget ends the session's reverse calls and drops it from the server.
func (ss *serverSession[C]) forget() {
	s := ss.srv
	ss.lazy().close(errPeerGone)
	s.mu.Lock()
	delete(s.sessions, ss)
	s.mu.Unlock()
}

// handshake reads the client's hello, authenticates it and welcomes or
// rejects it. It returns nil once the session may carry calls, or the
// gRPC status the client was refused with.
func (ss *serverSession[C]) handshake() error {
	s := ss.srv
	ctx, cancel := context.WithTimeout(ss.sess.Context(), s.opts.handshakeTimeout)
	defer cancel()

	ctrl, err := ss.sess.AcceptStream(ctx)
	if err != nil {
		ss.sess.Close(session.CodeHandshakeTimeout, "no control stream")
		return handshakeEnded(ctx, "no control stream")
	}
	deadline, _ := ctx.Deadline()
	ctrl.SetDeadline(deadline)

	var hello handshakepb.Hello
	if err := handshake.ReadMsg(ctrl, &hello, s.opts.maxHelloSize); err != nil {
		switch {
		case errors.Is(err, handshake.ErrTooLarge):
			return ss.reject(ctrl, status.Errorf(codes.ResourceExhausted, "brpc: hello too large (limit %d bytes)", s.opts.maxHelloSize))
		case errors.Is(err, handshake.ErrMalformed):
			return ss.reject(ctrl, status.Error(codes.InvalidArgument, "brpc: malformed hello"))
		default:
			ss.sess.Close(session.CodeHandshakeTimeout, "no hello")
			ctrl.Close()
			return handshakeEnded(ctx, "no hello")
		}
	}
	version, err := handshake.Negotiate(&hello)
	if err != nil {
		return ss.reject(ctrl, err)
	}

	md := handshake.MDFromProto(hello.GetMetadata())
	ss.helloMD = md.Copy()
	id, err := s.authenticate(ctx, AuthInfo{Metadata: md.Copy(), TLS: ss.sess.TLS(), RemoteAddr: ss.sess.RemoteAddr()})
	if err != nil {
		return ss.reject(ctrl, err)
	}

	ss.info = &sessionInfo{
		peer: Peer{
			ID:          id,
			Metadata:    md,
			RemoteAddr:  ss.sess.RemoteAddr(),
			Transport:   ss.sess.Transport(),
			ConnectedAt: time.Now(),
		},
		tls: credentials.TLSInfo{
			State:          ss.sess.TLS(),
			CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		},
		owner: ss,
	}
	conn := newLazyConn(ss.dialGRPC, s.opts.reverseIdle)
	ss.stub = s.newClient(conn)
	ss.conn.Store(conn)

	s.mu.Lock()
	if s.state != stateServing {
		s.mu.Unlock()
		return ss.reject(ctrl, errShuttingDown)
	}
	if max := s.opts.maxClients; max > 0 && s.peers.Len() >= max {
		if _, taken := s.peers.Get(id); !taken {
			s.mu.Unlock()
			return ss.reject(ctrl, status.Errorf(codes.ResourceExhausted, "brpc: the server is full (%d clients)", max))
		}
	}
	old, replaced := s.peers.Add(id, ss)
	s.mu.Unlock()
	if replaced {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			old.closeTold(DisconnectReplaced, session.CodeReplaced, "replaced by a newer session of the same client",
				status.Errorf(codes.Unavailable, "brpc: client %q reconnected; this session was replaced", id))
		}()
	}

	ss.sess.Admitted()
	if err := handshake.WriteMsg(ctrl, handshake.Accept(version, id)); err != nil {
		s.peers.Remove(id, ss)
		ss.sess.Close(session.CodeProtocol, "welcome not delivered")
		return status.Errorf(codes.Unavailable, "brpc: the welcome could not be delivered: %v", err)
	}
	ctrl.SetDeadline(time.Time{})
	ss.ctrlMu.Lock()
	ss.ctrl = ctrl
	ss.ctrlMu.Unlock()
	return nil
}

// handshakeEnded describes a handshake the client never finished.
func handshakeEnded(ctx context.Context, what string) error {
	if ctx.Err() == context.DeadlineExceeded {
		return status.Errorf(codes.DeadlineExceeded, "brpc: handshake timed out: %s", what)
	}
	return status.Errorf(codes.Unavailable, "brpc: the connection ended during the handshake: %s", what)
}

// authenticate runs the Authenticator, or picks a random ID without one.
// Its errors are gRPC statuses.
func (s *Server[C]) authenticate(ctx context.Context, info AuthInfo) (id string, err error) {
	if s.opts.auth == nil {
		return randomID(), nil
	}
	defer func() {
		if r := recover(); r != nil {
			id, err = "", status.Errorf(codes.Internal, "brpc: authenticator panicked: %v", r)
		}
	}()
	id, err = s.opts.auth(ctx, info)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
			return "", status.Error(codes.DeadlineExceeded, "brpc: authentication did not finish within the handshake timeout")
		}
		if st, ok := status.FromError(err); ok && st.Code() != codes.OK && st.Code() != codes.Unknown {
			return "", err
		}
		return "", status.Error(codes.Unauthenticated, err.Error())
	}
	if id == "" {
		return "", status.Error(codes.Internal, "brpc: the authenticator returned an empty ID")
	}
	return id, nil
}

// reject sends the client a welcome carrying err, gives it a moment to read
// it and close the session itself, then closes the session.
func (ss *serverSession[C]) reject(ctrl net.Conn, err error) error {
	ctrl.SetWriteDeadline(time.Now().Add(rejectLinger))
	werr := handshake.WriteMsg(ctrl, handshake.Reject(err))
	// Closing the stream stops reading the rest of the hello, which unblocks
	// a client still writing it, and ends the welcome with FIN.
	ctrl.Close()
	if werr == nil {
		t := time.NewTimer(rejectLinger)
		select {
		case <-ss.sess.Closed():
		case <-t.C:
		}
		t.Stop()
	}
	st := status.Convert(err)
	// The close reason repeats the code, for a client that misses the welcome.
	ss.sess.Close(session.CodeRejected, fmt.Sprintf("%d %s", st.Code(), st.Message()))
	return err
}

// dialGRPC builds the gRPC connection that carries the server's calls to
// this client: each time grpc-go dials, a new stream opens on the session.
func (ss *serverSession[C]) dialGRPC() (*grpc.ClientConn, error) {
	opts := append(slices.Clone(ss.srv.opts.grpcDialOptions),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			c, err := ss.sess.OpenStream(ctx)
			if err != nil {
				return nil, err
			}
			return newStreamConn(c, ss.info), nil
		}),
		grpc.WithTransportCredentials(sessionCreds{}),
		grpc.WithAuthority("brpc-client"),
		grpc.WithConnectParams(streamConnParams),
	)
	return grpc.NewClient("passthrough:///brpc-client", opts...)
}

// goAway tells the client that the server is going away.
func (ss *serverSession[C]) goAway(reason string) {
	ss.notify(&handshakepb.Notice{Kind: &handshakepb.Notice_GoAway{GoAway: &handshakepb.GoAway{Reason: reason}}})
}

// notify writes a notice on the control stream of a welcomed session.
func (ss *serverSession[C]) notify(n *handshakepb.Notice) {
	ss.ctrlMu.Lock()
	defer ss.ctrlMu.Unlock()
	if ss.ctrl == nil {
		return
	}
	ss.ctrl.SetWriteDeadline(time.Now().Add(time.Second))
	_ = handshake.WriteMsg(ss.ctrl, n)
}

// close ends the session now; its reverse calls fail with callErr.
func (ss *serverSession[C]) close(kind DisconnectKind, code session.CloseCode, reason string, callErr error) {
	ss.endKind.CompareAndSwap(nil, &kind)
	ss.endReason.CompareAndSwap(nil, &reason)
	ss.lazy().close(callErr)
	ss.sess.Close(code, reason)
}

// closeTold ends the session after telling the client why on the control
// stream, for transports that carry no close code of their own (TCP). The
// client closes the session when it reads the notice; the server closes it
// itself after rejectLinger (closing first could reset the connection
// before the notice is read).
func (ss *serverSession[C]) closeTold(kind DisconnectKind, code session.CloseCode, reason string, callErr error) {
	ss.endKind.CompareAndSwap(nil, &kind)
	ss.endReason.CompareAndSwap(nil, &reason)
	ss.lazy().close(callErr)
	ss.notify(&handshakepb.Notice{Kind: &handshakepb.Notice_Closing{Closing: &handshakepb.Closing{Code: uint32(code), Reason: reason}}})
	t := time.NewTimer(rejectLinger)
	select {
	case <-ss.sess.Closed():
	case <-t.C:
	}
	t.Stop()
	ss.sess.Close(code, reason)
}

// disconnectReason says why a welcomed session ended.
func (ss *serverSession[C]) disconnectReason() (DisconnectKind, string, error) {
	cause := context.Cause(ss.sess.Context())
	if r := ss.endReason.Load(); r != nil {
		return *ss.endKind.Load(), *r, cause
	}
	if code, reason, ok := session.PeerCloseCode(cause); ok {
		if code == session.CodeNormal {
			return DisconnectClientClosed, "client closed the connection", cause
		}
		return DisconnectClientClosed, fmt.Sprintf("client closed the connection (code %d): %s", code, reason), cause
	}
	if errors.Is(cause, io.EOF) {
		return DisconnectClientClosed, "client closed the connection", cause
	}
	var ne net.Error
	if errors.As(cause, &ne) && ne.Timeout() {
		return DisconnectKeepaliveTimeout, "client silent past the keepalive timeout", cause
	}
	if errors.Is(cause, yamuxKeepaliveTimeout) {
		return DisconnectKeepaliveTimeout, "client silent past the keepalive timeout", cause
	}
	if cause == nil {
		return DisconnectConnectionLost, "connection ended", nil
	}
	return DisconnectConnectionLost, "connection ended: " + cause.Error(), cause
}

// emit hands ev to the event callbacks and the logger.
func (s *Server[C]) emit(ev PeerEvent) {
	for _, fn := range s.opts.events {
		fn(ev)
	}
	logPeerEvent(s.opts.logger, ev)
}

func randomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
