// Package server is the non-generic core of a brpc server: the accept loop,
// admission limits, each client's session from handshake to disconnect, the
// registry of connected clients, peer events and the two ways of stopping.
//
// The public brpc.Server[C] is a thin typed layer over it: the core builds
// each client's stub through Config.NewStub and hands it back untyped. Code
// that relays untyped calls (a gateway, a cluster) finds a session with
// Client and calls through its Conn.
package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc/internal/grpcglue"
	"github.com/brpc-go/brpc/internal/handshake"
	"github.com/brpc-go/brpc/internal/registry"
	"github.com/brpc-go/brpc/internal/session"
)

// ErrStopped is returned by Serve when the server was stopped before it was
// called.
var ErrStopped = errors.New("brpc: the server has been stopped")

// errShuttingDown is what reverse calls and late handshakes get while the
// server stops.
var errShuttingDown = status.Error(codes.Unavailable, "brpc: server is shutting down")

// Config is a server's configuration, filled by the public options.
type Config struct {
	// Session tunes every session (keepalive, idle timeout, stream cap);
	// its Admit is the server's own.
	Session          session.Settings
	HandshakeTimeout time.Duration
	MaxHelloSize     int
	// MaxMetadataValues and MaxMetadataValueSize cap the hello's metadata
	// (handshake.ServerConfig); 0: no cap.
	MaxMetadataValues    int
	MaxMetadataValueSize int
	MaxClients           int // 0: no cap
	MaxPending           int // handshakes in progress, per phase; 0: no cap
	MaxHandshaking       int // QUIC TLS handshakes run at once; 0: no limit
	RatePerSecond        float64
	RateBurst            int           // with RatePerSecond: per-address limit; 0: none
	ReverseIdle          time.Duration // 0: keep reverse connections until disconnect
	// ReconnectCostQUIC and ReconnectCostTCP are the time the server
	// counts on to admit one returning client of each transport. Stop
	// announces to every client a reconnect window of their sum over the
	// sessions it holds, at most MaxReconnectWindow (0: no window).
	ReconnectCostQUIC, ReconnectCostTCP time.Duration
	MaxReconnectWindow                  time.Duration
	DialOptions                         []grpc.DialOption

	// Authenticate returns a connecting client's ID or the error that
	// rejects it; nil admits every client under a random ID.
	Authenticate func(ctx context.Context, info AuthInfo) (id string, err error)
	// NewStub builds a welcomed client's stub on its reverse connection,
	// once per session; Session.Stub returns it.
	NewStub func(grpc.ClientConnInterface) any
	// OnEvent, if set, is called for every peer event, on the session's
	// goroutine.
	OnEvent func(Event)
	// OnWelcome, if set, is called on the session's goroutine once a
	// session is welcomed and holds its ID in the registry (an older
	// session under that ID was replaced before).
	OnWelcome func(*Session)
	// OnGone, if set, is called on the session's goroutine once a
	// welcomed session has left the registry; removed is false when a
	// newer session had taken its ID already.
	OnGone func(ss *Session, removed bool)
}

type serverState int

const (
	stateServing serverState = iota
	stateDraining
	stateStopped
)

// Server accepts brpc clients, serves the application's *grpc.Server to
// them and keeps a reverse connection to each.
type Server struct {
	gs   *grpc.Server
	conf Config

	streams *grpcglue.Listener   // feeds gs the streams clients open
	reverse *grpcglue.SharedConn // carries the calls to every client
	peers   *registry.Registry[*Session]
	limiter *addressLimiter // nil: no per-address limit
	pending gate            // sessions between accept and welcome
	watch   watchHub

	mu          sync.Mutex
	state       serverState
	grpcStarted bool // gs.Serve runs
	listeners   map[Listener]Acceptor
	sessions    map[*Session]struct{} // every live session, welcomed or not
	wg          sync.WaitGroup        // session goroutines and gs.Serve

	// linger and lingerPerSession size Stop's wait for the clients to close
	// (stopLinger, stopLingerPerSession; tests shorten or lengthen them).
	linger, lingerPerSession time.Duration
}

