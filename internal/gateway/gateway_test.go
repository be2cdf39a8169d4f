package gateway

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/brpc-go/brpc/internal/testpb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The relay's messages are *emptypb.Empty: every field of the real message
// must survive as an unknown field and be marshalled back byte for byte.
func TestEmptyKeepsEveryField(t *testing.T) {
	in := &testpb.EchoRequest{Message: "hi", Payload: []byte{0, 1, 0xff}, Count: 3, SleepMs: -1, FailCode: 7}
	wire, err := proto.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var e emptypb.Empty
	if err := proto.Unmarshal(wire, &e); err != nil {
		t.Fatal(err)
	}
	again, err := proto.Marshal(&e)
	if err != nil {
		t.Fatal(err)
	}
	if string(again) != string(wire) {
		t.Fatalf("relayed bytes %x, want %x", again, wire)
	}
}

func TestAuthorizeCodes(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name string
		fn   func(context.Context, string, string) error
		want codes.Code
	}{
		{"nil authorizer", nil, codes.PermissionDenied},
		{"allowed", func(context.Context, string, string) error { return nil }, codes.OK},
		{"plain error", func(context.Context, string, string) error { return errors.New("no") }, codes.PermissionDenied},
		{"status", func(context.Context, string, string) error { return status.Error(codes.Unauthenticated, "who") }, codes.Unauthenticated},
		{"wrapped status", func(context.Context, string, string) error {
			return fmt.Errorf("policy: %w", status.Error(codes.ResourceExhausted, "quota"))
		}, codes.ResourceExhausted},
		{"panic", func(context.Context, string, string) error { panic("boom") }, codes.Internal},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := status.Code(authorize(ctx, c.fn, "id", "/p.S/M")); got != c.want {
				t.Fatalf("code %v, want %v", got, c.want)
			}
		})
	}
}

func TestForwardableDropsTransportAndReservedHeaders(t *testing.T) {
	in := metadata.MD{
		":authority": {"gw"}, "content-type": {"application/grpc"}, "user-agent": {"x"},
		"grpc-timeout": {"1S"}, "te": {"trailers"}, "brpc-target": {"a"}, "brpc-other": {"b"},
		"x-app": {"1", "2"}, "x-bin-bin": {"\x00"},
	}
	out := forwardable(in, Config{TargetHeader: "brpc-target", ReservedPrefix: "brpc-"})
	want := metadata.MD{"x-app": {"1", "2"}, "x-bin-bin": {"\x00"}}
	if fmt.Sprint(out) != fmt.Sprint(want) {
		t.Fatalf("forwarded %v, want %v", out, want)
	}
}
