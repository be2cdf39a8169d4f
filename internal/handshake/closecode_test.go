package handshake

import (
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/brpc-go/brpc/internal/session"
)

// TestRefusedCodes checks that every gRPC code a handshake can be refused
// with has a close code of its own that maps back to it, and how the other
// close codes map.
func TestRefusedCodes(t *testing.T) {
	seen := map[session.CloseCode]codes.Code{}
	for c := codes.Canceled; c <= codes.Unauthenticated; c++ {
		cc := RefusedCode(c)
		if prev, dup := seen[cc]; dup {
			t.Fatalf("RefusedCode(%v) = RefusedCode(%v) = %d", c, prev, cc)
		}
		seen[cc] = c
		if cc <= session.CodeHandshakeTimeout {
			t.Errorf("RefusedCode(%v) = %d collides with a fixed close code", c, cc)
		}
		if got := GRPCCode(cc); got != c {
			t.Errorf("GRPCCode(RefusedCode(%v)) = %v", c, got)
		}
	}
	if got := RefusedCode(codes.ResourceExhausted); got != 0x108 {
		t.Errorf("RefusedCode(ResourceExhausted) = %#x, want 0x108: close codes are wire protocol", uint64(got))
	}
	for _, tt := range []struct {
		code session.CloseCode
		want codes.Code
	}{
		{session.CodeNormal, codes.Unavailable},
		{session.CodeShutdown, codes.Unavailable},
		{session.CodeReplaced, codes.Unavailable},
		{session.CodeRejected, codes.PermissionDenied},
		{session.CodeProtocol, codes.Internal},
		{session.CodeHandshakeTimeout, codes.DeadlineExceeded},
		{RefusedCode(codes.OK), codes.PermissionDenied},
		{RefusedCode(codes.Code(99)), codes.PermissionDenied},
		{session.CodeRefused, codes.Unavailable},
		{session.CodeRefused + 17, codes.Unavailable},
		{4242, codes.Unavailable},
	} {
		if got := GRPCCode(tt.code); got != tt.want {
			t.Errorf("GRPCCode(%d) = %v, want %v", tt.code, got, tt.want)
		}
	}
}
