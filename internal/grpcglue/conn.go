package grpcglue

import (
	"context"
	"crypto/tls"
	"net"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// Peer describes the other end of a session. Its fields are those of the
// public brpc.Peer, which converts from it.
type Peer struct {
	ID          string
	Metadata    metadata.MD
	RemoteAddr  net.Addr
	Transport   string
	ConnectedAt time.Time
}

// SessionInfo is what a session knows of its peer, fixed at the handshake.
type SessionInfo struct {
	Peer Peer
	TLS  credentials.TLSInfo
	// Owner is the server's record of the session (nil on a client); the
	// server finds it again from a call's context.
	Owner any
}

// NewSessionInfo describes a session whose TLS handshake ended in state.
func NewSessionInfo(p Peer, state tls.ConnectionState, owner any) *SessionInfo {
	return &SessionInfo{
		Peer:  p,
		TLS:   tlsInfoOf(state),
		Owner: owner,
	}
}

// Snapshot returns the peer. Its metadata is the session's own, shared
// rather than copied: a handler that asks for its caller on every call
// costs no copy of what may be kilobytes of metadata.
func (i *SessionInfo) Snapshot() Peer {
	return i.Peer
}

// SessionAddr is the net.Addr that streams of a session report for both of
// their ends. grpc-go copies a connection's addresses into the peer of every
// call, so the call's context carries the session it arrived on: that is how
// identity is bound to the connection rather than to anything the peer sends.
type SessionAddr struct {
	net.Addr // the real network address
	Info     *SessionInfo
}

// InfoFromContext finds the session a gRPC call runs on, or nil when the
// call did not arrive on (or leave by) a brpc session.
func InfoFromContext(ctx context.Context) *SessionInfo {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	if sa, ok := p.Addr.(*SessionAddr); ok {
		return sa.Info
	}
	if sa, ok := p.LocalAddr.(*SessionAddr); ok {
		return sa.Info
	}
	return nil
}

// streamConn is a session stream as handed to grpc-go.
type streamConn struct {
	net.Conn
	local, remote *SessionAddr
}

func (c *streamConn) LocalAddr() net.Addr  { return c.local }
func (c *streamConn) RemoteAddr() net.Addr { return c.remote }

// NewStreamConn wraps a stream of the session described by info for
// grpc-go: both its addresses point at info.
func NewStreamConn(c net.Conn, info *SessionInfo) net.Conn {
	return &streamConn{
		Conn:   c,
		local:  &SessionAddr{Addr: c.LocalAddr(), Info: info},
		remote: &SessionAddr{Addr: c.RemoteAddr(), Info: info},
	}
}
