package brpc

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc"

	"github.com/brpc-go/brpc/internal/cluster"
	"github.com/brpc-go/brpc/internal/gateway"
	"github.com/brpc-go/brpc/internal/server"
)

// ErrServerStopped is returned by Serve when the server was stopped before it
// was called.
var ErrServerStopped = errors.New("brpc: the server has been stopped")

// Server accepts brpc clients. It serves the application's *grpc.Server to
// them and reaches each of them through a typed stub C.
type Server[C any] struct {
	core      *server.Server
	gwLimit   *gateway.Limiter        // shared by every Gateway handler
	gwKinds   map[string]gateway.Kind // WithGatewayServices
	newClient func(grpc.ClientConnInterface) C
	// cluster is nil without WithCluster; clusterErr is what a
	// WithCluster that could not be used makes Serve return.
	cluster    *cluster.Cluster
	clusterErr error
	replica    string // the replica's name (WithCluster); "" without
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
	conf.NewStub = func(cc grpc.ClientConnInterface) any { return newClient(reverseConn{cc}) }
	s := &Server[C]{newClient: newClient, gwLimit: gateway.NewLimiter(o.gwPerClient, o.gwTotal)}
	if len(o.gwServices) > 0 {
		s.gwKinds = gateway.MethodKinds(o.gwServices...)
	}
	if o.cluster != nil {
		s.replica = o.cluster.Replica
		s.clusterErr = o.cluster.validate()
		if s.clusterErr == nil {
			// The hooks run only once Serve has joined, after s.cluster is set.
			conf.OnWelcome = func(ss *server.Session) { s.cluster.Welcomed(ss) }
			conf.OnGone = func(ss *server.Session, removed bool) { s.cluster.Gone(ss, removed) }
		}
	}
	s.core = server.New(gs, conf)
	if o.cluster != nil && s.clusterErr == nil {
		s.cluster, s.clusterErr = cluster.New(s.core, o.cluster.core(o.clusterEvents, s.gwKinds, o.reverseIdle))
	}
	return s
}

// Serve accepts clients from lis until Stop/GracefulStop or lis fails. It may
// be called several times (e.g. once for a QUIC and once for a TCP listener)
// from separate goroutines; all clients share one registry. Serve returns nil
// after Stop or GracefulStop, and otherwise the error that ended accepting.
func (s *Server[C]) Serve(lis Listener) error {
	if lis == nil {
		return errors.New("brpc: Serve needs a Listener")
	}
	if s.clusterErr != nil {
		lis.Close()
		return s.clusterErr
	}
	if s.cluster != nil {
		if err := s.cluster.Join(); err != nil {
			lis.Close()
			if err == server.ErrStopped {
				return ErrServerStopped
			}
			return err
		}
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
//
// On a replica of a cluster (WithCluster), a client connected to another
// replica is reached too: the stub forwards its calls to that replica,
// which relays them to the client. Client does no network I/O for that:
// the replica's cache of the presence says where the client is. While the
// presence is unreachable, a client not connected here is
// codes.Unavailable. The stub of a client on another replica follows the
// client: each call goes where the client is then (here, or another
// replica). When the replica a call was forwarded to no longer holds the
// client, the call is made once more as soon as the cache learns where it
// went (waiting at most a second, or the call's deadline); a stream is,
// with the messages it sent, if it sent at most 16 messages (1 MiB) before
// the replica answered, and otherwise fails with codes.NotFound on its
// first receive.
func (s *Server[C]) Client(id string) (C, error) {
	if s.cluster != nil {
		if ss, ok := s.core.Lookup(id); ok {
			return stubOf[C](ss), nil
		}
		cc, err := s.cluster.Conn(id)
		if err != nil {
			var zero C
			return zero, err
		}
		return s.newClient(reverseConn{cc}), nil
	}
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
//
// A replica of a cluster (WithCluster) leaves the presence first (waiting
// at most 5 s), so the other replicas route no new calls here and
// the clients can reconnect to another replica at once. The other
// replicas then close their tunnels to this replica's clients once the
// calls on them are over, which GracefulStop waits for (at most 10 s)
// before it drains the rest; then the replica listener stops.
func (s *Server[C]) GracefulStop() {
	if s.cluster != nil {
		s.cluster.Leave(clusterLeaveTimeout)
		// The other replicas learn of the leave, route no new calls here
		// and close their tunnels to this replica's clients once the calls
		// on them are over; the sessions those tunnels run on stay until
		// then.
		s.cluster.DrainTunnels(clusterTunnelDrainTimeout)
	}
	s.core.GracefulStop()
	if s.cluster != nil {
		s.cluster.Close(true)
	}
}

// Stop closes everything now: listeners, sessions and the *grpc.Server given
// to NewServer. Calls in flight in either direction end with
// codes.Unavailable. Every client is told first (with the reconnect window,
// WithReconnectWindow), and Stop waits for the clients to close their
// sessions, at most 0.5 s plus 0.25 ms per client and 5 s in all, before it
// closes the rest.
//
// A replica of a cluster (WithCluster) leaves the presence first, waiting
// at most 1 s, and stops its replica endpoint too.
func (s *Server[C]) Stop() {
	if s.cluster != nil {
		s.cluster.Leave(clusterStopLeaveTimeout)
	}
	s.core.Stop()
	if s.cluster != nil {
		s.cluster.Close(false)
	}
}

// How long stopping waits for a replica's records to be removed from the
// presence. Past it, the presence forgets them on its own (brpcetcd: when
// the lease expires).
const (
	clusterLeaveTimeout     = 5 * time.Second
	clusterStopLeaveTimeout = time.Second
	// clusterTunnelDrainTimeout bounds how long a replica stopping
	// gracefully waits for the tunnels through it to close.
	clusterTunnelDrainTimeout = 10 * time.Second
)
