// Package session defines brpc's lowest layer: one physical connection between
// a client and a server that opens and accepts bidirectional byte streams in
// both directions. Everything above it (handshake, gRPC, registry) sees only
// the Session interface, so transports can be swapped underneath.
package session

import (
	"context"
	"crypto/tls"
	"net"
	"time"
)

// Settings hold what brpc tunes on a session, whichever the transport.
type Settings struct {
	KeepAlive          time.Duration // how often a quiet connection is probed
	IdleTimeout        time.Duration // silence after which the peer is declared dead
	HandshakeTimeout   time.Duration // TLS handshake limit (0: the transport's default)
	MaxIncomingStreams int64         // concurrent streams the peer may open

	// Admit, on a listener, decides before any cryptographic work whether a
	// connection attempt from this address may proceed.
	Admit func(remote net.Addr) error
}

// Transport names reported in Peer.Transport.
const (
	TransportQUIC = "quic"
	TransportTCP  = "tcp"
)

// CloseCode is the application error code sent to the peer when a session is
// closed on purpose. It tells the other side why. QUIC carries it in its
// CONNECTION_CLOSE frame; TCP carries none, so a close whose code matters is
// announced on the control stream first (a Closing notice), by either
// transport: the closing side calls Announce and writes the notice, the side
// that reads it calls PeerAnnounced, and both then report the same Ending.
type CloseCode uint64

// Close codes. They are part of the wire protocol: add, never renumber.
const (
	// CodeNormal is a plain close by either side (ClientConn.Close, Server.Stop).
	CodeNormal CloseCode = 0
	// CodeShutdown is sent by a server that is stopping.
	CodeShutdown CloseCode = 1
	// CodeReplaced is sent to a client whose ID was taken by a newer session.
	CodeReplaced CloseCode = 2
	// CodeRejected ends a session whose handshake the server refused,
	// without saying with which gRPC code (see CodeRefused).
	CodeRejected CloseCode = 3
	// CodeProtocol ends a session that broke the brpc protocol.
	CodeProtocol CloseCode = 4
	// CodeHandshakeTimeout ends a session that did not finish its handshake in time.
	CodeHandshakeTimeout CloseCode = 5
	// CodeRefused + c, for each gRPC code c from 1 to 16 (0x101 to 0x110),
	// ends a session whose handshake the server refused with code c, so
	// that a client that never read the refusal still learns its code.
	// What a close code means as a gRPC status is the handshake's
	// business (internal/handshake); this layer only carries the number.
	CodeRefused CloseCode = 0x100
)

// Session is one connection that carries many independent byte streams. Each
// stream is a full-duplex net.Conn: closing it ends both directions of that
// stream only.
type Session interface {
	// OpenStream opens a new stream to the peer. It blocks while the peer's
	// stream limit is reached, until ctx is done.
	OpenStream(ctx context.Context) (net.Conn, error)
	// AcceptStream returns the next stream the peer opened.
	AcceptStream(ctx context.Context) (net.Conn, error)
	// Close ends the session and every stream on it, telling the peer why.
	Close(code CloseCode, reason string) error
	// Context is done once the session has ended, for any reason. Its
	// cause says why; Ending says it without transport errors.
	Context() context.Context
	// Closed is closed as soon as the connection has ended, whether or not
	// anyone is accepting streams.
	Closed() <-chan struct{}
	// Ending reports how the session ended, once its Context is done; ok
	// is false while the session is live.
	Ending() (e Ending, ok bool)
	// Announce records that this side ends the session with code and
	// reason, before it tells the peer so on the control stream and closes
	// the session: from then on Ending reports this close, whatever ends
	// the connection meanwhile. It does nothing on a session that is over.
	Announce(code CloseCode, reason string)
	// PeerAnnounced closes the session because the peer said on the
	// control stream that it ends it with code and reason: Ending then
	// reports the peer's close with that code, on TCP too.
	PeerAnnounced(code CloseCode, reason string) error
	// LocalAddr and RemoteAddr are the network addresses of the two ends.
	LocalAddr() net.Addr
	RemoteAddr() net.Addr
	// TLS is the state of the session's completed TLS handshake.
	TLS() tls.ConnectionState
	// Transport names the transport: TransportQUIC or TransportTCP.
	Transport() string
	// Admitted tells a listener's session that the peer passed the
	// handshake; the server calls it just before it writes the welcome.
	// Until then the peer may open one stream, the control stream, and a
	// second one ends the session with CodeProtocol, so that an
	// unauthenticated peer cannot park data on streams nobody reads. From
	// then on the peer may open streams, and the control stream carries
	// nothing more from it (in protocol v1 the client sends nothing after
	// its hello): QUIC drops what arrives on it, TCP ends the session with
	// CodeProtocol. The control stream still carries the server's notices.
	// Dialed sessions ignore it.
	Admitted()
}

// StreamServer is a Session that can hand the peer's streams to a function
// instead of through AcceptStream, with a goroutine only while streams the
// peer opened wait to be handed over: a session whose peer opens a stream
// once in a long while (a gRPC connection after each idle release) costs
// no goroutine waiting for it in between. A listener's TCP session can;
// QUIC offers no way to learn of a new stream but to wait for it.
type StreamServer interface {
	// ServeStreams reports false when the session cannot. Otherwise it
	// calls handle with each stream the peer opens from now on, one at a
	// time, and done once, after the session's Context is done and the
	// last handle returned. AcceptStream must not be called meanwhile; the
	// handshake takes the control stream with it before.
	ServeStreams(handle func(net.Conn), done func()) bool
}
