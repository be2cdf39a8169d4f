package brpcetcd

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/brpc-go/brpc"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Pauses of a membership that cannot write or reach etcd: a failed write is
// tried again after writeRetry (a lost etcd shows in the keepalive within
// the TTL anyway), a failed recovery after a pause doubling up to
// maxBackoff.
const (
	writeRetry = 250 * time.Millisecond
	minBackoff = 100 * time.Millisecond
	maxBackoff = time.Second
)

// errSplit says a batch was refused by etcd as too large and was queued
// again to be sent in smaller ones at once.
var errSplit = errors.New("brpcetcd: transaction too large, split")

// membership is one replica's part in a Presence. One goroutine (run) owns
// the lease, the watch and the writes, and calls updates; Claim and
// Release only queue operations and wake it.
type membership struct {
	p       *Presence
	self    brpc.Replica
	selfKey string
	updates func(brpc.PresenceUpdate)

	// ctx ends the goroutine, its keepalive and its watch; work, a child,
	// is the parent of every other etcd call and ends when Leave starts,
	// so that a write or a recovery in progress does not hold Leave up.
	ctx      context.Context
	cancel   context.CancelFunc
	work     context.Context
	stopWork context.CancelFunc

	kick      chan struct{}
	leaveCh   chan struct{}
	leaveOnce sync.Once
	leaveCtx  context.Context // set before leaveCh is closed
	leaveErr  error           // set before done is closed
	done      chan struct{}

	batch   int // owned by run: the most operations per transaction now
	records atomic.Int64

	mu    sync.Mutex
	left  bool
	lease clientv3.LeaseID // the lease now, or the last one while down
	// held has the clients this replica holds, each with the revision
	// of its record as last seen naming this replica (0 until then).
	held    map[string]int64
	pending map[string]opKind // the latest operation queued for each id
	queue   []string          // the ids in pending in the order first queued, and ids dropped since (skipped)
}

// epoch is what a membership has while it is up: a lease kept alive and a
// watch of the records.
type epoch struct {
	lease       clientv3.LeaseID
	ka          <-chan *clientv3.LeaseKeepAliveResponse
	kaCancel    context.CancelFunc
	wch         clientv3.WatchChan
	watchCancel context.CancelFunc
}

func (e *epoch) stop() {
	e.kaCancel()
	if e.watchCancel != nil {
		e.watchCancel()
	}
}

func newMembership(parent context.Context, p *Presence, self brpc.Replica, updates func(brpc.PresenceUpdate)) *membership {
	m := &membership{
		p:       p,
		self:    self,
		selfKey: p.replicaKey(self.Name),
		updates: updates,
		kick:    make(chan struct{}, 1),
		leaveCh: make(chan struct{}),
		done:    make(chan struct{}),
		batch:   p.cfg.batch,
		held:    make(map[string]int64),
		pending: make(map[string]opKind),
	}
	m.ctx, m.cancel = context.WithCancel(context.WithoutCancel(parent))
	m.work, m.stopWork = context.WithCancel(m.ctx)
	return m
}

// Claim queues a put of the client's record with this replica's name.
func (m *membership) Claim(id string) {
	m.mu.Lock()
	if m.left || id == "" {
		m.mu.Unlock()
		return
	}
	m.held[id] = 0
	m.enqueueLocked(id, opClaim)
	m.mu.Unlock()
	m.wake()
}

// Release queues a delete of the client's record if it names this replica;
// an id this membership does not hold has no record of it to remove.
func (m *membership) Release(id string) {
	m.mu.Lock()
	if _, ok := m.held[id]; m.left || !ok {
		m.mu.Unlock()
		return
	}
	delete(m.held, id)
	m.enqueueLocked(id, opRelease)
	m.mu.Unlock()
	m.wake()
}

// Leave revokes the lease, which deletes every record under it (the
// replica's own and its clients') in one etcd revision, and stops the
// membership; no update follows once it returns. Operations still queued
// are dropped: they would be deleted with the lease. If ctx ends first the
// membership stops anyway and its records go when the lease expires.
func (m *membership) Leave(ctx context.Context) error {
	m.leaveOnce.Do(func() {
		m.mu.Lock()
		m.left = true
		m.mu.Unlock()
		m.leaveCtx = ctx
		close(m.leaveCh)
		m.stopWork()
	})
	select {
	case <-m.done:
		return m.leaveErr
	case <-ctx.Done():
		m.cancel()
		<-m.done
		if m.leaveErr != nil {
			return m.leaveErr
		}
		return status.FromContextError(ctx.Err()).Err()
	}
}

func (m *membership) wake() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

func (m *membership) currentLease() clientv3.LeaseID {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lease
}

