package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc/internal/certs"
	"github.com/brpc-go/brpc/internal/server"
)

// newTestCluster is a replica "self" whose server core has no clients and
// whose presence is fed by the test through apply.
func newTestCluster(t *testing.T) *Cluster {
	t.Helper()
	return newJoiningCluster(t, func(context.Context, Replica, func(Update)) (Membership, error) { return nil, errors.New("unused") })
}

// newJoiningCluster is newTestCluster with join as its presence.
func newJoiningCluster(t *testing.T, join JoinFunc) *Cluster {
	t.Helper()
	ca, err := certs.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Replica("self")
	if err != nil {
		t.Fatal(err)
	}
	core := server.New(grpc.NewServer(), server.Config{})
	c, err := New(core, Config{
		Self:         Replica{Name: "self", Addr: "127.0.0.1:1"},
		Join:         join,
		TLS:          &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: ca.Pool},
		TargetHeader: "brpc-target",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close(false)
		core.Stop()
	})
	return c
}

func wantConn(t *testing.T, c *Cluster, id string, want codes.Code) {
	t.Helper()
	_, err := c.Conn(id)
	if got := status.Code(err); got != want {
		t.Fatalf("Conn(%q): %v, want %v", id, err, want)
	}
}

func TestRoutingFollowsTheCache(t *testing.T) {
	c := newTestCluster(t)
	c.apply(Update{Reset: true,
		Clients:  []ClientRecord{{ID: "a", Replica: "r1", Revision: 5}, {ID: "mine", Replica: "self", Revision: 6}, {ID: "orphan", Replica: "r9", Revision: 7}},
		Replicas: []ReplicaRecord{{Replica: Replica{"r1", "127.0.0.1:2"}}, {Replica: Replica{"self", "127.0.0.1:1"}}},
	})
	wantConn(t, c, "a", codes.OK)
	// A record of this replica's own without a session here (its release
	// is on the way) and one of a replica the cache does not know are not
	// routed anywhere.
	wantConn(t, c, "mine", codes.NotFound)
	wantConn(t, c, "orphan", codes.NotFound)
	wantConn(t, c, "nobody", codes.NotFound)
	c.mu.Lock()
	rm := c.remotes["r1"]
	c.mu.Unlock()
	if rm == nil || rm.addr != "127.0.0.1:2" {
		t.Fatalf("connection to r1: %+v", rm)
	}

	c.apply(Update{Down: errors.New("gone")})
	wantConn(t, c, "a", codes.Unavailable)
	c.apply(Update{Reset: true,
		Clients:  []ClientRecord{{ID: "a", Replica: "r1", Revision: 5}},
		Replicas: []ReplicaRecord{{Replica: Replica{"r1", "127.0.0.1:3"}}},
	})
	wantConn(t, c, "a", codes.OK)
	c.mu.Lock()
	moved := c.remotes["r1"]
	c.mu.Unlock()
	if !rm.retired || moved == rm || moved.addr != "127.0.0.1:3" {
		t.Fatalf("r1 moved to another address: old connection retired %v, new one %+v", rm.retired, moved)
	}

	c.apply(Update{Clients: []ClientRecord{{ID: "a", Revision: 8}}})
	wantConn(t, c, "a", codes.NotFound)
	c.apply(Update{Clients: []ClientRecord{{ID: "a", Replica: "r1", Revision: 9}}, Replicas: []ReplicaRecord{{Replica: Replica{Name: "r1"}, Gone: true}}})
	wantConn(t, c, "a", codes.NotFound)
	if !moved.retired {
		t.Fatal("the connection to a replica that left is still in use")
	}
}

func TestAwaitChange(t *testing.T) {
	c := newTestCluster(t)
	rec := ClientRecord{ID: "a", Replica: "r1", Revision: 5}
	c.apply(Update{Reset: true, Clients: []ClientRecord{rec}, Replicas: []ReplicaRecord{{Replica: Replica{"r1", "127.0.0.1:2"}}}})
	// Nothing changes: the wait gives up within its bound.
	if c.awaitChange(context.Background(), "a", rec) {
		t.Fatal("awaitChange reported a change that did not happen")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if c.awaitChange(ctx, "a", rec) {
		t.Fatal("awaitChange with a canceled context reported a change")
	}
	done := make(chan bool)
	go func() { done <- c.awaitChange(context.Background(), "a", rec) }()
	c.apply(Update{Clients: []ClientRecord{{ID: "b", Replica: "r1", Revision: 6}}}) // another ID
	c.apply(Update{Clients: []ClientRecord{{ID: "a", Replica: "r2", Revision: 7}}})
	if !<-done {
		t.Fatal("awaitChange missed the record's change")
	}
}

// TestJoinWithoutMembership checks that a presence whose Join returns
// neither a membership nor an error fails the Join instead of leaving the
// replica unrecorded, or panicking on the claims waiting for it.
func TestJoinWithoutMembership(t *testing.T) {
	c := newJoiningCluster(t, func(context.Context, Replica, func(Update)) (Membership, error) { return nil, nil })
	c.mu.Lock()
	c.claims["waiting"] = &claim{}
	c.mu.Unlock()
	if err := c.Join(); err == nil {
		t.Fatal("Join with a presence that returned no membership succeeded")
	}
}