// New returns a server that serves gs, which it owns from now on.
func New(gs *grpc.Server, conf Config) *Server {
	srv := &Server{
		gs:        gs,
		conf:      conf,
		streams:   grpcglue.NewListener(&net.UnixAddr{Name: "brpc", Net: "brpc"}),
		reverse:   grpcglue.NewSharedConn(conf.DialOptions),
		peers:     registry.New[*Session](),
		listeners: make(map[Listener]Acceptor),
		sessions:  make(map[*Session]struct{}),
		limiter:   newAddressLimiter(conf.RatePerSecond, conf.RateBurst),

		linger:           stopLinger,
		lingerPerSession: stopLingerPerSession,
	}
	srv.pending.max = int64(conf.MaxPending)
	return srv
}

// Serve accepts clients from lis until Stop/GracefulStop or lis fails. It
// returns nil after Stop or GracefulStop, ErrStopped when called after them,
// and otherwise the error that ended accepting.
func (s *Server) Serve(lis Listener) error {
	s.mu.Lock()
	if s.state != stateServing {
		s.mu.Unlock()
		lis.Close()
		return ErrStopped
	}
	acc, err := lis.Start(ListenConfig{QUIC: s.quicConfig(), TCP: s.tcpConfig()})
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
		sess, err := acc.Accept()
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
			handshake.Refuse(sess, status.Error(codes.ResourceExhausted, "brpc: too many handshakes in progress"))
			continue
		}
		s.mu.Lock()
		if s.state != stateServing {
			s.mu.Unlock()
			s.pending.leave()
			sess.Close(session.CodeShutdown, "server is shutting down")
			continue
		}
		ss := &Session{srv: s, sess: sess}
		s.sessions[ss] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go ss.run()
	}
}

// sessionConfig is what both listeners' sessions are tuned with.
func (s *Server) sessionConfig() session.Settings {
	conf := s.conf.Session
	conf.Admit = s.admit()
	return conf
}

func (s *Server) tcpConfig() session.TCPConfig {
	conf := s.sessionConfig()
	// The TLS handshake of a TCP session is the listener's; QUIC's is bounded
	// by quic-go's handshake idle timeout.
	conf.HandshakeTimeout = s.conf.HandshakeTimeout
	// The control stream carries the hello and its 4-byte length prefix
	// before the welcome; the session layer ends a session whose client
	// sends more there (and never allows less than yamux's initial window).
	return session.TCPConfig{Settings: conf, MaxPendingHandshakes: s.conf.MaxPending, MaxControlBytes: s.conf.MaxHelloSize + 4}
}

func (s *Server) quicConfig() session.QUICConfig {
	conf := s.sessionConfig()
	// quic-go's handshake idle timeout: a client silent that long in its
	// TLS handshake is dropped, and no TLS handshake lasts more than twice
	// that.
	conf.HandshakeTimeout = s.conf.HandshakeTimeout
	return session.QUICConfig{Settings: conf, VerifyAddresses: s.limiter != nil, MaxPendingHandshakes: s.conf.MaxPending, MaxHandshaking: s.conf.MaxHandshaking}
}

// admit is the listeners' admission check, nil when there is none.
func (s *Server) admit() func(net.Addr) error {
	if s.limiter == nil {
		return nil
	}
	return s.limiter.admit
}

// SessionFromContext returns the session of this server that the call of
// ctx arrived on. The error is a gRPC status: codes.FailedPrecondition when
// ctx is not that of a call from one of this server's clients, and
// codes.Unavailable when that client's session has ended.
func (s *Server) SessionFromContext(ctx context.Context) (*Session, error) {
	info := grpcglue.InfoFromContext(ctx)
	if info == nil {
		return nil, status.Error(codes.FailedPrecondition, "brpc: the context is not that of a call from a brpc client")
	}
	ss, ok := info.Owner.(*Session)
	if !ok || ss.srv != s {
		return nil, status.Error(codes.FailedPrecondition, "brpc: the context is not that of a call from a client of this server")
	}
	if ss.sess.Context().Err() != nil {
		return nil, status.Errorf(codes.Unavailable, "brpc: client %q has disconnected", info.Peer.ID)
	}
	return ss, nil
}

