package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc/internal/gateway"
	"github.com/brpc-go/brpc/internal/grpcglue"
	"github.com/brpc-go/brpc/internal/server"
)

// Config is a replica's part of a cluster, filled by brpc.WithCluster.
type Config struct {
	Self Replica
	Join JoinFunc
	// TLS holds this replica's certificate (used to serve the replica
	// endpoint and to dial the other replicas') and the CAs that verify
	// the other replicas: ClientCAs (RootCAs when nil) on the endpoint,
	// RootCAs when dialing.
	TLS *tls.Config
	// IsReplica, when set, runs on the replica endpoint for every call
	// whose peer presented a verified certificate; an error refuses it.
	IsReplica     func(ctx context.Context) error
	DialOptions   []grpc.DialOption
	ServerOptions []grpc.ServerOption
	// TargetHeader names the client a forwarded call is for.
	TargetHeader string
	// Kinds are the method kinds the endpoint's relay knows
	// (gateway.Config.Kinds).
	Kinds map[string]gateway.Kind
	// Observe, when set, is told of forwarded calls and presence changes.
	Observe func(Event)
	// TunnelIdle is how long a connection to a client on another replica
	// (its tunnel through that replica) stays open without calls; 0: until
	// the client or the replica goes.
	TunnelIdle time.Duration
}

// staleWait is how long a forwarded call that found its client gone waits
// for the cache to learn where it went.
const staleWait = time.Second

// Cluster is one replica: its membership, its cache of everyone's
// records, its connections to the other replicas and its replica
// endpoint.
type Cluster struct {
	conf     Config
	core     *server.Server
	endpoint *grpc.Server
	// relayHandler relays the endpoint's calls (relay.go).
	relayHandler grpc.StreamHandler
	serveTLS     *tls.Config // the replica listener's
	dialTLS      *tls.Config // the links' to the other replicas
	// shared carries the calls to the other replicas' clients: one
	// subchannel per client, over a tunnel (remote.go).
	shared *grpcglue.SharedConn

	life   context.Context // the membership's; ends at Close
	cancel context.CancelFunc

	joinMu sync.Mutex // one Join at a time

	mu       sync.Mutex
	member   Membership // nil until joined
	down     error
	leaving  bool // no more claims: Leave has begun
	closed   bool
	records  map[string]ClientRecord
	replicas map[string]Replica
	remotes  map[string]*remote      // by replica name
	claims   map[string]*claim       // this replica's clients
	fwd      map[*fwdClient]struct{} // every fwdClient not closed yet
	changed  chan struct{}           // closed and replaced at every change of records
	wg       sync.WaitGroup          // replaced sessions being closed, retired connections, listener goroutines

	listeners   map[net.Listener]struct{}
	incoming    map[net.Conn]struct{} // connections accepted on the replica listener
	tunnels     int                   // tunnels served here, open now
	tunnelsDone chan struct{}         // made by DrainTunnels; closed when tunnels drops to 0
}

// claim is a local session's record: rev is the revision the presence
// reported for it, 0 while the claim is being written.
type claim struct {
	ss  *server.Session
	rev int64
}

