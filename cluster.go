package brpc

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strconv"
	"time"

	"google.golang.org/grpc"

	"github.com/brpc-go/brpc/internal/cluster"
	"github.com/brpc-go/brpc/internal/gateway"
)

// ClusterConfig makes a Server one replica of a cluster (WithCluster).
type ClusterConfig struct {
	// Replica is this replica's name, unique in the cluster. Required.
	Replica string
	// Presence is the cluster's shared record of which replica holds
	// which client. Required.
	Presence Presence
	// Advertise is the host:port at which the other replicas reach this
	// one's replica endpoint (ServeReplicas). Required.
	Advertise string
	// TLS is the replicas' mutual TLS: Certificates holds this replica's
	// certificate, presented both when serving the replica endpoint and
	// when dialing the other replicas' (so it must allow both server and
	// client authentication), RootCAs (ClientCAs when nil) verifies the
	// other replicas' endpoints and ClientCAs (RootCAs when nil) the
	// replicas calling in. brpc clones it and requires TLS 1.3.
	// ClientAuth is brpc's: a peer without a certificate is answered with
	// codes.Unauthenticated. Required.
	TLS *tls.Config
	// IsReplica, when set, decides for every link from another replica
	// and every call to the replica endpoint whose peer presented a
	// certificate that verified against ClientCAs whether that peer is a
	// replica (ctx carries the peer: its AuthInfo is a
	// credentials.TLSInfo; for a call, ctx is the call's). An error refuses the call with its status
	// (codes.PermissionDenied when it carries none). Without it, every
	// peer whose certificate verifies is a replica: give the replicas a
	// CA of their own, or an IsReplica, when clients hold certificates of
	// the same CA.
	IsReplica func(ctx context.Context) error
	// DialOptions are added to the grpc.ClientConn that carries this
	// replica's calls to the other replicas' clients (interceptors, stats
	// handlers, message size limits; its transport credentials, resolver
	// and balancer are brpc's).
	DialOptions []grpc.DialOption
	// ServerOptions are added to the replica endpoint's *grpc.Server,
	// which serves gRPC callers of the replica listener (its transport
	// credentials and unknown-service handler are brpc's). Calls brpc's
	// replicas forward go through tunnels, and reach no *grpc.Server on
	// the holding replica.
	ServerOptions []grpc.ServerOption
}

// WithCluster makes the server a replica of a cluster: every client it
// welcomes is recorded in conf.Presence as this replica's, and Client(id),
// ClusterPeers and Gateway reach the clients of every replica. Calls for a
// client on another replica are forwarded through that replica
// (ServeReplicas) over mutual TLS: a tunnel to the client's session there,
// whose bytes that replica only copies, released after the reverse idle
// time (WithReverseIdleTimeout) without calls. Serve and ServeReplicas join the
// cluster first and wait for the join: a presence that refuses it (a
// replica name taken at another address, bad settings) is their error, and
// one that does not answer holds them until it does or until Stop, which
// ends the wait (Serve then returns ErrServerStopped); a server that must
// not wait for ever calls Stop after a bound of its own, as brpc
// echo-server does after 30 s. GracefulStop and Stop leave it first, so that the other replicas stop routing calls
// here and the clients may move at once. docs/cluster.md describes the
// topology and what happens when a replica or the presence fails.
func WithCluster(conf ClusterConfig) ServerOption {
	return serverOptionFunc(func(o *serverOptions) {
		c := conf
		o.cluster = &c
	})
}

// validate checks what WithCluster needs.
func (c *ClusterConfig) validate() error {
	switch {
	case c.Replica == "":
		return errors.New("brpc: WithCluster needs a Replica name")
	case c.Presence == nil:
		return errors.New("brpc: WithCluster needs a Presence")
	case c.Advertise == "":
		return errors.New("brpc: WithCluster needs the Advertise address of the replica endpoint")
	case c.TLS == nil:
		return errors.New("brpc: WithCluster needs a TLS config")
	}
	if _, _, err := net.SplitHostPort(c.Advertise); err != nil {
		return errors.New("brpc: WithCluster's Advertise address is not host:port: " + err.Error())
	}
	return nil
}

