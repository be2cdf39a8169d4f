package brpc

import (
	"context"
	"crypto/tls"
	"net"
	"strconv"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/brpc-go/brpc/internal/grpcglue"
	"github.com/brpc-go/brpc/internal/server"
)

// Peer describes one end of a brpc session: on a server, a connected client;
// on a client, the server (with an empty ID).
type Peer struct {
	// ID is the client's ID, unique among the server's connected clients.
	ID string
	// Metadata is what the client sent with WithMetadata. It is the
	// session's own, shared by every Peer that describes the session (a
	// handler that asks for its caller on every call costs no copy): read
	// it, do not modify it; Copy it to keep a changed version.
	Metadata metadata.MD
	// RemoteAddr is the network address the other end's packets come from
	// now: when a QUIC connection migrates (NAT rebinding), it follows. It is
	// not an identity.
	RemoteAddr net.Addr
	// Transport is "quic" or "tcp".
	Transport string
	// ConnectedAt is when the session was admitted.
	ConnectedAt time.Time
}

// Authenticator runs once per connecting client, before any RPC in either
// direction. It returns the client's ID (unique among connected clients) or
// an error, which rejects the connection; the client's Dial returns that
// error as a gRPC status (codes.Unauthenticated or codes.PermissionDenied as
// returned; an error that is not a status is reported as
// codes.Unauthenticated). Without one, the server assigns each connection a
// random ID.
type Authenticator func(ctx context.Context, info AuthInfo) (id string, err error)

// AuthInfo is what an Authenticator knows of a connecting client.
type AuthInfo struct {
	// Metadata is what the client passed with WithMetadata. It becomes the
	// session's Peer.Metadata once the client is admitted: do not modify it.
	Metadata metadata.MD
	// TLS holds the verified peer certificates when mTLS is used.
	TLS tls.ConnectionState
	// RemoteAddr is the client's network address.
	RemoteAddr net.Addr
}

// PeerFromContext reports which brpc peer a call belongs to. It works in
// server handlers (the calling client) and in client handlers of reverse
// calls (the server, with ID ""), and in interceptors and stats handlers of
// the gRPC connections brpc builds. The answer comes from the session the
// call arrived on, never from metadata.
func PeerFromContext(ctx context.Context) (Peer, bool) {
	info := grpcglue.InfoFromContext(ctx)
	if info == nil {
		return Peer{}, false
	}
	return Peer(info.Snapshot()), true
}

// PeerEventType says what happened to a peer.
type PeerEventType int

// Peer event types.
const (
	// PeerConnected: a client was authenticated and admitted.
	PeerConnected PeerEventType = iota + 1
	// PeerDisconnected: an admitted client's session ended.
	PeerDisconnected
	// PeerRejected: a connecting client was refused during its handshake
	// (by the Authenticator, a limit, a bad hello or the handshake timeout).
	// Peer has no ID; Err is the status the client was refused with.
	PeerRejected
)

// String names the event type.
func (t PeerEventType) String() string {
	switch t {
	case PeerConnected:
		return "connected"
	case PeerDisconnected:
		return "disconnected"
	case PeerRejected:
		return "rejected"
	default:
		return "PeerEventType(" + strconv.Itoa(int(t)) + ")"
	}
}

// PeerEvent reports a client connecting or disconnecting (WithPeerEvents).
type PeerEvent struct {
	Type PeerEventType
	Peer Peer
	// Kind classifies a disconnection, for metrics and alerts.
	Kind DisconnectKind
	// Reason says, for PeerDisconnected, why the session ended: the client
	// closed it, it went silent past the keepalive timeout, a newer session
	// took its ID, the server stopped, ...
	Reason string
	// Err is the underlying cause of a disconnection or rejection, when
	// there is one.
	Err error
}

// DisconnectKind classifies why a client's session ended.
type DisconnectKind string

// Disconnect kinds.
const (
	// DisconnectClientClosed: the client closed its connection.
	DisconnectClientClosed DisconnectKind = "client_closed"
	// DisconnectKeepaliveTimeout: the client went silent past the keepalive
	// timeout (its network vanished, or it hung).
	DisconnectKeepaliveTimeout DisconnectKind = "keepalive_timeout"
	// DisconnectReplaced: a newer session took the client's ID.
	DisconnectReplaced DisconnectKind = "replaced"
	// DisconnectServerStopped: the server stopped, or its listener closed.
	DisconnectServerStopped DisconnectKind = "server_stopped"
	// DisconnectConnectionLost: the connection failed in another way.
	DisconnectConnectionLost DisconnectKind = "connection_lost"
)

// peerEventOf converts the server core's event to the public one; the core's
// event types and disconnect kinds have the public ones' values.
func peerEventOf(ev server.Event) PeerEvent {
	return PeerEvent{
		Type:   PeerEventType(ev.Type),
		Peer:   Peer(ev.Peer),
		Kind:   DisconnectKind(ev.Kind),
		Reason: ev.Reason,
		Err:    ev.Err,
	}
}
