package brpcetcd

import clientv3 "go.etcd.io/etcd/client/v3"

// The queue of a membership's operations on client records: what Claim and
// Release ask for, the latest operation for each client replacing one not
// yet written, taken in batches by the membership's goroutine.

// opKind is what a queued operation does to a client record.
type opKind uint8

const (
	// opClaim puts the record with this replica's name and lease: a claim
	// is the newest session of the client, whoever held it before.
	opClaim opKind = iota + 1
	// opRestore puts the record only if there is none. It re-records a
	// claim whose lease was lost: another replica that claimed the client
	// meanwhile holds the newer session and keeps its record.
	opRestore
	// opRelease deletes the record only if it names this replica.
	opRelease
)

type pendingOp struct {
	id   string
	kind opKind
}

// enqueueLocked queues kind for id, in id's place if it has one already.
func (m *membership) enqueueLocked(id string, kind opKind) {
	if _, ok := m.pending[id]; !ok {
		m.queue = append(m.queue, id)
	}
	m.pending[id] = kind
}

func (m *membership) pendingLen() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.pending)
}

// setLease records a new lease. restore queues a restore of every client
// held and not queued already: their records went with the lost lease.
func (m *membership) setLease(lease clientv3.LeaseID, restore bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.lease = lease
	if !restore {
		return
	}
	for id := range m.held {
		if _, ok := m.pending[id]; !ok {
			m.pending[id] = opRestore
			m.queue = append(m.queue, id)
		}
	}
}

// take dequeues the next batch. etcd lets a nested transaction (a restore
// or a release) use only what its parent leaves of --max-txn-ops, so a
// batch holding one carries one operation less.
func (m *membership) take(batch int) []pendingOp {
	m.mu.Lock()
	defer m.mu.Unlock()
	limit := batch
	var ops []pendingOp
	for len(m.queue) > 0 && len(ops) < limit {
		id := m.queue[0]
		kind, ok := m.pending[id]
		if !ok {
			// Dropped while queued, or queued again further on.
			m.queue[0] = ""
			m.queue = m.queue[1:]
			continue
		}
		if kind != opClaim && limit == batch && batch > 1 {
			limit = batch - 1
			if len(ops) >= limit {
				break
			}
		}
		m.queue[0] = ""
		m.queue = m.queue[1:]
		delete(m.pending, id)
		ops = append(ops, pendingOp{id: id, kind: kind})
	}
	return ops
}

// requeue puts the operations of a failed batch back in front, except
// those an operation queued since has replaced.
func (m *membership) requeue(ops []pendingOp) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.left {
		return
	}
	front := make([]string, 0, len(ops)+len(m.queue))
	for _, op := range ops {
		if _, newer := m.pending[op.id]; newer {
			continue
		}
		m.pending[op.id] = op.kind
		front = append(front, op.id)
	}
	m.queue = append(front, m.queue...)
}