// Client returns the session of the connected client with this ID; the
// error is a gRPC status error with codes.NotFound when no such client is
// connected.
func (s *Server) Client(id string) (*Session, error) {
	ss, ok := s.peers.Get(id)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "brpc: no client %q is connected", id)
	}
	return ss, nil
}

// Lookup returns the session of the connected client with this ID, if
// any: Client without the error, for paths that look further when the
// client is not here.
func (s *Server) Lookup(id string) (*Session, bool) { return s.peers.Get(id) }

// Peers lists the clients connected right now, ordered by ID.
func (s *Server) Peers() []grpcglue.Peer {
	list := s.peers.List()
	out := make([]grpcglue.Peer, 0, len(list))
	for _, ss := range list {
		out = append(out, ss.info.Snapshot())
	}
	return out
}

// GracefulStop stops accepting clients, lets the calls in flight finish in
// both directions, then closes every session. Forward calls are drained first
// (their handlers may still call their client back); reverse calls started
// after that fail with codes.Unavailable. It also gracefully stops the
// *grpc.Server.
//
// First every client is told, all at once, that the server is going away.
// A client that has not taken that notice within goAwayTimeout (2 s) has
// stopped reading its connection: its session is closed at once, its calls
// ending with codes.Unavailable, since they could not drain anyway. So
// however many clients are stuck, they add at most 2 s; the rest takes as
// long as the calls in flight of the other clients. A client that took its
// notice and only then stalls, with a call still open, is not bounded: the
// *grpc.Server's GracefulStop waits for that call until its session dies
// (the session's keepalive timeout, at the latest).
func (s *Server) GracefulStop() {
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

	goAwayAll(sessions)
	s.gs.GracefulStop()
	for _, ss := range sessions {
		<-ss.lazy().Drain(errShuttingDown)
	}
	s.Stop()
}

// goAwayTimeout bounds GracefulStop's going-away notices, for all sessions
// together (see GracefulStop).
const goAwayTimeout = 2 * time.Second

// goAwayAll tells every session's client at once that the server is going
// away, and closes at once the sessions whose client has not taken the
// notice within goAwayTimeout: it stopped reading its connection. The
// notice's own write deadline would not do: on TCP a write waits for yamux's
// send loop, which a client that stopped reading holds for yamux's write
// timeout whatever the stream's deadline.
func goAwayAll(sessions []*Session) {
	const why = "server stopped; the client did not take its going-away notice"
	deadline := time.Now().Add(goAwayTimeout)
	type result struct {
		ss    *Session
		taken bool
	}
	results := make(chan result, len(sessions))
	var writers sync.WaitGroup
	for _, ss := range sessions {
		writers.Add(1)
		go func() {
			defer writers.Done()
			results <- result{ss, ss.goAway("server is shutting down", deadline)}
		}()
	}
	pending := make(map[*Session]struct{}, len(sessions))
	for _, ss := range sessions {
		pending[ss] = struct{}{}
	}
	// The sessions are closed side by side too: the bound must not grow
	// with the number of stuck clients.
	var closers sync.WaitGroup
	closeNow := func(ss *Session) {
		closers.Add(1)
		go func() {
			defer closers.Done()
			ss.closeNow(session.CodeShutdown, why, errShuttingDown)
		}()
	}
	t := time.NewTimer(goAwayTimeout)
	defer t.Stop()
	for len(pending) > 0 {
		select {
		case r := <-results:
			delete(pending, r.ss)
			if !r.taken {
				closeNow(r.ss)
			}
		case <-t.C:
			// Closing a session also ends the write its notice waits in.
			for ss := range pending {
				closeNow(ss)
			}
			clear(pending)
		}
	}
	writers.Wait()
	closers.Wait()
}