func (m *membership) callCtx(parent context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(parent, m.p.cfg.ttl)
}

// etcdErr counts a failed etcd call and says it as a status: the caller's
// context ending keeps its own code, etcd failing is Unavailable.
func (m *membership) etcdErr(parent context.Context, what string, err error) error {
	if m.ctx.Err() == nil && parent.Err() == nil {
		m.p.counters.errors.Add(1)
	}
	if cerr := parent.Err(); cerr != nil {
		return status.FromContextError(cerr).Err()
	}
	return status.Errorf(codes.Unavailable, "brpcetcd: %s: %v", what, err)
}

// clientClosed says whether the etcd client was closed: its calls would
// then spin through the client's retries (about 2.5 s) before failing.
func (m *membership) clientClosed() error {
	if m.p.cli.Ctx().Err() != nil {
		return status.Error(codes.Unavailable, "brpcetcd: the etcd client is closed")
	}
	return nil
}

// writeBatch writes the next batch of queued operations in one
// transaction and says how many it took. On failure they are queued again,
// except an operation that etcd refuses as too large on its own: it could
// never be written, so it is dropped (and counted as an error).
func (m *membership) writeBatch(parent context.Context, lease clientv3.LeaseID) (int, error) {
	ops := m.take(m.batch)
	if len(ops) == 0 {
		return 0, nil
	}
	name := m.self.Name
	tops := make([]clientv3.Op, len(ops))
	for i, op := range ops {
		key := m.p.clientKey(op.id)
		switch op.kind {
		case opClaim:
			tops[i] = clientv3.OpPut(key, name, clientv3.WithLease(lease))
		case opRestore:
			tops[i] = clientv3.OpTxn(
				[]clientv3.Cmp{clientv3.Compare(clientv3.Version(key), "=", 0)},
				[]clientv3.Op{clientv3.OpPut(key, name, clientv3.WithLease(lease))}, nil)
		case opRelease:
			tops[i] = clientv3.OpTxn(
				[]clientv3.Cmp{clientv3.Compare(clientv3.Value(key), "=", name)},
				[]clientv3.Op{clientv3.OpDelete(key)}, nil)
		}
	}
	ctx, cancel := m.callCtx(parent)
	_, err := m.p.cli.Txn(ctx).Then(tops...).Commit()
	cancel()
	if err == nil {
		m.p.counters.txn(len(ops))
		return len(ops), nil
	}
	if errors.Is(err, rpctypes.ErrTooManyOps) || errors.Is(err, rpctypes.ErrRequestTooLarge) {
		m.p.counters.errors.Add(1)
		if len(ops) == 1 {
			return 1, nil
		}
		m.batch = max(1, len(ops)/2)
		m.requeue(ops)
		return 0, errSplit
	}
	m.requeue(ops)
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		m.p.counters.errors.Add(1)
		return 0, err
	}
	return 0, m.etcdErr(parent, "writing client records", err)
}

// establish makes the membership up: the lease (the last one if etcd still
// has it, else a new one, with every held client queued for restore), the
// replica's record, the queued writes, then a snapshot of the records and
// a watch from its revision. initial is Join's first establish: a new
// lease, and a name taken by another live replica is refused.
func (m *membership) establish(parent context.Context, initial bool) (ep *epoch, reset brpc.PresenceUpdate, err error) {
	p := m.p
	if err := m.clientClosed(); err != nil {
		return nil, reset, err
	}
	lease := m.currentLease()
	if lease != 0 {
		ctx, cancel := m.callCtx(parent)
		ttl, err := p.cli.TimeToLive(ctx, lease)
		cancel()
		if err != nil {
			return nil, reset, m.etcdErr(parent, "reading the lease", err)
		}
		if ttl.TTL <= 0 {
			lease = 0
		}
	}
	if lease == 0 {
		ctx, cancel := m.callCtx(parent)
		g, err := p.cli.Grant(ctx, int64(p.cfg.ttl/time.Second))
		cancel()
		if err != nil {
			return nil, reset, m.etcdErr(parent, "granting a lease", err)
		}
		lease = g.ID
		m.setLease(lease, !initial)
		if initial {
			defer func() {
				if err != nil {
					// Nobody else knows this lease: drop it and the
					// record under it now rather than after the TTL.
					ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), time.Second)
					_, _ = p.cli.Revoke(ctx, lease)
					cancel()
				}
			}()
		}
	}
	if err := m.putSelf(parent, lease, initial); err != nil {
		return nil, reset, err
	}
	kaCtx, kaCancel := context.WithCancel(m.ctx)
	ka, err := p.cli.KeepAlive(kaCtx, lease)
	if err != nil {
		kaCancel()
		return nil, reset, m.etcdErr(parent, "keeping the lease alive", err)
	}
	ep = &epoch{lease: lease, ka: ka, kaCancel: kaCancel}
	for n := m.pendingLen(); n > 0; {
		k, err := m.writeBatch(parent, lease)
		if errors.Is(err, errSplit) {
			continue
		}
		if err != nil {
			ep.stop()
			if errors.Is(err, rpctypes.ErrLeaseNotFound) {
				err = status.Errorf(codes.Unavailable, "brpcetcd: writing client records: %v", err)
			}
			return nil, reset, err
		}
		if k == 0 {
			break
		}
		n -= k
	}
	reset, err = m.watchFromSnapshot(parent, ep)
	if err != nil {
		ep.stop()
		return nil, reset, err
	}
	return ep, reset, nil
}

