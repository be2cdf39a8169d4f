package brpcetcd

import (
	"context"
	"sync"
	"time"

	"github.com/brpc-go/brpc"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	// DefaultPrefix is the key prefix without WithPrefix.
	DefaultPrefix = "/brpc"
	// DefaultTTL is a membership's lease TTL without WithTTL.
	DefaultTTL = 10 * time.Second
	// DefaultBatch is the most operations per transaction without
	// WithBatch: etcd's default --max-txn-ops.
	DefaultBatch = 128
)

// Option configures a Presence.
type Option func(*config)

type config struct {
	prefix string
	ttl    time.Duration
	batch  int
}

// WithPrefix sets the key prefix under which the cluster's records live
// (default DefaultPrefix): replicas of one cluster must use the same
// prefix, and clusters sharing an etcd different ones. It must not be
// empty nor end with "/".
func WithPrefix(prefix string) Option {
	return func(c *config) { c.prefix = prefix }
}

// WithTTL sets the lease TTL of a membership (default DefaultTTL): a replica
// that stops keeping its lease alive loses its records that long after
// its last keepalive, and a replica cut off from etcd reports Down about
// that long after the cut. etcd counts leases in whole seconds, so the TTL
// must be a whole number of seconds, at least one; etcd may raise a TTL
// below its minimum (1.5 times the election timeout, rounded up).
func WithTTL(ttl time.Duration) Option {
	return func(c *config) { c.ttl = ttl }
}

// WithBatch sets the most operations one write transaction carries
// (default DefaultBatch). It must be at least 1 and no more than the etcd
// server's --max-txn-ops (default 128): a transaction that etcd refuses as
// too large is split in halves.
func WithBatch(ops int) Option {
	return func(c *config) { c.batch = ops }
}

// Presence is a brpc.Presence kept in etcd. Its memberships keep their
// records under a lease of their own; see the package documentation for
// the key layout and the load on etcd.
type Presence struct {
	cli            *clientv3.Client
	cfg            config
	clientsPrefix  string
	replicasPrefix string
	counters       counters
	hooks          hooks

	mu      sync.Mutex
	members map[*membership]struct{}
}

// hooks let tests step into the membership's work.
type hooks struct {
	// beforeWatch runs after a snapshot is read and before the watch from
	// its revision starts.
	beforeWatch func(snapshotRev int64)
}

var _ brpc.Presence = (*Presence)(nil)

// New returns a presence kept in etcd through cli, which stays the
// caller's: close it only after every membership has left. An invalid
// option is an error with code InvalidArgument.
func New(cli *clientv3.Client, opts ...Option) (*Presence, error) {
	if cli == nil {
		return nil, status.Error(codes.InvalidArgument, "brpcetcd: New needs an etcd client")
	}
	cfg := config{prefix: DefaultPrefix, ttl: DefaultTTL, batch: DefaultBatch}
	for _, o := range opts {
		o(&cfg)
	}
	switch {
	case cfg.prefix == "" || cfg.prefix[len(cfg.prefix)-1] == '/':
		return nil, status.Errorf(codes.InvalidArgument, "brpcetcd: prefix %q is empty or ends with /", cfg.prefix)
	case cfg.ttl < time.Second || cfg.ttl%time.Second != 0:
		return nil, status.Errorf(codes.InvalidArgument, "brpcetcd: TTL %v is not a whole number of seconds, at least one", cfg.ttl)
	case cfg.batch < 1:
		return nil, status.Errorf(codes.InvalidArgument, "brpcetcd: batch of %d operations is less than one", cfg.batch)
	}
	return &Presence{
		cli:            cli,
		cfg:            cfg,
		clientsPrefix:  cfg.prefix + "/clients/",
		replicasPrefix: cfg.prefix + "/replicas/",
		members:        make(map[*membership]struct{}),
	}, nil
}

// Join makes self a member: it takes a lease, writes self's replica record
// under it and reads the records, all within ctx, and returns once that is
// done; the first update, a Reset with every record, follows from the
// membership's goroutine. A name recorded by a live replica with another
// address is refused with AlreadyExists (the same address is taken to be
// that replica restarted, and its record is taken over); etcd refusing a
// call is Unavailable, ctx ending first DeadlineExceeded or Canceled.
// updates may call Claim and Release, not Leave.
func (p *Presence) Join(ctx context.Context, self brpc.Replica, updates func(brpc.PresenceUpdate)) (brpc.Membership, error) {
	if self.Name == "" || self.Addr == "" {
		return nil, status.Error(codes.InvalidArgument, "brpcetcd: a replica needs a name and an address")
	}
	if updates == nil {
		return nil, status.Error(codes.InvalidArgument, "brpcetcd: Join needs an updates function")
	}
	m := newMembership(ctx, p, self, updates)
	ep, first, err := m.establish(ctx, true)
	if err != nil {
		m.cancel()
		return nil, err
	}
	p.mu.Lock()
	p.members[m] = struct{}{}
	p.mu.Unlock()
	go m.run(ep, first)
	return m, nil
}

// Stats returns the presence's counters, summed over its memberships.
func (p *Presence) Stats() Stats {
	s := p.counters.load()
	p.mu.Lock()
	defer p.mu.Unlock()
	for m := range p.members {
		s.Pending += m.pendingLen()
		s.Records += int(m.records.Load())
	}
	return s
}

// forget drops a membership that has ended from the gauges.
func (p *Presence) forget(m *membership) {
	p.mu.Lock()
	delete(p.members, m)
	p.mu.Unlock()
}

func (p *Presence) clientKey(id string) string    { return p.clientsPrefix + id }
func (p *Presence) replicaKey(name string) string { return p.replicasPrefix + name }