// New returns the cluster part of the server core. It joins nothing until
// Join.
func New(core *server.Server, conf Config) (*Cluster, error) {
	if conf.Self.Name == "" {
		return nil, errors.New("brpc: a cluster replica needs a name")
	}
	if conf.Join == nil {
		return nil, errors.New("brpc: a cluster needs a presence")
	}
	if conf.TLS == nil || len(conf.TLS.Certificates) == 0 && conf.TLS.GetCertificate == nil {
		return nil, errors.New("brpc: a cluster needs a TLS config with this replica's certificate")
	}
	if conf.TLS.ClientCAs == nil && conf.TLS.RootCAs == nil {
		return nil, errors.New("brpc: a cluster's TLS config needs the CAs that verify the other replicas (ClientCAs or RootCAs)")
	}
	c := &Cluster{
		conf:     conf,
		core:     core,
		records:  make(map[string]ClientRecord),
		replicas: make(map[string]Replica),
		remotes:  make(map[string]*remote),
		claims:   make(map[string]*claim),
		fwd:      make(map[*fwdClient]struct{}),
		changed:  make(chan struct{}),

		listeners: make(map[net.Listener]struct{}),
		incoming:  make(map[net.Conn]struct{}),
	}
	c.life, c.cancel = context.WithCancel(context.Background())

	serveTLS := conf.TLS.Clone()
	serveTLS.MinVersion = tls.VersionTLS13
	// A peer without a certificate still gets a gRPC answer
	// (Unauthenticated) rather than a failed handshake.
	serveTLS.ClientAuth = tls.VerifyClientCertIfGiven
	if serveTLS.ClientCAs == nil {
		serveTLS.ClientCAs = serveTLS.RootCAs
	}
	// One listener: links between replicas by their ALPN, gRPC callers of
	// the endpoint by h2 (or none).
	serveTLS.NextProtos = []string{tunnelALPN, "h2"}
	c.serveTLS = serveTLS
	// brpc's options come last, so that the application's cannot replace
	// them. The endpoint gets its connections with their TLS handshake
	// done (Serve).
	opts := append(slices.Clone(conf.ServerOptions), grpc.Creds(endpointCreds{}), grpc.UnknownServiceHandler(c.relay))
	c.endpoint = grpc.NewServer(opts...)
	c.relayHandler = c.newRelayHandler()

	c.dialTLS = conf.TLS.Clone()
	c.dialTLS.MinVersion = tls.VersionTLS13
	c.dialTLS.NextProtos = []string{tunnelALPN}
	if c.dialTLS.RootCAs == nil {
		c.dialTLS.RootCAs = c.dialTLS.ClientCAs
	}
	c.shared = grpcglue.NewSharedConn(conf.DialOptions)
	return c, nil
}

// Join makes this replica a member of the cluster, once; later calls
// return at once. The membership lives until Close. A Join still waiting
// for the presence when the server stops returns server.ErrStopped.
func (c *Cluster) Join() error {
	c.joinMu.Lock()
	defer c.joinMu.Unlock()
	c.mu.Lock()
	joined, stopped := c.member != nil, c.closed || c.leaving
	c.mu.Unlock()
	if joined {
		return nil
	}
	if stopped {
		return server.ErrStopped
	}
	m, err := c.conf.Join(c.life, c.conf.Self, c.apply)
	if err == nil && m == nil {
		// A presence that records nothing would leave this replica's
		// clients unreachable from the others without a word.
		err = errors.New("the presence returned no membership")
	}
	c.mu.Lock()
	stopped = c.closed || c.leaving
	if err == nil && !stopped {
		c.member = m
		// Sessions welcomed before the membership existed are claimed now.
		for id := range c.claims {
			m.Claim(id)
			c.observe(Event{Kind: EventClaim})
		}
	}
	c.mu.Unlock()
	switch {
	case err != nil && stopped:
		return server.ErrStopped
	case err != nil:
		c.observe(Event{Kind: EventPresenceError, Err: err})
		return fmt.Errorf("brpc: joining the cluster as %q: %w", c.conf.Self.Name, err)
	case stopped:
		// Stopping began while Join waited: leave at once.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		m.Leave(ctx)
		return server.ErrStopped
	}
	return nil
}

// Welcomed records a local session's client as this replica's.
func (c *Cluster) Welcomed(ss *server.Session) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.leaving {
		return
	}
	c.claims[ss.ID()] = &claim{ss: ss}
	if c.member != nil {
		c.member.Claim(ss.ID())
		c.observe(Event{Kind: EventClaim})
	}
}

// Gone releases the record of a local session that ended holding its ID.
// Claims and releases are made under one lock, so the presence gets them
// in the order the registry saw them.
func (c *Cluster) Gone(ss *server.Session, removed bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cl, ok := c.claims[ss.ID()]
	if !ok || cl.ss != ss || !removed {
		return
	}
	delete(c.claims, ss.ID())
	if c.member != nil && !c.leaving {
		c.member.Release(ss.ID())
		c.observe(Event{Kind: EventRelease})
	}
}

