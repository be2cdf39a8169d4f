package server

import (
	"crypto/tls"
	"net"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/brpc-go/brpc/internal/grpcglue"
)

// AuthInfo is what the authenticator knows of a connecting client. Its
// fields are those of the public brpc.AuthInfo, which converts from it.
type AuthInfo struct {
	Metadata   metadata.MD
	TLS        tls.ConnectionState
	RemoteAddr net.Addr
}

// EventType says what happened to a peer. Its values are those of the
// public brpc.PeerEventType.
type EventType int

// Event types.
const (
	Connected EventType = iota + 1
	Disconnected
	Rejected
)

// Event reports a client admitted, disconnected or refused.
type Event struct {
	Type   EventType
	Peer   grpcglue.Peer
	Kind   DisconnectKind // for Disconnected
	Reason string
	Err    error
	Time   time.Time // when the server reported it
}

// DisconnectKind classifies why a client's session ended. Its values are
// those of the public brpc.DisconnectKind.
type DisconnectKind string

// Disconnect kinds.
const (
	ClientClosed     DisconnectKind = "client_closed"
	KeepaliveTimeout DisconnectKind = "keepalive_timeout"
	Replaced         DisconnectKind = "replaced"
	ServerStopped    DisconnectKind = "server_stopped"
	ConnectionLost   DisconnectKind = "connection_lost"
)