// putSelf writes the replica's record under the lease.
func (m *membership) putSelf(parent context.Context, lease clientv3.LeaseID, initial bool) error {
	cli := m.p.cli
	ctx, cancel := m.callCtx(parent)
	defer cancel()
	put := clientv3.OpPut(m.selfKey, m.self.Addr, clientv3.WithLease(lease))
	if initial {
		resp, err := cli.Txn(ctx).
			If(clientv3.Compare(clientv3.Version(m.selfKey), "=", 0)).
			Then(put).
			Else(clientv3.OpGet(m.selfKey)).
			Commit()
		if err != nil {
			return m.etcdErr(parent, "writing the replica record", err)
		}
		if resp.Succeeded {
			m.p.counters.txn(1)
			return nil
		}
		if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 && string(kvs[0].Value) != m.self.Addr {
			return status.Errorf(codes.AlreadyExists, "brpcetcd: replica %q is a member already, at %s", m.self.Name, kvs[0].Value)
		}
	}
	if _, err := cli.Txn(ctx).Then(put).Commit(); err != nil {
		return m.etcdErr(parent, "writing the replica record", err)
	}
	m.p.counters.txn(1)
	return nil
}

// watchFromSnapshot reads every record, starts ep's watch just after the
// revision read, and returns the records as a Reset.
func (m *membership) watchFromSnapshot(parent context.Context, ep *epoch) (brpc.PresenceUpdate, error) {
	p := m.p
	ctx, cancel := m.callCtx(parent)
	resp, err := p.cli.Get(ctx, p.cfg.prefix+"/", clientv3.WithPrefix())
	cancel()
	if err != nil {
		return brpc.PresenceUpdate{}, m.etcdErr(parent, "reading the records", err)
	}
	p.counters.snapshots.Add(1)
	rev := resp.Header.Revision
	if h := p.hooks.beforeWatch; h != nil {
		h(rev)
	}
	// Without a leader a member's view may be stale: the watch ends then,
	// which takes the membership down until etcd has a leader again.
	wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(m.ctx))
	ep.wch = p.cli.Watch(wctx, p.cfg.prefix+"/", clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	ep.watchCancel = wcancel
	u := brpc.PresenceUpdate{Reset: true}
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		if id, ok := strings.CutPrefix(key, p.clientsPrefix); ok {
			u.Clients = append(u.Clients, brpc.ClientRecord{ID: id, Replica: string(kv.Value), Revision: kv.ModRevision})
		} else if name, ok := strings.CutPrefix(key, p.replicasPrefix); ok {
			u.Replicas = append(u.Replicas, brpc.ReplicaRecord{Replica: brpc.Replica{Name: name, Addr: string(kv.Value)}})
		}
	}
	m.records.Store(int64(len(u.Clients)))
	m.track(u.Clients)
	return u, nil
}

// run is the membership's goroutine, from Join to Leave.
func (m *membership) run(ep *epoch, first brpc.PresenceUpdate) {
	defer func() {
		if ep != nil {
			ep.stop()
		}
		m.cancel()
		m.p.forget(m)
		close(m.done)
	}()
	m.updates(first)
	var retryC <-chan time.Time
	backoff := minBackoff
	for {
		select {
		case <-m.leaveCh:
			m.leaveErr = m.leave()
			return
		default:
		}
		if ep == nil {
			t := time.NewTimer(backoff)
			select {
			case <-m.ctx.Done():
				t.Stop()
				return
			case <-m.leaveCh:
				t.Stop()
				continue
			case <-t.C:
			}
			var reset brpc.PresenceUpdate
			var err error
			if ep, reset, err = m.establish(m.work, false); err != nil {
				backoff = min(2*backoff, maxBackoff)
				continue
			}
			backoff = minBackoff
			retryC = nil
			m.updates(reset)
			continue
		}
		kick := m.kick
		if retryC != nil {
			kick = nil // a failed write is tried again on its timer, not on every Claim
		}
		select {
		case <-m.ctx.Done():
			return
		case <-m.leaveCh:
		case _, ok := <-ep.ka:
			if !ok {
				ep = m.down(ep, errors.New("the lease expired or etcd did not renew it within its TTL"))
			}
		case wr, ok := <-ep.wch:
			ep = m.watched(ep, wr, ok)
		case <-retryC:
			retryC = nil
			m.wake()
		case <-kick:
			_, err := m.writeBatch(m.work, ep.lease)
			switch {
			case err == nil:
				if m.pendingLen() > 0 {
					m.wake()
				}
			case errors.Is(err, errSplit):
				m.wake()
			case errors.Is(err, rpctypes.ErrLeaseNotFound):
				ep = m.down(ep, err)
			default:
				retryC = time.After(writeRetry)
			}
		}
	}
}

