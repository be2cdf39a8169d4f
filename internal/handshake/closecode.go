package handshake

import (
	"google.golang.org/grpc/codes"

	"github.com/brpc-go/brpc/internal/session"
)

// RefusedCode is the close code that ends a session whose handshake the
// server refused with gRPC code c: session.CodeRefused + c. A client that
// never read the refusal (the server refused before reading the hello, or
// the welcome was lost) still learns the code from the close itself,
// without parsing the reason. An OK or unknown c gives the bare
// session.CodeRejected.
func RefusedCode(c codes.Code) session.CloseCode {
	if c == codes.OK || c > codes.Unauthenticated {
		return session.CodeRejected
	}
	return session.CodeRefused + session.CloseCode(c)
}

// GRPCCode is the gRPC code of a dial or call cut off by the peer's close
// with code cc: a refusal's own code, PermissionDenied for a bare
// CodeRejected, Internal for a protocol error, DeadlineExceeded for a
// handshake timeout, and Unavailable for the rest (a plain close, a
// shutdown, a replaced session, and codes this version does not know,
// which a newer peer may send).
func GRPCCode(cc session.CloseCode) codes.Code {
	if cc > session.CodeRefused && cc <= session.CodeRefused+session.CloseCode(codes.Unauthenticated) {
		return codes.Code(cc - session.CodeRefused)
	}
	switch cc {
	case session.CodeRejected:
		return codes.PermissionDenied
	case session.CodeProtocol:
		return codes.Internal
	case session.CodeHandshakeTimeout:
		return codes.DeadlineExceeded
	default:
		return codes.Unavailable
	}
}
