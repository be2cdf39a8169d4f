package grpcglue

import (
	"testing"

	"google.golang.org/grpc/credentials"
)

// TestSessionInfoHoldsTLSOnce checks that a session's TLS state is kept
// once, as the AuthInfo its gRPC connections report: describing a session
// and handing its AuthInfo to any number of connections takes two
// allocations (the SessionInfo and the boxed TLSInfo), where a TLSInfo kept
// in the SessionInfo and boxed again on first use would take more.
func TestSessionInfoHoldsTLSOnce(t *testing.T) {
	conn := newFakeConn("127.0.0.1:4000", "127.0.0.1:5000")
	info := NewSessionInfo(Peer{ID: "x"}, conn, nil)
	ti, ok := info.auth().(credentials.TLSInfo)
	if !ok {
		t.Fatalf("auth() = %T, want credentials.TLSInfo", info.auth())
	}
	if ti.State.ServerName != "brpc.test" || ti.SecurityLevel != credentials.PrivacyAndIntegrity {
		t.Fatalf("auth() = %+v, want the session's TLS state at PrivacyAndIntegrity", ti)
	}
	allocs := testing.AllocsPerRun(100, func() {
		i := NewSessionInfo(Peer{ID: "x"}, conn, nil)
		for range 3 {
			_ = i.auth()
		}
	})
	if allocs > 2 {
		t.Errorf("a SessionInfo and its AuthInfo for 3 connections took %v allocations, want at most 2", allocs)
	}
}
