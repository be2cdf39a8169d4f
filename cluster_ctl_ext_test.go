package brpc_test

import (
	"context"
	"sort"
	"sync"

	"github.com/brpc-go/brpc"
)

// ctlPresence wraps a presence so that a test can hold back one replica's
// updates (its cache then goes stale), cut it off (Down) and bring it back
// (a Reset with the records as they are then), and see when it left.
type ctlPresence struct {
	inner   brpc.Presence
	onLeave func(replica string)
	// crashed replicas' Leave does nothing: their records stay, as those
	// of a replica killed before its lease expires.
	crashed map[string]bool

	mu      sync.Mutex
	members map[string]*ctlMember
}

func newCtlPresence(onLeave func(string)) *ctlPresence {
	return &ctlPresence{inner: brpc.NewMemoryPresence(), onLeave: onLeave, members: map[string]*ctlMember{}}
}

func (p *ctlPresence) Join(ctx context.Context, self brpc.Replica, updates func(brpc.PresenceUpdate)) (brpc.Membership, error) {
	m := &ctlMember{fn: updates, clients: map[string]brpc.ClientRecord{}, replicas: map[string]brpc.Replica{}}
	p.mu.Lock()
	p.members[self.Name] = m
	p.mu.Unlock()
	mb, err := p.inner.Join(ctx, self, m.update)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	m.membership = mb
	m.mu.Unlock()
	return ctlMembership{Membership: mb, name: self.Name, p: p}, nil
}

func (p *ctlPresence) member(name string) *ctlMember {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.members[name]
}

type ctlMembership struct {
	brpc.Membership
	name string
	p    *ctlPresence
}

// crash makes the replica's Leave do nothing; the records are removed
// when the test ends.
func (p *ctlPresence) crash(t interface{ Cleanup(func()) }, name string) {
	p.mu.Lock()
	if p.crashed == nil {
		p.crashed = map[string]bool{}
	}
	p.crashed[name] = true
	p.mu.Unlock()
	t.Cleanup(func() {
		m := p.member(name)
		if m == nil {
			return
		}
		m.mu.Lock()
		mb := m.membership
		m.mu.Unlock()
		if mb != nil {
			mb.Leave(context.Background())
		}
	})
}

func (m ctlMembership) Leave(ctx context.Context) error {
	m.p.mu.Lock()
	crashed := m.p.crashed[m.name]
	m.p.mu.Unlock()
	if crashed {
		return nil
	}
	err := m.Membership.Leave(ctx)
	if m.p.onLeave != nil {
		m.p.onLeave(m.name)
	}
	return err
}

// ctlMember stands between the presence and one replica's callback; its
// mutex also keeps the callback's calls one at a time.
type ctlMember struct {
	membership brpc.Membership // the inner presence's
	mu         sync.Mutex
	fn         func(brpc.PresenceUpdate)
	held       []brpc.PresenceUpdate
	holding    bool
	down       bool
	clients    map[string]brpc.ClientRecord
	replicas   map[string]brpc.Replica
}

func (m *ctlMember) update(u brpc.PresenceUpdate) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if u.Reset {
		clear(m.clients)
		clear(m.replicas)
	}
	for _, c := range u.Clients {
		if c.Replica == "" {
			delete(m.clients, c.ID)
		} else {
			m.clients[c.ID] = c
		}
	}
	for _, r := range u.Replicas {
		if r.Gone {
			delete(m.replicas, r.Name)
		} else {
			m.replicas[r.Name] = r.Replica
		}
	}
	switch {
	case m.down:
	case m.holding:
		m.held = append(m.held, u)
	default:
		m.fn(u)
	}
}

// hold keeps the replica's updates back until release.
func (m *ctlMember) hold() {
	m.mu.Lock()
	m.holding = true
	m.mu.Unlock()
}

func (m *ctlMember) release() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.holding = false
	for _, u := range m.held {
		m.fn(u)
	}
	m.held = nil
}

// cut tells the replica that the presence is unreachable.
func (m *ctlMember) cut(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.down = true
	m.fn(brpc.PresenceUpdate{Down: err})
}

// restore tells it the presence is back, with every record as it is now.
func (m *ctlMember) restore() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.down = false
	u := brpc.PresenceUpdate{Reset: true}
	for _, c := range m.clients {
		u.Clients = append(u.Clients, c)
	}
	sort.Slice(u.Clients, func(i, j int) bool { return u.Clients[i].ID < u.Clients[j].ID })
	for _, r := range m.replicas {
		u.Replicas = append(u.Replicas, brpc.ReplicaRecord{Replica: r})
	}
	m.fn(u)
}
