package brpcetcd

import "sync/atomic"

// Stats are a Presence's counters (totals since New) and gauges (now),
// for metrics.
type Stats struct {
	// Txns is the number of write transactions etcd committed.
	Txns uint64
	// Ops is the number of record operations in them: client claims,
	// re-claims after a lost lease and releases, and replica records.
	Ops uint64
	// MaxTxnOps is the most operations one transaction carried.
	MaxTxnOps uint64
	// Errors is the number of etcd calls that failed.
	Errors uint64
	// Downs is the number of times a membership lost etcd and reported
	// Down.
	Downs uint64
	// Snapshots is the number of full reads of the records: one per Join,
	// per recovery from Down and per compacted watch.
	Snapshots uint64
	// Events is the number of watch events received.
	Events uint64

	// Pending is the number of client operations waiting to be written.
	Pending int
	// Records is the number of client records the memberships know of.
	Records int
}

type counters struct {
	txns, ops, maxTxnOps, errors, downs, snapshots, events atomic.Uint64
}

func (c *counters) load() Stats {
	return Stats{
		Txns:      c.txns.Load(),
		Ops:       c.ops.Load(),
		MaxTxnOps: c.maxTxnOps.Load(),
		Errors:    c.errors.Load(),
		Downs:     c.downs.Load(),
		Snapshots: c.snapshots.Load(),
		Events:    c.events.Load(),
	}
}

// txn counts a committed transaction of n operations.
func (c *counters) txn(n int) {
	c.txns.Add(1)
	c.ops.Add(uint64(n))
	for {
		cur := c.maxTxnOps.Load()
		if uint64(n) <= cur || c.maxTxnOps.CompareAndSwap(cur, uint64(n)) {
			return
		}
	}
}