// apply takes in one presence update. It never blocks: sessions replaced
// by newer claims elsewhere are closed on goroutines of their own.
func (c *Cluster) apply(u Update) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	if u.Down != nil {
		if c.down == nil {
			c.observe(Event{Kind: EventPresenceDown, Err: u.Down})
		}
		c.down = u.Down
		c.notifyLocked()
		return
	}
	if u.Reset {
		if c.down != nil {
			c.observe(Event{Kind: EventPresenceUp})
		}
		c.down = nil
		c.records = make(map[string]ClientRecord, len(u.Clients))
		old := c.replicas
		c.replicas = make(map[string]Replica, len(u.Replicas))
		for name := range old {
			if !hasReplica(u.Replicas, name) {
				c.retireLocked(name)
			}
		}
	}
	for _, r := range u.Replicas {
		if r.Gone {
			delete(c.replicas, r.Name)
			c.retireLocked(r.Name)
			continue
		}
		if rm := c.remotes[r.Name]; rm != nil && rm.addr != r.Addr {
			c.retireLocked(r.Name)
		}
		c.replicas[r.Name] = r.Replica
	}
	if u.Reset {
		// Connections to clients whose record is gone or elsewhere now.
		for _, rm := range c.remotes {
			for id, f := range rm.clients {
				if !hasClient(u.Clients, id, rm.name) {
					f.retireLocked()
				}
			}
		}
	}
	for _, rec := range u.Clients {
		if old, ok := c.records[rec.ID]; ok && old.Replica != rec.Replica {
			if rm := c.remotes[old.Replica]; rm != nil && rm.clients[rec.ID] != nil {
				rm.clients[rec.ID].retireLocked()
			}
		}
		if rec.Replica == "" {
			delete(c.records, rec.ID)
			continue
		}
		c.records[rec.ID] = rec
		cl := c.claims[rec.ID]
		if cl == nil {
			continue
		}
		if rec.Replica == c.conf.Self.Name {
			cl.rev = rec.Revision
			continue
		}
		// A claim elsewhere newer than this replica's written one is a
		// newer session of the client: this one is replaced. A claim of
		// ours still being written will be newer than anything reported
		// before it, so it is left alone.
		if cl.rev != 0 && rec.Revision > cl.rev {
			delete(c.claims, rec.ID)
			c.wg.Add(1)
			go func() {
				defer c.wg.Done()
				cl.ss.CloseReplaced()
			}()
		}
	}
	c.notifyLocked()
}

func hasClient(list []ClientRecord, id, replica string) bool {
	for _, r := range list {
		if r.ID == id && r.Replica == replica {
			return true
		}
	}
	return false
}

func hasReplica(list []ReplicaRecord, name string) bool {
	for _, r := range list {
		if r.Name == name && !r.Gone {
			return true
		}
	}
	return false
}

