package gateway

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/types/known/emptypb"
)

// relayCodec carries the relay's messages on the client's side of a relayed
// call. A relayed message is an *emptypb.Empty whose unknown fields are the
// message's bytes, so encoding it is handing those bytes over and decoding
// it is keeping them: no parse, no copy on the way out. grpc-go's proto
// codec would marshal each message into a buffer of its pool's next size (a
// 128 KiB message into 1 MiB), which is what a call the client does not
// read holds while it waits for flow control. Its name is "proto": the
// bytes on the wire are the message's own protobuf encoding.
type relayCodec struct{}

func (relayCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(*emptypb.Empty)
	if !ok {
		return nil, fmt.Errorf("brpc gateway: relaying a %T, want *emptypb.Empty", v)
	}
	b := m.ProtoReflect().GetUnknown()
	if len(b) == 0 {
		return nil, nil
	}
	// The message is not touched again once sent, so grpc-go may hold its
	// bytes for as long as it needs them.
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

func (relayCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(*emptypb.Empty)
	if !ok {
		return fmt.Errorf("brpc gateway: relaying into a %T, want *emptypb.Empty", v)
	}
	// Materialize copies: grpc-go frees data once this returns.
	m.ProtoReflect().SetUnknown(data.Materialize())
	return nil
}

func (relayCodec) Name() string { return "proto" }

var _ encoding.CodecV2 = relayCodec{}
