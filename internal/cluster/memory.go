package cluster

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
)

// Memory is a presence kept in one process: the memberships of one Memory
// see each other's records, so several servers in one process form a
// cluster. A counter under the mutex gives every write its revision, so
// claims of one ID are ordered as they would be in etcd.
type Memory struct {
	mu       sync.Mutex
	rev      int64
	clients  map[string]ClientRecord
	replicas map[string]Replica
	members  map[string]*memMember
}

// NewMemory returns an empty in-memory presence.
func NewMemory() *Memory {
	return &Memory{
		clients:  make(map[string]ClientRecord),
		replicas: make(map[string]Replica),
		members:  make(map[string]*memMember),
	}
}

// errNameTaken is what Join reports for a name that is a member already.
var errNameTaken = errors.New("brpc: a replica of that name is a member already")

// Join makes self a member. Its first update is a Reset with every record,
// its own replica record included; every member then gets each change.
func (m *Memory) Join(ctx context.Context, self Replica, updates func(Update)) (Membership, error) {
	if self.Name == "" {
		return nil, errors.New("brpc: a replica needs a name")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.members[self.Name]; ok {
		return nil, fmt.Errorf("%w: %q", errNameTaken, self.Name)
	}
	mm := &memMember{m: m, self: self, out: newQueue(updates)}
	m.members[self.Name] = mm
	m.rev++
	m.replicas[self.Name] = self
	mm.out.push(m.snapshotLocked())
	m.broadcastLocked(Update{Replicas: []ReplicaRecord{{Replica: self}}}, mm)
	return mm, nil
}

// snapshotLocked is a Reset holding every record, ordered for readability.
func (m *Memory) snapshotLocked() Update {
	u := Update{Reset: true}
	for _, c := range m.clients {
		u.Clients = append(u.Clients, c)
	}
	sort.Slice(u.Clients, func(i, j int) bool { return u.Clients[i].ID < u.Clients[j].ID })
	for _, r := range m.replicas {
		u.Replicas = append(u.Replicas, ReplicaRecord{Replica: r})
	}
	sort.Slice(u.Replicas, func(i, j int) bool { return u.Replicas[i].Name < u.Replicas[j].Name })
	return u
}

// broadcastLocked queues u for every member but skip.
func (m *Memory) broadcastLocked(u Update, skip *memMember) {
	for _, mm := range m.members {
		if mm != skip {
			mm.out.push(u)
		}
	}
}

// memMember is one replica's membership of a Memory.
type memMember struct {
	m    *Memory
	self Replica
	out  *queue
	left bool // under m.mu
}

// Claim records the client as this replica's at once, with the next
// revision, and reports it to every member.
func (mm *memMember) Claim(id string) {
	m := mm.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if mm.left {
		return
	}
	m.rev++
	rec := ClientRecord{ID: id, Replica: mm.self.Name, Revision: m.rev}
	m.clients[id] = rec
	m.broadcastLocked(Update{Clients: []ClientRecord{rec}}, nil)
}

// Release removes the client's record if it is still this replica's.
func (mm *memMember) Release(id string) {
	m := mm.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if mm.left {
		return
	}
	if rec, ok := m.clients[id]; !ok || rec.Replica != mm.self.Name {
		return
	}
	delete(m.clients, id)
	m.rev++
	m.broadcastLocked(Update{Clients: []ClientRecord{{ID: id, Revision: m.rev}}}, nil)
}

// Leave removes this replica's records and ends the membership: the other
// members are told, and this one gets no further update once Leave
// returns.
func (mm *memMember) Leave(ctx context.Context) error {
	m := mm.m
	m.mu.Lock()
	if mm.left {
		m.mu.Unlock()
		return nil
	}
	mm.left = true
	delete(m.members, mm.self.Name)
	var u Update
	for id, rec := range m.clients {
		if rec.Replica == mm.self.Name {
			delete(m.clients, id)
			m.rev++
			u.Clients = append(u.Clients, ClientRecord{ID: id, Revision: m.rev})
		}
	}
	sort.Slice(u.Clients, func(i, j int) bool { return u.Clients[i].ID < u.Clients[j].ID })
	delete(m.replicas, mm.self.Name)
	m.rev++
	u.Replicas = []ReplicaRecord{{Replica: mm.self, Gone: true}}
	m.broadcastLocked(u, nil)
	m.mu.Unlock()
	return mm.out.close(ctx)
}

// queue delivers updates to one member's callback from one goroutine, in
// order, so that a slow callback never holds the Memory's mutex.
type queue struct {
	fn      func(Update)
	mu      sync.Mutex
	pending []Update
	wake    chan struct{}
	stop    chan struct{}
	done    chan struct{}
}

func newQueue(fn func(Update)) *queue {
	q := &queue{fn: fn, wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go q.run()
	return q
}

func (q *queue) push(u Update) {
	q.mu.Lock()
	q.pending = append(q.pending, u)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *queue) run() {
	defer close(q.done)
	for {
		select {
		case <-q.stop:
			return
		case <-q.wake:
		}
		for {
			q.mu.Lock()
			if len(q.pending) == 0 {
				q.mu.Unlock()
				break
			}
			u := q.pending[0]
			q.pending[0] = Update{}
			q.pending = q.pending[1:]
			q.mu.Unlock()
			select {
			case <-q.stop:
				return
			default:
			}
			q.fn(u)
		}
	}
}

// close stops delivery and waits, until ctx is done, for an update being
// delivered to return.
func (q *queue) close(ctx context.Context) error {
	close(q.stop)
	select {
	case <-q.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