// down ends the epoch and reports the presence lost.
func (m *membership) down(ep *epoch, cause error) *epoch {
	ep.stop()
	m.p.counters.downs.Add(1)
	m.updates(brpc.PresenceUpdate{Down: status.Errorf(codes.Unavailable, "brpcetcd: presence in etcd lost: %v", cause)})
	return nil
}

// watched handles one watch response: its events become an update; a
// compacted revision becomes a new snapshot and a Reset; a watch that ends
// otherwise takes the membership down.
func (m *membership) watched(ep *epoch, wr clientv3.WatchResponse, ok bool) *epoch {
	if !ok {
		return m.down(ep, errors.New("the watch of the records ended"))
	}
	if wr.CompactRevision != 0 {
		ep.watchCancel()
		reset, err := m.watchFromSnapshot(m.work, ep)
		if err != nil {
			return m.down(ep, err)
		}
		m.updates(reset)
		return ep
	}
	if err := wr.Err(); err != nil {
		return m.down(ep, err)
	}
	if len(wr.Events) == 0 {
		return ep
	}
	m.p.counters.events.Add(uint64(len(wr.Events)))
	p := m.p
	var u brpc.PresenceUpdate
	for _, ev := range wr.Events {
		key := string(ev.Kv.Key)
		put := ev.Type == clientv3.EventTypePut
		if id, ok := strings.CutPrefix(key, p.clientsPrefix); ok {
			rec := brpc.ClientRecord{ID: id, Revision: ev.Kv.ModRevision}
			switch {
			case !put:
				m.records.Add(-1)
			case ev.IsCreate():
				m.records.Add(1)
				rec.Replica = string(ev.Kv.Value)
			default:
				rec.Replica = string(ev.Kv.Value)
			}
			u.Clients = append(u.Clients, rec)
		} else if name, ok := strings.CutPrefix(key, p.replicasPrefix); ok {
			rec := brpc.ReplicaRecord{Replica: brpc.Replica{Name: name}, Gone: !put}
			if put {
				rec.Addr = string(ev.Kv.Value)
			}
			u.Replicas = append(u.Replicas, rec)
		}
	}
	m.track(u.Clients)
	if len(u.Clients) > 0 || len(u.Replicas) > 0 {
		m.updates(u)
	}
	return ep
}

// track follows the records of the clients this replica holds. A record
// naming this replica gives the revision of its claim; one naming another
// replica, newer than that, means the client's newer session is there:
// this replica no longer holds it (its session is closed as replaced,
// without a release), so it is not restored after a lost lease, and it is
// forgotten. A claim queued or in flight is newer than what was seen.
func (m *membership) track(recs []brpc.ClientRecord) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, rec := range recs {
		rev, ok := m.held[rec.ID]
		switch {
		case !ok || rec.Replica == "":
		case rec.Replica == m.self.Name:
			m.held[rec.ID] = max(rev, rec.Revision)
		case m.pending[rec.ID] == opClaim:
		case m.pending[rec.ID] == opRestore:
			delete(m.pending, rec.ID) // its place in the queue is skipped
			delete(m.held, rec.ID)
		case rev != 0 && rec.Revision > rev:
			delete(m.held, rec.ID)
		}
	}
}

// leave revokes the lease: etcd deletes every key under it at once.
func (m *membership) leave() error {
	lease := m.currentLease()
	if lease == 0 {
		return nil
	}
	if err := m.clientClosed(); err != nil {
		return err
	}
	_, err := m.p.cli.Revoke(m.leaveCtx, lease)
	if err == nil || errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return nil
	}
	m.p.counters.errors.Add(1)
	if cerr := m.leaveCtx.Err(); cerr != nil {
		return status.FromContextError(cerr).Err()
	}
	return status.Errorf(codes.Unavailable, "brpcetcd: revoking the lease: %v", err)
}
