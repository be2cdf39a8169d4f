package brpc

import "context"

// Presence is the record, shared by the replicas of a cluster, of which
// replica holds which client. A server without WithCluster has none; the
// in-memory presence (NewMemoryPresence) joins servers in one process;
// github.com/brpc-go/brpc/brpcetcd keeps it in etcd.
type Presence interface {
	// Join makes self a member of the cluster until the Membership is
	// closed or lost. From then on updates goes every change to the
	// cluster's records, this replica's own included, starting with a
	// Reset holding all of them. updates is called from one goroutine at a
	// time, in order, and must not block for long. ctx bounds the joining
	// only: the membership outlives it (brpc passes a context that ends
	// when the server has stopped, after Leave).
	Join(ctx context.Context, self Replica, updates func(PresenceUpdate)) (Membership, error)
}

// Replica is a member of a cluster.
type Replica struct {
	Name string // unique in the cluster
	Addr string // host:port of its replica endpoint (Server.ServeReplicas)
}

// Membership is one replica's part in the presence.
type Membership interface {
	// Claim records that this replica holds the client id now. It does
	// not wait: claims are written in batches, in order, and retried
	// until written or released; the update that reports it carries the
	// claim's revision.
	Claim(id string)
	// Release removes the record of id if it is still this replica's.
	Release(id string)
	// Leave removes all of this replica's records (its own included) and
	// ends the membership; it waits for that until ctx is done.
	Leave(ctx context.Context) error
}

// PresenceUpdate is a change in the cluster's records.
type PresenceUpdate struct {
	// Reset says Clients and Replicas are the whole of the records:
	// forget what is not in them.
	Reset    bool
	Clients  []ClientRecord
	Replicas []ReplicaRecord
	// Down, when not nil, says the presence cannot be reached now
	// (records may be stale); the next update with Down nil and Reset
	// set says it is back.
	Down error
}

// ClientRecord says which replica holds a client.
type ClientRecord struct {
	ID       string
	Replica  string // "" when the record was removed
	Revision int64  // orders claims of one ID: the higher is the newer session
}

// ReplicaRecord is a replica's own record.
type ReplicaRecord struct {
	Replica
	Gone bool // the replica left or its membership expired
}
