package grpcglue

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/url"

	"google.golang.org/grpc/credentials"
)

// Credentials are the transport credentials of the gRPC connections on a
// session: those brpc builds and, through brpc.TransportCredentials, the
// application's own *grpc.Servers. The session is already authenticated and
// encrypted, so the handshake only reports it: the AuthInfo is a
// credentials.TLSInfo with the session's TLS state, which TLS-aware gRPC code
// (per-RPC credentials, authz) understands. A connection that is not a
// session's stream is refused: nothing about it is secure.
type Credentials struct{}

// errNotSessionStream refuses a connection that did not come from a brpc
// session, such as one accepted from a plain net.Listener.
var errNotSessionStream = errors.New("brpc: transport credentials used on a connection that is not a brpc stream")

// ClientHandshake reports the session of c, or refuses c if it is not a
// session's stream.
func (Credentials) ClientHandshake(_ context.Context, _ string, c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return handshakeStream(c)
}

// ServerHandshake reports the session of c, or refuses c if it is not a
// session's stream.
func (Credentials) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return handshakeStream(c)
}

// Info describes the session's security protocol.
func (Credentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls", SecurityVersion: "1.3"}
}

// Clone returns c: Credentials hold no state.
func (c Credentials) Clone() credentials.TransportCredentials { return c }

// OverrideServerName does nothing: the session's TLS handshake is over.
func (Credentials) OverrideServerName(string) error { return nil }

func handshakeStream(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	sc, ok := c.(*streamConn)
	if !ok {
		return nil, nil, errNotSessionStream
	}
	return c, sc.remote.Info.auth(), nil
}

// tlsInfoOf is what the credentials report of a session whose TLS handshake
// ended in st, filled as grpc-go's own TLS credentials fill it.
func tlsInfoOf(st tls.ConnectionState) credentials.TLSInfo {
	return credentials.TLSInfo{
		State:          st,
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		SPIFFEID:       spiffeIDOf(st),
	}
}

// spiffeIDOf returns the SPIFFE ID the peer's certificate names, or nil: a
// SPIFFE certificate has exactly one URI SAN, spiffe://trust-domain/path, of
// at most 2048 bytes with a trust domain of at most 255.
func spiffeIDOf(st tls.ConnectionState) *url.URL {
	if len(st.PeerCertificates) == 0 || len(st.PeerCertificates[0].URIs) != 1 {
		return nil
	}
	u := st.PeerCertificates[0].URIs[0]
	if u.Scheme != "spiffe" || u.Opaque != "" || u.User != nil || u.Host == "" || u.Path == "" ||
		len(u.Host) > 255 || len(u.String()) > 2048 {
		return nil
	}
	return u
}

// TLSInfo is what grpc-go's TLS credentials report of a connection whose
// TLS handshake ended in st, for connections brpc handshakes itself.
func TLSInfo(st tls.ConnectionState) credentials.TLSInfo { return tlsInfoOf(st) }