// stopLinger, plus stopLingerPerSession for each session told, at most
// maxStopLinger, bounds how long Stop waits, for all sessions together, for
// clients told of the shutdown to close their sessions themselves. A QUIC
// client that has not read its Closing notice when the server's close
// arrives never reads it (the close discards what its streams hold), and
// reconnects at once instead of within the notice's reconnect window; a
// fleet that reads its notices in a few hundred milliseconds does not need
// the time, but one whose clients are slow to (10,000 of them in one
// process took about 2 s) would otherwise come back all at once, which is
// what the window is there to prevent. Stop returns as soon as every
// client has closed.
const (
	stopLinger           = 500 * time.Millisecond
	stopLingerPerSession = 250 * time.Microsecond
	maxStopLinger        = 5 * time.Second
)

// stopLingerFor is Stop's linger for n sessions.
func (s *Server) stopLingerFor(n int) time.Duration {
	return min(s.linger+time.Duration(n)*s.lingerPerSession, max(maxStopLinger, s.linger))
}

// Stop closes everything now: listeners, sessions and the *grpc.Server.
// Calls in flight in either direction end with codes.Unavailable. Each
// client is sent a Closing notice with session.CodeShutdown first, all at
// once, and Stop closes the sessions the clients have not closed within
// stopLingerFor their number.
func (s *Server) Stop() {
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
	// Every client is told why at once (TCP carries no close code), and
	// the whole gets one linger to close from the clients' side: a client
	// that stopped reading holds Stop up to that, not each one in turn.
	deadline := time.Now().Add(s.stopLingerFor(len(sessions)))
	window := s.reconnectWindow(sessions)
	var told sync.WaitGroup
	for _, ss := range sessions {
		told.Add(1)
		go func() {
			defer told.Done()
			ss.closeTold(session.CodeShutdown, "server stopped", errShuttingDown, deadline, window)
		}()
	}
	told.Wait()
	for _, l := range listeners {
		l.Close()
	}
	s.wg.Wait()
	// Every session has reported its disconnect by now.
	s.watch.stop()
	s.reverse.Close()
}

// reconnectWindow is the window a stopping server announces to the
// clients of sessions, so that they do not all come back to its successor
// (or to another replica) at once: about the time that successor needs to
// admit them all, if it admits them at the rate the configured costs
// say. Handshakes that arrive faster than that wait in a queue, and those
// that wait longer than the handshake timeout fail and are redone, which
// wastes the very CPU the queue waits for.
func (s *Server) reconnectWindow(sessions []*Session) time.Duration {
	var w time.Duration
	for _, ss := range sessions {
		if ss.sess.Transport() == session.TransportTCP {
			w += s.conf.ReconnectCostTCP
		} else {
			w += s.conf.ReconnectCostQUIC
		}
		if w >= s.conf.MaxReconnectWindow {
			return s.conf.MaxReconnectWindow
		}
	}
	return w
}

func (s *Server) stopAcceptingLocked() {
	for _, acc := range s.listeners {
		acc.StopAccepting()
	}
}

func (s *Server) sessionsLocked() []*Session {
	out := make([]*Session, 0, len(s.sessions))
	for ss := range s.sessions {
		out = append(out, ss)
	}
	return out
}

// authenticate runs the authenticator, or picks a random ID without one.
// Its errors are gRPC statuses.
func (s *Server) authenticate(ctx context.Context, info AuthInfo) (id string, err error) {
	if s.conf.Authenticate == nil {
		return randomID(), nil
	}
	defer func() {
		if r := recover(); r != nil {
			id, err = "", status.Errorf(codes.Internal, "brpc: authenticator panicked: %v", r)
		}
	}()
	id, err = s.conf.Authenticate(ctx, info)
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

// emit stamps ss's event and hands it to the watches, then to the event
// callback: once the callback has seen an event, so has every watch (and
// publishing never waits, whereas the callback may).
func (s *Server) emit(ss *Session, ev Event) {
	ev.Time = time.Now()
	s.watch.publish(ss, ev)
	if s.conf.OnEvent != nil {
		s.conf.OnEvent(ev)
	}
}

func randomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
