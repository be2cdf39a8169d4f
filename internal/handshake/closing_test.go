package handshake

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/brpc-go/brpc/internal/handshake/handshakepb"
	"github.com/brpc-go/brpc/internal/session"
)

// oldClosing is the Closing message as builds before the reconnect window
// knew it: code and reason only.
func oldClosing(t *testing.T) protoreflect.MessageDescriptor {
	t.Helper()
	fd, err := protodesc.NewFile(&descriptorpb.FileDescriptorProto{
		Name:    proto.String("old_handshake.proto"),
		Package: proto.String("brpc.handshake.v0"),
		Syntax:  proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{{
			Name: proto.String("Closing"),
			Field: []*descriptorpb.FieldDescriptorProto{
				{Name: proto.String("code"), JsonName: proto.String("code"), Number: proto.Int32(1), Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(), Type: descriptorpb.FieldDescriptorProto_TYPE_UINT32.Enum()},
				{Name: proto.String("reason"), JsonName: proto.String("reason"), Number: proto.Int32(2), Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(), Type: descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum()},
			},
		}},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return fd.Messages().Get(0)
}

// TestClosingReconnectWindowIsCompatibleBothWays checks the window on the
// wire: a client that predates it reads the code and reason of a notice
// that carries it, and a notice from a server that predates it announces
// no window.
func TestClosingReconnectWindowIsCompatibleBothWays(t *testing.T) {
	md := oldClosing(t)

	n := NewClosing(session.CodeShutdown, "server stopped", 2500*time.Millisecond)
	if got := ReconnectWindow(n.GetClosing()); got != 2500*time.Millisecond {
		t.Fatalf("ReconnectWindow of a notice announcing 2.5 s = %v", got)
	}
	b, err := proto.Marshal(n.GetClosing())
	if err != nil {
		t.Fatal(err)
	}
	old := dynamicpb.NewMessage(md)
	if err := proto.Unmarshal(b, old); err != nil {
		t.Fatalf("an old client cannot parse the new Closing: %v", err)
	}
	if code, reason := old.Get(md.Fields().ByName("code")).Uint(), old.Get(md.Fields().ByName("reason")).String(); code != uint64(session.CodeShutdown) || reason != "server stopped" {
		t.Errorf("an old client reads code %d, reason %q; want %d, %q", code, reason, session.CodeShutdown, "server stopped")
	}

	old = dynamicpb.NewMessage(md)
	old.Set(md.Fields().ByName("code"), protoreflect.ValueOfUint32(uint32(session.CodeShutdown)))
	old.Set(md.Fields().ByName("reason"), protoreflect.ValueOfString("server stopped"))
	b, err = proto.Marshal(old)
	if err != nil {
		t.Fatal(err)
	}
	var c handshakepb.Closing
	if err := proto.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	if got := ReconnectWindow(&c); got != 0 {
		t.Errorf("an old server's Closing announces a window of %v, want none", got)
	}
	if c.GetCode() != uint32(session.CodeShutdown) || c.GetReason() != "server stopped" {
		t.Errorf("an old server's Closing reads as code %d, reason %q", c.GetCode(), c.GetReason())
	}
}

func TestNewClosingWindowBounds(t *testing.T) {
	for _, tc := range []struct {
		in, want time.Duration
	}{
		{0, 0},
		{-time.Second, 0},
		{999 * time.Microsecond, 0}, // under a millisecond: no window
		{1500 * time.Microsecond, time.Millisecond},
		{30 * time.Second, 30 * time.Second},
		{100 * 24 * time.Hour, 4294967295 * time.Millisecond}, // the field's most
	} {
		if got := ReconnectWindow(NewClosing(session.CodeShutdown, "", tc.in).GetClosing()); got != tc.want {
			t.Errorf("NewClosing with a window of %v announces %v, want %v", tc.in, got, tc.want)
		}
	}
}
