// Package handshake implements brpc's session handshake: the hello a client
// sends first on the control stream and the welcome the server answers with.
// It holds both sides' state machines (ServeHello on the server, SendHello on
// the client), the notices the server sends later on the control stream, and
// the mapping between close codes and gRPC statuses (RefusedCode and GRPCCode,
// which Refuse and DialError use: no status travels in a reason string).
//
// Messages are protobuf, each framed as a 4-byte big-endian length followed by
// the serialized message. A reader refuses frames above a size cap before
// reading their body, so a peer cannot make the other side allocate more.
package handshake

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/brpc-go/brpc/internal/handshake/handshakepb"
)

// Protocol versions this build speaks. A new version is added when the wire
// protocol changes; both sides settle on the highest version they share.
const (
	ProtocolVersion    uint32 = 1
	MinProtocolVersion uint32 = 1
)

// DefaultMaxMessageSize caps a control-stream message unless configured.
const DefaultMaxMessageSize = 64 << 10

// ErrTooLarge is returned for a frame whose announced length exceeds the cap
// (a negative cap admits only empty frames).
var ErrTooLarge = errors.New("handshake: message too large")

// ErrMalformed is returned for a frame whose body is not a valid message.
var ErrMalformed = errors.New("handshake: malformed message")

// WriteMsg frames and writes m in one Write call.
func WriteMsg(w io.Writer, m proto.Message) error {
	size := proto.Size(m)
	buf := make([]byte, 4, 4+size)
	binary.BigEndian.PutUint32(buf, uint32(size))
	buf, err := proto.MarshalOptions{}.MarshalAppend(buf, m)
	if err != nil {
		return fmt.Errorf("handshake: marshal %T: %w", m, err)
	}
	_, err = w.Write(buf)
	return err
}

// ReadMsg reads one frame into m. Frames longer than maxSize bytes yield
// ErrTooLarge without their body being read; an undecodable body yields
// ErrMalformed. Read errors are returned as they are (io.EOF included).
func ReadMsg(r io.Reader, m proto.Message, maxSize int) error {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if int64(n) > int64(max(maxSize, 0)) {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, n, maxSize)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	if err := proto.Unmarshal(body, m); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return nil
}

// NewHello builds the hello a client of this build sends.
func NewHello(md metadata.MD) *handshakepb.Hello {
	return &handshakepb.Hello{
		ProtocolVersion:    ProtocolVersion,
		MinProtocolVersion: MinProtocolVersion,
		Metadata:           MDToProto(md),
	}
}

// Negotiate picks the protocol version for a session from the client's
// hello, or returns a FailedPrecondition status when the two sides share none.
func Negotiate(h *handshakepb.Hello) (uint32, error) {
	hi, lo := h.GetProtocolVersion(), h.GetMinProtocolVersion()
	if lo == 0 || lo > hi {
		lo = hi
	}
	v := min(hi, ProtocolVersion)
	if v < MinProtocolVersion || v < lo {
		return 0, status.Errorf(codes.FailedPrecondition,
			"brpc: no common protocol version: client speaks %d-%d, server %d-%d",
			lo, hi, MinProtocolVersion, ProtocolVersion)
	}
	return v, nil
}

// CheckWelcomeVersion verifies that the version the server chose is one this
// client speaks.
func CheckWelcomeVersion(w *handshakepb.Welcome) error {
	v := w.GetProtocolVersion()
	if v < MinProtocolVersion || v > ProtocolVersion {
		return status.Errorf(codes.FailedPrecondition,
			"brpc: server chose protocol version %d, client speaks %d-%d", v, MinProtocolVersion, ProtocolVersion)
	}
	return nil
}

// Reject builds a welcome that refuses the client with err's gRPC status.
func Reject(err error) *handshakepb.Welcome {
	return &handshakepb.Welcome{ProtocolVersion: ProtocolVersion, Status: StatusToProto(status.Convert(err))}
}

// Accept builds a welcome that admits the client under id.
func Accept(version uint32, id string) *handshakepb.Welcome {
	return &handshakepb.Welcome{ProtocolVersion: version, Id: id}
}

// StatusToProto converts a gRPC status for the wire.
func StatusToProto(s *status.Status) *handshakepb.Status {
	p := s.Proto()
	return &handshakepb.Status{Code: p.GetCode(), Message: p.GetMessage(), Details: p.GetDetails()}
}

// StatusFromProto converts a wire status back into a gRPC status error.
// A rejection that claims codes.OK is reported as Unknown: it still rejects.
func StatusFromProto(p *handshakepb.Status) error {
	code := codes.Code(p.GetCode())
	if code == codes.OK {
		code = codes.Unknown
	}
	s := status.New(code, p.GetMessage())
	if len(p.GetDetails()) > 0 {
		sp := s.Proto()
		sp.Details = p.GetDetails()
		s = status.FromProto(sp)
	}
	return s.Err()
}

// MDToProto converts gRPC metadata for the wire, in a stable key order.
func MDToProto(md metadata.MD) []*handshakepb.MetadataEntry {
	if len(md) == 0 {
		return nil
	}
	keys := make([]string, 0, len(md))
	for k := range md {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]*handshakepb.MetadataEntry, 0, len(keys))
	for _, k := range keys {
		vals := make([][]byte, len(md[k]))
		for i, v := range md[k] {
			vals[i] = []byte(v)
		}
		out = append(out, &handshakepb.MetadataEntry{Key: k, Values: vals})
	}
	return out
}

// MDFromProto converts wire metadata back, lower-casing keys as gRPC does.
func MDFromProto(entries []*handshakepb.MetadataEntry) metadata.MD {
	md := metadata.MD{}
	for _, e := range entries {
		for _, v := range e.GetValues() {
			md.Append(e.GetKey(), string(v))
		}
	}
	return md
}