// core is the cluster core's view of c.
func (c *ClusterConfig) core(observe []func(ClusterEvent), kinds map[string]gateway.Kind, idle time.Duration) cluster.Config {
	p := c.Presence
	conf := cluster.Config{
		Self:          cluster.Replica{Name: c.Replica, Addr: c.Advertise},
		TLS:           c.TLS,
		IsReplica:     c.IsReplica,
		DialOptions:   c.DialOptions,
		ServerOptions: c.ServerOptions,
		TargetHeader:  GatewayTargetHeader,
		Kinds:         kinds,
		TunnelIdle:    idle,
		Join: func(ctx context.Context, self cluster.Replica, updates func(cluster.Update)) (cluster.Membership, error) {
			return p.Join(ctx, Replica(self), func(u PresenceUpdate) { updates(coreUpdate(u)) })
		},
	}
	if len(observe) > 0 {
		conf.Observe = func(ev cluster.Event) {
			pe := ClusterEvent{Kind: ClusterEventKind(ev.Kind), Replica: ev.Replica, Method: ev.Method, Code: ev.Code, Err: ev.Err}
			for _, fn := range observe {
				fn(pe)
			}
		}
	}
	return conf
}

// ServeReplicas serves the replica listener on lis until GracefulStop or
// Stop: the other replicas open tunnels through it to this replica's
// clients, and gRPC callers reach its replica endpoint (a relay by the
// GatewayTargetHeader), each connection told apart by its TLS ALPN. lis is
// a plain TCP listener; the TLS is the cluster config's. It joins the cluster first, if Serve has not. It returns nil
// after GracefulStop or Stop, and an error at once on a server without
// WithCluster.
func (s *Server[C]) ServeReplicas(lis net.Listener) error {
	if s.clusterErr != nil {
		lis.Close()
		return s.clusterErr
	}
	if s.cluster == nil {
		lis.Close()
		return errors.New("brpc: ServeReplicas needs a server built WithCluster")
	}
	return s.cluster.Serve(lis)
}

// ClusterPeer is a client connected to some replica of the cluster.
type ClusterPeer struct {
	ID      string
	Replica string // the name of the replica that holds it
}

// ClusterPeers lists the clients connected to every replica, ordered by
// ID, as this replica knows them now: its own clients, and the others' as
// its cache of the presence has them (without network I/O; while the
// presence is down, as they were when it went down). Without WithCluster
// it lists the server's own clients under the replica name "".
func (s *Server[C]) ClusterPeers() []ClusterPeer {
	if s.cluster == nil {
		local := s.core.Peers()
		out := make([]ClusterPeer, 0, len(local))
		for _, p := range local {
			out = append(out, ClusterPeer{ID: p.ID})
		}
		return out
	}
	list := s.cluster.Peers()
	out := make([]ClusterPeer, 0, len(list))
	for _, p := range list {
		out = append(out, ClusterPeer(p))
	}
	return out
}

// ClusterEventKind says what a ClusterEvent reports.
type ClusterEventKind int

// Cluster event kinds.
const (
	// ClusterForwarded: an attempt of a call forwarded to the replica
	// that holds its client ended, with Code.
	ClusterForwarded ClusterEventKind = iota + 1
	// ClusterStaleRoute: the replica a call was forwarded to no longer
	// held the client (the cache was behind); the call is made once more
	// when the cache catches up.
	ClusterStaleRoute
	// ClusterClaim: this replica recorded a client as its own.
	ClusterClaim
	// ClusterRelease: this replica removed a client's record.
	ClusterRelease
	// ClusterPresenceDown: the presence became unreachable (Err says why):
	// calls for clients on other replicas fail with codes.Unavailable.
	ClusterPresenceDown
	// ClusterPresenceUp: the presence is reachable again.
	ClusterPresenceUp
	// ClusterPresenceError: joining or leaving the presence failed (Err).
	ClusterPresenceError
)

