package brpc

import (
	"google.golang.org/grpc/credentials"

	"github.com/brpc-go/brpc/internal/grpcglue"
)

// TransportCredentials returns the credentials to build the *grpc.Server given
// to NewServer (and the one given to WithServer) with:
// grpc.Creds(brpc.TransportCredentials()). The session is already
// authenticated and encrypted; these credentials only report it, so that
// handlers and interceptors see the session's TLS state as peer.AuthInfo: a
// credentials.TLSInfo (the verified peer certificate chain under mTLS) with
// security level PrivacyAndIntegrity, as grpc-go's own TLS credentials give.
// Code written for grpc-go over TLS, such as google.golang.org/grpc/authz
// policies, then works unchanged.
//
// The credentials serve brpc's streams only: a *grpc.Server built with them
// and served on any other net.Listener refuses every connection, since
// nothing about such a connection is secure.
func TransportCredentials() credentials.TransportCredentials { return grpcglue.Credentials{} }
