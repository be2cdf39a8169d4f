package grpcglue

import (
	"context"
	"net"

	"google.golang.org/grpc/credentials"
)

// Credentials are the transport credentials of the gRPC connections brpc
// builds on a session. The session is already authenticated and encrypted,
// so the handshake only reports it: the AuthInfo is a credentials.TLSInfo
// with the session's TLS state, which TLS-aware gRPC code (per-RPC
// credentials, authz) understands.
type Credentials struct{}

// ClientHandshake reports the session of c.
func (Credentials) ClientHandshake(_ context.Context, _ string, c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c, authInfoOf(c), nil
}

// ServerHandshake reports the session of c.
func (Credentials) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c, authInfoOf(c), nil
}

// Info describes the session's security protocol.
func (Credentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls", SecurityVersion: "1.3"}
}

// Clone returns c: Credentials hold no state.
func (c Credentials) Clone() credentials.TransportCredentials { return c }

// OverrideServerName does nothing: the session's TLS handshake is over.
func (Credentials) OverrideServerName(string) error { return nil }

func authInfoOf(c net.Conn) credentials.AuthInfo {
	if sc, ok := c.(*streamConn); ok {
		return sc.remote.Info.TLS
	}
	return credentials.TLSInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}
}
