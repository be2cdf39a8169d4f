package gateway

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
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
	out := forwardable(in, Config{TargetHeader: "brpc-target", ReservedPrefix: "brpc-"}, false)
	want := metadata.MD{"x-app": {"1", "2"}, "x-bin-bin": {"\x00"}}
	if fmt.Sprint(out) != fmt.Sprint(want) {
		t.Fatalf("forwarded %v, want %v", out, want)
	}
}

// A trusted origin's reserved headers are relayed, and its caller headers
// win over the ones this gateway would set; anyone else's are dropped and
// replaced.
func TestCallerHeadersPassedFromTrustedOrigin(t *testing.T) {
	conf := Config{TargetHeader: "brpc-target", ReservedPrefix: "brpc-", CallerHeader: "brpc-gateway-caller", CallerAddrHeader: "brpc-gateway-caller-addr"}
	in := metadata.MD{
		"brpc-target": {"a"}, "brpc-gateway-caller": {"origin-caller"},
		"brpc-gateway-caller-addr": {"192.0.2.1:7"}, "x-app": {"1"},
	}
	cases := []struct {
		name string
		in   metadata.MD
		pass bool
		want metadata.MD
	}{
		{"untrusted", in, false, metadata.MD{"x-app": {"1"}, "brpc-gateway-caller": {"me"}, "brpc-gateway-caller-addr": {"127.0.0.1:9"}}},
		{"trusted origin", in, true, metadata.MD{"x-app": {"1"}, "brpc-gateway-caller": {"origin-caller"}, "brpc-gateway-caller-addr": {"192.0.2.1:7"}}},
		{"trusted origin without caller headers", metadata.MD{"brpc-target": {"a"}, "x-app": {"1"}}, true,
			metadata.MD{"x-app": {"1"}, "brpc-gateway-caller": {"me"}, "brpc-gateway-caller-addr": {"127.0.0.1:9"}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			md := forwardable(c.in.Copy(), conf, c.pass)
			addCaller(md, conf, c.pass, "me", "127.0.0.1:9")
			if fmt.Sprint(md) != fmt.Sprint(c.want) {
				t.Fatalf("relayed %v, want %v", md, c.want)
			}
		})
	}
}

func TestCallerValueEncoding(t *testing.T) {
	cases := map[string]string{
		"":                                   "",
		"spiffe://td/ops":                    "spiffe://td/ops",
		"100%":                               "100%25",
		"Jürgen\x00\n":                       "J%C3%BCrgen%00%0A",
		"spiffe://td/a%20b":                  "spiffe://td/a%2520b",
		"~ !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}": "~ !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}",
	}
	for in, want := range cases {
		got := EncodeValue(in)
		if got != want {
			t.Errorf("EncodeValue(%q) = %q, want %q", in, got, want)
		}
		if back := DecodeValue(got); back != in {
			t.Errorf("DecodeValue(%q) = %q, want %q", got, back, in)
		}
	}
	// A '%' without two hex digits after it is kept, as a sender that does
	// not encode would have meant it.
	for _, s := range []string{"%", "%4", "%zz", "a%"} {
		if got := DecodeValue(s); got != s {
			t.Errorf("DecodeValue(%q) = %q, want it unchanged", s, got)
		}
	}
}

func TestLimiterBounds(t *testing.T) {
	l := NewLimiter(2, 3)
	for _, id := range []string{"a", "a", "b"} {
		if err := l.acquire(id); err != nil {
			t.Fatalf("acquire(%s) within the bounds: %v", id, err)
		}
	}
	if err := l.acquire("c"); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("acquire beyond the total: %v, want ResourceExhausted", err)
	}
	l.release("b")
	if err := l.acquire("a"); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("acquire beyond the per-client bound: %v, want ResourceExhausted", err)
	}
	l.release("a")
	l.release("a")
	if l.n != 0 || len(l.per) != 0 {
		t.Fatalf("after every release: %d in flight, %d clients tracked; want none", l.n, len(l.per))
	}
	if err := NewLimiter(0, 0).acquire("a"); err != nil {
		t.Fatalf("a limiter without bounds refused: %v", err)
	}
}

// The relay codec hands a message's bytes over as they are, both ways.
func TestRelayCodecKeepsBytes(t *testing.T) {
	in := &testpb.EchoRequest{Message: "hi", Payload: make([]byte, 100<<10), Count: 3}
	wire, err := proto.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var c relayCodec
	var m emptypb.Empty
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(wire[:7]), mem.SliceBuffer(wire[7:])}, &m); err != nil {
		t.Fatal(err)
	}
	out, err := c.Marshal(&m)
	if err != nil {
		t.Fatal(err)
	}
	if got := out.Materialize(); string(got) != string(wire) {
		t.Fatalf("relayed %d bytes that differ from the %d sent", len(got), len(wire))
	}
	var back testpb.EchoRequest
	if err := proto.Unmarshal(out.Materialize(), &back); err != nil || !proto.Equal(&back, in) {
		t.Fatalf("the relayed bytes decode to %v (%v), want %v", &back, err, in)
	}
	if out, err := c.Marshal(&emptypb.Empty{}); err != nil || out.Len() != 0 {
		t.Fatalf("an empty message: %d bytes, %v; want none", out.Len(), err)
	}
	if _, err := c.Marshal(in); err == nil {
		t.Fatal("Marshal of a message that is not the relay's succeeded")
	}
	if err := c.Unmarshal(nil, &back); err == nil {
		t.Fatal("Unmarshal into a message that is not the relay's succeeded")
	}
}

func TestMethodKinds(t *testing.T) {
	sd := &grpc.ServiceDesc{
		ServiceName: "p.S",
		Methods:     []grpc.MethodDesc{{MethodName: "U"}},
		Streams: []grpc.StreamDesc{
			{StreamName: "SS", ServerStreams: true},
			{StreamName: "CS", ClientStreams: true},
			{StreamName: "B", ClientStreams: true, ServerStreams: true},
			{StreamName: "N"},
		},
	}
	// Nil descriptions, as WithGatewayServices may be handed, describe
	// nothing.
	got := MethodKinds(nil, sd, nil)
	want := map[string]Kind{"/p.S/U": KindUnary, "/p.S/SS": KindServerStreaming, "/p.S/CS": KindStreaming, "/p.S/B": KindStreaming, "/p.S/N": KindUnary}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("kinds %v, want %v", got, want)
	}
}
