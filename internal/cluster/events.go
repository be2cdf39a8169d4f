package cluster

// EventKind says what a cluster Event reports.
type EventKind int

// Event kinds; the root's ClusterEventKind has the same values.
const (
	// EventForwarded: a call forwarded to another replica ended.
	EventForwarded EventKind = iota + 1
	// EventStale: a forwarded call found its client gone from the replica
	// the cache named.
	EventStale
	// EventClaim and EventRelease: writes to the presence.
	EventClaim
	EventRelease
	// EventPresenceDown: the presence became unreachable.
	EventPresenceDown
	// EventPresenceUp: the presence is back after being down.
	EventPresenceUp
	// EventPresenceError: joining or leaving the presence failed.
	EventPresenceError
)

// Event reports something the cluster did.
type Event struct {
	Kind    EventKind
	Replica string // the replica a call was forwarded to
	Method  string
	Code    string // the forwarded call's gRPC code
	Err     error
}