func (c *Cluster) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// route says where calls for id go now: a local session's connection
// (fc nil), or the connection to the client through the replica that
// holds it, made now if there is none. Its errors are gRPC statuses:
// NotFound when no replica holds id, Unavailable when the presence is down
// or the replica is stopped.
func (c *Cluster) route(id string) (cc grpc.ClientConnInterface, fc *fwdClient, rec ClientRecord, err error) {
	if ss, ok := c.core.Lookup(id); ok {
		return ss.Conn(), nil, ClientRecord{}, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	rec, rm, err := c.lookupLocked(id)
	if err != nil {
		return nil, nil, rec, err
	}
	fc = rm.clients[id]
	if fc == nil {
		fc = newFwdClient(rm, id)
		rm.clients[id] = fc
		rm.open++
		c.fwd[fc] = struct{}{}
	}
	return nil, fc, rec, nil
}

// lookupLocked finds the replica holding id in the cache, and its
// connection (dialed on first use).
func (c *Cluster) lookupLocked(id string) (ClientRecord, *remote, error) {
	if c.closed {
		return ClientRecord{}, nil, status.Error(codes.Unavailable, "brpc: server is shutting down")
	}
	if c.down != nil {
		return ClientRecord{}, nil, status.Errorf(codes.Unavailable, "brpc: client %q is not connected here and the cluster's presence is unreachable: %v", id, c.down)
	}
	rec, ok := c.records[id]
	if !ok || rec.Replica == c.conf.Self.Name {
		return rec, nil, notFound(id)
	}
	r, ok := c.replicas[rec.Replica]
	if !ok {
		return rec, nil, notFound(id)
	}
	rm := c.remotes[r.Name]
	if rm == nil {
		// Dialed on its first tunnel: no I/O here.
		rm = &remote{c: c, name: r.Name, addr: r.Addr, clients: make(map[string]*fwdClient)}
		c.remotes[r.Name] = rm
	}
	return rec, rm, nil
}

func notFound(id string) error {
	return status.Errorf(codes.NotFound, "brpc: no client %q is connected", id)
}

// Conn returns the connection that reaches the client id on another
// replica, or the status error route gives. It does no network I/O: the
// cache answers.
func (c *Cluster) Conn(id string) (grpc.ClientConnInterface, error) {
	c.mu.Lock()
	_, _, err := c.lookupLocked(id)
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return &forwardConn{c: c, id: id}, nil
}

// awaitChange waits, at most staleWait and while ctx lasts, for the
// record of id to differ from was (or for the presence to go down). It
// reports whether it changed.
func (c *Cluster) awaitChange(ctx context.Context, id string, was ClientRecord) bool {
	t := time.NewTimer(staleWait)
	defer t.Stop()
	for {
		c.mu.Lock()
		cur := c.records[id]
		ch, down := c.changed, c.down != nil
		_, local := c.claims[id]
		c.mu.Unlock()
		if cur != was || down || local {
			return true
		}
		select {
		case <-ch:
		case <-t.C:
			return false
		case <-ctx.Done():
			return false
		}
	}
}

// Peer is a client somewhere in the cluster.
type Peer struct {
	ID      string
	Replica string
}

// Peers lists every client the cache knows of, this replica's own from its
// registry, ordered by ID.
func (c *Cluster) Peers() []Peer {
	local := c.core.Peers()
	seen := make(map[string]bool, len(local))
	out := make([]Peer, 0, len(local))
	for _, p := range local {
		seen[p.ID] = true
		out = append(out, Peer{ID: p.ID, Replica: c.conf.Self.Name})
	}
	c.mu.Lock()
	for id, rec := range c.records {
		if !seen[id] && rec.Replica != c.conf.Self.Name {
			out = append(out, Peer{ID: id, Replica: rec.Replica})
		}
	}
	c.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Leave removes this replica's records from the presence, waiting at most
// d: the other replicas stop sending calls here and the clients may
// reconnect elsewhere at once. Calls already routed keep being served.
func (c *Cluster) Leave(d time.Duration) {
	c.mu.Lock()
	c.leaving = true
	m := c.member
	c.mu.Unlock()
	if m == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if err := m.Leave(ctx); err != nil {
		c.observe(Event{Kind: EventPresenceError, Err: err})
	}
}

// Close stops the replica listener and endpoint (gracefully: calls relayed
// by the endpoint finish), closes the tunnels through this replica and
// the connections to the other replicas, and ends the membership's
// context. Call it after the server core has stopped.
func (c *Cluster) Close(graceful bool) {
	c.mu.Lock()
	c.leaving = true
	c.mu.Unlock()
	if graceful {
		c.endpoint.GracefulStop()
	} else {
		c.endpoint.Stop()
	}
	c.mu.Lock()
	c.closed = true
	for lis := range c.listeners {
		lis.Close()
	}
	for conn := range c.incoming {
		conn.Close()
	}
	var links []*remote
	for name, rm := range c.remotes {
		links = append(links, rm)
		c.retireLocked(name)
	}
	// Connections that still count calls (streams nobody ended) close
	// now: the server is gone, and so must their goroutines be.
	fwd := make([]*fwdClient, 0, len(c.fwd))
	for f := range c.fwd {
		fwd = append(fwd, f)
		links = append(links, f.rm)
	}
	c.notifyLocked()
	c.mu.Unlock()
	for _, f := range fwd {
		f.close()
	}
	for _, rm := range links {
		rm.closeLink()
	}
	c.shared.Close()
	c.cancel()
	c.wg.Wait()
}

// observe reports an event; it must not block.
func (c *Cluster) observe(ev Event) {
	if c.conf.Observe != nil {
		c.conf.Observe(ev)
	}
}