// String names the kind, as metrics label it.
func (k ClusterEventKind) String() string {
	switch k {
	case ClusterForwarded:
		return "forwarded"
	case ClusterStaleRoute:
		return "stale_route"
	case ClusterClaim:
		return "claim"
	case ClusterRelease:
		return "release"
	case ClusterPresenceDown:
		return "presence_down"
	case ClusterPresenceUp:
		return "presence_up"
	case ClusterPresenceError:
		return "presence_error"
	default:
		return "ClusterEventKind(" + strconv.Itoa(int(k)) + ")"
	}
}

// ClusterEvent reports what a replica did (WithClusterEvents).
type ClusterEvent struct {
	Kind ClusterEventKind
	// Replica is the replica a call was forwarded to.
	Replica string
	// Method is a forwarded call's full method name.
	Method string
	// Code is a forwarded call's gRPC code, as codes.Code's String.
	Code string
	Err  error
}

// WithClusterEvents makes a replica (WithCluster) call fn for every
// forwarded call, presence write and presence failure. It may be given
// several times; every fn is called. fn runs on the goroutine that did the
// work, sometimes under the replica's lock: it must return quickly and not
// call back into the Server. A server without WithCluster never calls it.
func WithClusterEvents(fn func(ClusterEvent)) ServerOption {
	return serverOptionFunc(func(o *serverOptions) {
		if fn != nil {
			o.clusterEvents = append(o.clusterEvents, fn)
		}
	})
}

// coreUpdate converts a presence's update for the cluster core.
func coreUpdate(u PresenceUpdate) cluster.Update {
	cu := cluster.Update{Reset: u.Reset, Down: u.Down}
	if len(u.Clients) > 0 {
		cu.Clients = make([]cluster.ClientRecord, len(u.Clients))
		for i, c := range u.Clients {
			cu.Clients[i] = cluster.ClientRecord(c)
		}
	}
	if len(u.Replicas) > 0 {
		cu.Replicas = make([]cluster.ReplicaRecord, len(u.Replicas))
		for i, r := range u.Replicas {
			cu.Replicas[i] = cluster.ReplicaRecord{Replica: cluster.Replica(r.Replica), Gone: r.Gone}
		}
	}
	return cu
}

// publicUpdate converts the in-memory presence's update for a Presence's
// callback.
func publicUpdate(cu cluster.Update) PresenceUpdate {
	u := PresenceUpdate{Reset: cu.Reset, Down: cu.Down}
	if len(cu.Clients) > 0 {
		u.Clients = make([]ClientRecord, len(cu.Clients))
		for i, c := range cu.Clients {
			u.Clients[i] = ClientRecord(c)
		}
	}
	if len(cu.Replicas) > 0 {
		u.Replicas = make([]ReplicaRecord, len(cu.Replicas))
		for i, r := range cu.Replicas {
			u.Replicas[i] = ReplicaRecord{Replica: Replica(r.Replica), Gone: r.Gone}
		}
	}
	return u
}

// NewMemoryPresence returns a presence kept in this process's memory: the
// servers given it (each WithCluster with its own Replica name) form one
// cluster. Claims are recorded at once, each with the next revision, and
// every member is told of every change in order, on a goroutine of its
// own. It suits tests and a cluster of servers in one process; replicas in
// several processes need a shared presence such as brpcetcd's.
func NewMemoryPresence() Presence { return memoryPresence{cluster.NewMemory()} }

type memoryPresence struct{ m *cluster.Memory }

func (p memoryPresence) Join(ctx context.Context, self Replica, updates func(PresenceUpdate)) (Membership, error) {
	return p.m.Join(ctx, cluster.Replica(self), func(u cluster.Update) { updates(publicUpdate(u)) })
}
