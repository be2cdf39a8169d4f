package handshake

import (
	"bytes"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/brpc-go/brpc/internal/handshake/handshakepb"
)

// FuzzServerHello runs what a server does with a client's first bytes:
// read a hello, negotiate the version, convert the metadata. None of it may
// panic, and a negotiated version must be one this build speaks.
func FuzzServerHello(f *testing.F) {
	f.Add(frame(f, NewHello(metadata.Pairs("name", "x", "token-bin", "\xff\x00"))))
	f.Add(frame(f, &handshakepb.Hello{ProtocolVersion: 99, MinProtocolVersion: 2}))
	f.Add(frame(f, &handshakepb.Hello{ProtocolVersion: 0}))
	f.Add(frame(f, &handshakepb.Hello{Metadata: []*handshakepb.MetadataEntry{{Key: "UPPER"}, {Key: ""}, {Key: ":path", Values: [][]byte{{0}}}}}))
	f.Fuzz(func(t *testing.T, data []byte) {
		var h handshakepb.Hello
		if err := ReadMsg(bytes.NewReader(data), &h, DefaultMaxMessageSize); err != nil {
			return
		}
		v, err := Negotiate(&h)
		if err == nil && (v < MinProtocolVersion || v > ProtocolVersion) {
			t.Fatalf("negotiated version %d outside %d-%d", v, MinProtocolVersion, ProtocolVersion)
		}
		if err != nil && status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("Negotiate failed with %v, want FailedPrecondition", err)
		}
		md := MDFromProto(h.GetMetadata())
		for k := range md {
			if k != "" && k != string(bytes.ToLower([]byte(k))) {
				t.Fatalf("metadata key %q is not lower case", k)
			}
		}
	})
}

// FuzzClientWelcome runs what a client does with the server's answer: read
// a welcome, check its version, turn a rejection into a status error. None
// of it may panic, and a rejection is never reported as success.
func FuzzClientWelcome(f *testing.F) {
	detail, err := anypb.New(&handshakepb.GoAway{Reason: "r"})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(frame(f, Accept(ProtocolVersion, "id")))
	f.Add(frame(f, Reject(status.Error(codes.PermissionDenied, "no"))))
	f.Add(frame(f, &handshakepb.Welcome{Status: &handshakepb.Status{Code: 0, Details: []*anypb.Any{detail}}}))
	f.Add(frame(f, &handshakepb.Welcome{Status: &handshakepb.Status{Code: 9999, Details: []*anypb.Any{{TypeUrl: "x", Value: []byte{0xff}}}}}))
	f.Add(frame(f, &handshakepb.Notice{Kind: &handshakepb.Notice_Closing{Closing: &handshakepb.Closing{Code: 2}}}))
	f.Fuzz(func(t *testing.T, data []byte) {
		var w handshakepb.Welcome
		if err := ReadMsg(bytes.NewReader(data), &w, DefaultMaxMessageSize); err == nil {
			if w.GetStatus() != nil {
				if err := StatusFromProto(w.GetStatus()); err == nil {
					t.Fatal("a rejection turned into a nil error")
				}
			} else {
				_ = CheckWelcomeVersion(&w)
			}
		}
		var n handshakepb.Notice
		_ = ReadMsg(bytes.NewReader(data), &n, DefaultMaxMessageSize)
		_ = n.GetClosing().GetCode()
	})
}
