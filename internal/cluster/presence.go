// Package cluster joins brpc servers into one fleet: a replica records in
// a shared presence which clients it holds, keeps a cache of everyone's
// records fed by the presence's updates, and forwards calls for clients
// held by other replicas to their replica endpoint, where the gateway
// relay takes them to the client.
//
// Its types mirror the root package's Presence types; the root converts at
// the boundary, as it does for the server core.
package cluster

import "context"

// Replica is a member of a cluster: its unique name and the host:port of
// its replica endpoint.
type Replica struct {
	Name string
	Addr string
}

// ClientRecord says which replica holds a client; Replica is "" when the
// record was removed. Revision orders the claims of one ID.
type ClientRecord struct {
	ID       string
	Replica  string
	Revision int64
}

// ReplicaRecord is a replica's own record; Gone says it left or expired.
type ReplicaRecord struct {
	Replica
	Gone bool
}

// Update is a change in the cluster's records (brpc.PresenceUpdate).
type Update struct {
	Reset    bool
	Clients  []ClientRecord
	Replicas []ReplicaRecord
	Down     error
}

// Membership is one replica's part in the presence (brpc.Membership).
type Membership interface {
	Claim(id string)
	Release(id string)
	Leave(ctx context.Context) error
}

// JoinFunc makes self a member and sends it every update (brpc.Presence).
type JoinFunc func(ctx context.Context, self Replica, updates func(Update)) (Membership, error)
