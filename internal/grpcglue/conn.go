package grpcglue

import (
	"context"
	"crypto/tls"
	"net"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/mem"
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

// SessionConn is what a SessionInfo reads of its session's connection: the
// addresses, which a QUIC connection's migration changes, and the state of
// the TLS handshake. session.Session has these methods.
type SessionConn interface {
	LocalAddr() net.Addr
	RemoteAddr() net.Addr
	TLS() tls.ConnectionState
}

// SessionInfo is what a session knows of its peer. All but the addresses is
// fixed at the handshake; the addresses are read from the connection, which
// follows a QUIC connection's migration.
type SessionInfo struct {
	// Peer describes the peer as admitted; its RemoteAddr is not kept, since
	// Snapshot reads it from the connection.
	Peer Peer
	// Owner is the server's record of the session (nil on a client); the
	// server finds it again from a call's context.
	Owner any

	conn SessionConn
	// authInfo is the session's credentials.TLSInfo, boxed once as the
	// interface value every gRPC connection of the session reports: kept
	// only boxed, the large struct is not held twice, and no connection
	// copies it.
	authInfo credentials.AuthInfo
}

// auth returns the session's credentials.TLSInfo as the credentials'
// AuthInfo.
func (i *SessionInfo) auth() credentials.AuthInfo { return i.authInfo }

// NewSessionInfo describes the session on conn, whose peer is p.
func NewSessionInfo(p Peer, conn SessionConn, owner any) *SessionInfo {
	p.RemoteAddr = nil
	return &SessionInfo{
		Peer:     p,
		Owner:    owner,
		conn:     conn,
		authInfo: tlsInfoOf(conn.TLS()),
	}
}

// Snapshot returns the peer as it is now, with the address its packets come
// from now. Its metadata is the session's own, shared rather than copied: a
// handler that asks for its caller on every call costs no copy of what may
// be kilobytes of metadata.
func (i *SessionInfo) Snapshot() Peer {
	p := i.Peer
	p.RemoteAddr = i.conn.RemoteAddr()
	return p
}

// SessionAddr is the net.Addr that streams of a session report for both of
// their ends. grpc-go copies a connection's addresses into the peer of every
// call, so the call's context carries the session it arrived on: that is how
// identity is bound to the connection rather than to anything the peer sends.
// It reads as the session's network address now (host:port), which a stream
// of its own cannot tell (yamux's say "yamux:remote") and which changes when
// a QUIC connection migrates.
type SessionAddr struct {
	Info  *SessionInfo
	Local bool // the session's local end rather than the peer's
}

func (a *SessionAddr) addr() net.Addr {
	if a.Local {
		return a.Info.conn.LocalAddr()
	}
	return a.Info.conn.RemoteAddr()
}

// Network is the session's network: "udp" for QUIC, "tcp" for TCP.
func (a *SessionAddr) Network() string { return a.addr().Network() }

// String is the session's address at this end, host:port.
func (a *SessionAddr) String() string { return a.addr().String() }

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
	ready         readyWaiter // the stream's own, or nil
}

// readyWaiter is a stream that can wait for data without reading it, as both
// session streams can.
type readyWaiter interface {
	// WaitReadable blocks until a Read would return at once, and returns
	// the error that Read would, or nil when there is data.
	WaitReadable() error
}

// ReadOnReady waits until the stream holds data, and only then takes a
// buffer of bufSize bytes from pool and reads into it. grpc-go's HTTP/2
// framers read through it (it implements grpc-go's ready reader) instead of
// keeping a bufio.Reader of their own per transport: an idle transport,
// waiting for its peer's next frame, holds no read buffer. A stream that
// cannot wait without reading is read into the pool's buffer at once.
func (c *streamConn) ReadOnReady(bufSize int, pool mem.BufferPool) (*[]byte, int, error) {
	if c.ready != nil {
		if err := c.ready.WaitReadable(); err != nil {
			return nil, 0, err
		}
	}
	buf := pool.Get(bufSize)
	n, err := c.Conn.Read(*buf)
	if n == 0 {
		pool.Put(buf)
		return nil, 0, err
	}
	return buf, n, err
}

func (c *streamConn) LocalAddr() net.Addr  { return c.local }
func (c *streamConn) RemoteAddr() net.Addr { return c.remote }

// NewStreamConn wraps a stream of the session described by info for
// grpc-go: both its addresses point at info.
func NewStreamConn(c net.Conn, info *SessionInfo) net.Conn {
	ready, _ := c.(readyWaiter)
	return &streamConn{
		Conn:   c,
		local:  &SessionAddr{Info: info, Local: true},
		remote: &SessionAddr{Info: info},
		ready:  ready,
	}
}
