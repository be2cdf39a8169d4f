// Package brpcetcd keeps a brpc cluster's presence, the record of which
// replica holds which client, in etcd. It is a module of its own
// (github.com/brpc-go/brpc/brpcetcd) so that brpc itself never requires
// etcd.
//
// New takes an etcd client, which stays the caller's, and returns a
// brpc.Presence for the server's cluster configuration:
//
//	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"127.0.0.1:2379"}})
//	...
//	presence, err := brpcetcd.New(cli, brpcetcd.WithTTL(10*time.Second))
//
// # Keys
//
// Under the prefix (WithPrefix, default "/brpc"):
//
//	<prefix>/replicas/<name>  = the replica's address (host:port)
//	<prefix>/clients/<id>     = the name of the replica holding the client
//
// Every key of a replica lives under that replica's lease (WithTTL, default
// 10 s), which the etcd client keeps alive. A client record's ModRevision
// is the ClientRecord's Revision: of two claims of one client the later
// write has the higher revision.
//
// # Writes
//
// Claim queues a put of the client's record; Release queues a delete that
// applies only while the record names this replica (a nested transaction
// comparing the value). A membership's goroutine writes what is queued in
// transactions of at most WithBatch operations (default 128, etcd's
// default --max-txn-ops), one at a time, so the claims of a reconnect storm
// share transactions: 3,000 claims take 24. The latest operation queued for
// a client replaces one not yet written. Failed writes are tried again.
//
// # Watch
//
// Join reads every record under the prefix and watches the prefix from
// the revision read; the records become a Reset, each watch response an
// update. A watch whose revision was compacted away starts again from a
// new read and a Reset.
//
// # Failures
//
// The etcd client closes a lease's keepalive when etcd says the lease has
// expired, or when it had no answer for a TTL. The membership then reports
// Down (code Unavailable), keeps the claims it holds in memory, and tries
// until etcd answers: if etcd still has the lease (etcd extends every lease
// when it restarts) the records are intact and the membership keeps it;
// otherwise it takes a new lease and re-puts its replica record and each
// claim, the latter only where no record exists, since another replica that
// claimed the client meanwhile holds the newer session. (A client whose
// newer record names another replica is not held any more: its session
// here is closed as replaced, without a release, and it is never re-put.)
// Operations queued
// while down are written, the records read again, and a Reset (Down nil)
// says the presence is back. Leave revokes the lease, which deletes all of
// the replica's keys in one revision; a replica that stops without leaving
// loses them when the lease expires, within the TTL.
//
// # Load on etcd
//
// A client connecting costs one put and disconnecting one compare-and-
// delete, each a share of a batched transaction (one raft entry per
// transaction); every member's watch receives one event for each. In
// steady state a replica sends only lease keepalives, one every TTL/3. A
// replica leaving or expiring is one lease revoke whose deletes reach every
// watch in one response. A recovery from Down is a lease lookup (and, if
// the lease was lost, a grant and the re-puts, batched), one put, and a
// read of every record.
//
// Presence.Stats and Presence.Collector report transactions, operations,
// etcd errors, Downs, snapshots, watch events, pending operations and the
// number of client records.
package brpcetcd
