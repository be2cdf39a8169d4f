package brpc

import (
	"context"
	"errors"

	"google.golang.org/grpc"

	"github.com/brpc-go/brpc/internal/server"
)

// ErrServerStopped is returned by Serve when the server was stopped before it
// was called.
var ErrServerStopped = errors.New("brpc: the server has been stopped")

// Server accepts brpc clients. It serves the application's *grpc.Server to
// them and reaches each of them through a typed stub C.
type Server[C any] struct {
	core *server.Server
}

// NewServer wraps the application's own *grpc.Server (its services,
// interceptors, stats handlers and options stay the application's) and
// builds, for every connected client, a typed stub C with newClient —
// normally a protoc-generated NewXxxClient.
//
// Build gs with grpc.Creds(TransportCredentials()) for its handlers and
// interceptors to see each client's TLS state as peer.AuthInfo, or with no
// transport credentials; other credentials (grpc-go's TLS) cannot serve
// brpc's sessions, which are TLS already. grpc-go's defaults let one
// client's calls that its handlers do not read make gs hold without limit:
// build it with grpc.MaxConcurrentStreams, grpc.InitialWindowSize and
// grpc.InitialConnWindowSize too, as docs/security.md recommends. Leave
// its write and read buffer options at grpc-go's defaults: its write buffers
// are shared (taken from a pool only while a connection writes), and brpc's
// streams let it read into pooled buffers only while data waits, so a quiet
// client's connection holds neither; grpc.SharedWriteBuffer(false) would
// keep 32 KiB per connection.
// The Server owns gs from now on: GracefulStop and Stop stop it too.
//
// Without WithAuthenticator, anyone who reaches the server's port and
// speaks brpc's protocol is admitted as a client, under a random ID, and may
// call gs's services: give an Authenticator (or require client certificates
// in the listener's tls.Config) to a server that is reachable by strangers.
// WithMaxClients then bounds admitted clients; docs/security.md gives what
// each connection, admitted or not, can make the server hold.
func NewServer[C any](gs *grpc.Server, newClient func(grpc.ClientConnInterface) C, opts ...ServerOption) *Server[C] {
	o := defaultServerOptions()
	for _, opt := range opts {
		opt.applyServer(&o)
	}
	conf := o.config()
	conf.NewStub = func(cc grpc.ClientConnInterface) any { return newClient(cc) }
	return &Server[C]{core: server.New(gs, conf)}
}

// Serve accepts clients from lis until Stop/GracefulStop or lis fails. It may
// be called several times (e.g. once for a QUIC and once for a TCP listener)
// from separate goroutines; all clients share one registry. Serve returns nil
// after Stop or GracefulStop, and otherwise the error that ended accepting.
func (s *Server[C]) Serve(lis Listener) error {
	if lis == nil {
		return errors.New("brpc: Serve needs a Listener")
	}
	err := s.core.Serve(coreListener{lis})
	if err == server.ErrStopped {
		return ErrServerStopped
	}
	return err
}

// ClientFromContext returns the stub of the client whose call is being
// handled. Identity comes from the connection the call arrived on, never
// from metadata. The error is a gRPC status: codes.FailedPrecondition when
// ctx is not that of a call from one of this server's clients, and
// codes.Unavailable when that client's session has ended.
func (s *Server[C]) ClientFromContext(ctx context.Context) (C, error) {
	ss, err := s.core.SessionFromContext(ctx)
	if err != nil {
		var zero C
		return zero, err
	}
	return stubOf[C](ss), nil
}

// Client returns the stub of the connected client with this ID; the error is
// a gRPC status error with codes.NotFound when no such client is connected.
func (s *Server[C]) Client(id string) (C, error) {
	ss, err := s.core.Client(id)
	if err != nil {
		var zero C
		return zero, err
	}
	return stubOf[C](ss), nil
}

// stubOf is the stub newClient built for ss. The core keeps it untyped; a
// newClient that returned a nil interface left nothing to assert.
func stubOf[C any](ss *server.Session) C {
	c, _ := ss.Stub().(C)
	return c
}

// Peers lists the clients connected right now, ordered by ID.
func (s *Server[C]) Peers() []Peer {
	list := s.core.Peers()
	out := make([]Peer, 0, len(list))
	for _, p := range list {
		out = append(out, Peer(p))
	}
	return out
}

// GracefulStop stops accepting clients, lets the calls in flight finish in
// both directions, then closes every session. Forward calls are drained first
// (their handlers may still call their client back); reverse calls started
// after that fail with codes.Unavailable. It also gracefully stops the
// *grpc.Server given to NewServer.
//
// First every client is told, all at once, that the server is going away.
// A client that has not taken that notice within 2 s has stopped reading
// its connection: its session is closed at once, its calls ending with
// codes.Unavailable, since they could not drain anyway. So however many
// clients are stuck, they add at most 2 s to GracefulStop; the rest takes
// as long as the other clients' calls in flight. Not bounded: a client that
// took its notice and only then stalls with a call still open holds the
// *grpc.Server's GracefulStop until its session dies (its keepalive
// timeout, at the latest). Call Stop to cut that short.
func (s *Server[C]) GracefulStop() { s.core.GracefulStop() }

// Stop closes everything now: listeners, sessions and the *grpc.Server given
// to NewServer. Calls in flight in either direction end with
// codes.Unavailable.
func (s *Server[C]) Stop() { s.core.Stop() }
