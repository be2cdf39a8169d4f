package handshake

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/brpc-go/brpc/internal/handshake/handshakepb"
)

// frame returns the wire form of m: 4-byte big-endian length, then m.
func frame(t testing.TB, m proto.Message) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := WriteMsg(&b, m); err != nil {
		t.Fatalf("WriteMsg(%T): %v", m, err)
	}
	return b.Bytes()
}

// header returns a bare frame header announcing n bytes.
func header(n uint32) []byte {
	return binary.BigEndian.AppendUint32(nil, n)
}

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatalf("anypb.New: %v", err)
	}
	return a
}

// countingWriter records each Write call.
type countingWriter struct {
	bytes.Buffer
	calls int
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.calls++
	return w.Buffer.Write(p)
}

func TestWriteReadRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		msg  proto.Message
	}{
		{"empty hello", &handshakepb.Hello{}},
		{"hello of this build", NewHello(nil)},
		{"hello with metadata", NewHello(metadata.Pairs("a", "1", "a", "2", "b", "x", "trace-bin", "\x00\x01\x02"))},
		{"hello from the future", &handshakepb.Hello{ProtocolVersion: 7, MinProtocolVersion: 3}},
		{"empty welcome", &handshakepb.Welcome{}},
		{"accepting welcome", Accept(ProtocolVersion, "client-42")},
		{"rejecting welcome", Reject(status.Error(codes.PermissionDenied, "go away"))},
		{"rejecting welcome with details", &handshakepb.Welcome{
			ProtocolVersion: ProtocolVersion,
			Status: &handshakepb.Status{
				Code:    int32(codes.ResourceExhausted),
				Message: "full",
				Details: []*anypb.Any{mustAny(t, wrapperspb.String("try later")), mustAny(t, durationpb.New(5*time.Second))},
			},
		}},
		{"empty notice", &handshakepb.Notice{}},
		{"go-away notice", &handshakepb.Notice{Kind: &handshakepb.Notice_GoAway{GoAway: &handshakepb.GoAway{Reason: "server is shutting down"}}}},
		{"go-away notice without reason", &handshakepb.Notice{Kind: &handshakepb.Notice_GoAway{GoAway: &handshakepb.GoAway{}}}},
		{"large hello", NewHello(metadata.Pairs("big", strings.Repeat("x", 60<<10)))},
	}

	// Each message alone, through a reader that returns one byte at a time.
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var w countingWriter
			if err := WriteMsg(&w, tc.msg); err != nil {
				t.Fatalf("WriteMsg: %v", err)
			}
			if w.calls != 1 {
				t.Errorf("WriteMsg made %d Write calls, want 1", w.calls)
			}
			raw := w.Bytes()
			size := proto.Size(tc.msg)
			if len(raw) != 4+size || int(binary.BigEndian.Uint32(raw)) != size {
				t.Fatalf("frame of %d bytes announces %d; want 4+%d announcing %d", len(raw), binary.BigEndian.Uint32(raw), size, size)
			}
			got := tc.msg.ProtoReflect().New().Interface()
			r := bytes.NewReader(raw)
			if err := ReadMsg(iotest.OneByteReader(r), got, DefaultMaxMessageSize); err != nil {
				t.Fatalf("ReadMsg: %v", err)
			}
			if !proto.Equal(got, tc.msg) {
				t.Fatalf("round trip: got %v, want %v", got, tc.msg)
			}
			if r.Len() != 0 {
				t.Fatalf("ReadMsg left %d bytes of its own frame", r.Len())
			}
		})
	}

	// All messages back to back on one stream: ReadMsg consumes exactly one
	// frame each time and then reports io.EOF at the clean end.
	t.Run("back to back", func(t *testing.T) {
		var stream bytes.Buffer
		for _, tc := range tests {
			if err := WriteMsg(&stream, tc.msg); err != nil {
				t.Fatalf("WriteMsg(%s): %v", tc.name, err)
			}
		}
		for _, tc := range tests {
			got := tc.msg.ProtoReflect().New().Interface()
			if err := ReadMsg(&stream, got, DefaultMaxMessageSize); err != nil {
				t.Fatalf("ReadMsg(%s): %v", tc.name, err)
			}
			if !proto.Equal(got, tc.msg) {
				t.Fatalf("%s: got %v, want %v", tc.name, got, tc.msg)
			}
		}
		if err := ReadMsg(&stream, &handshakepb.Hello{}, DefaultMaxMessageSize); err != io.EOF {
			t.Fatalf("ReadMsg at the end of the stream = %v, want io.EOF", err)
		}
	})
}

// TestReadMsgReplacesMessage checks that ReadMsg does not merge into what the
// message held before.
func TestReadMsgReplacesMessage(t *testing.T) {
	m := NewHello(metadata.Pairs("old", "value"))
	if err := ReadMsg(bytes.NewReader(frame(t, &handshakepb.Hello{ProtocolVersion: 9})), m, DefaultMaxMessageSize); err != nil {
		t.Fatalf("ReadMsg: %v", err)
	}
	if want := (&handshakepb.Hello{ProtocolVersion: 9}); !proto.Equal(m, want) {
		t.Fatalf("ReadMsg into a used message = %v, want %v", m, want)
	}
}

// errWriter fails every Write.
type errWriter struct {
	err   error
	calls int
}

func (w *errWriter) Write([]byte) (int, error) {
	w.calls++
	return 0, w.err
}

func TestWriteMsgErrors(t *testing.T) {
	t.Run("writer error is returned", func(t *testing.T) {
		w := &errWriter{err: errors.New("boom")}
		if err := WriteMsg(w, NewHello(nil)); !errors.Is(err, w.err) {
			t.Fatalf("WriteMsg = %v, want %v", err, w.err)
		}
	})
	t.Run("unmarshalable message writes nothing", func(t *testing.T) {
		// proto3 strings must be valid UTF-8.
		w := &countingWriter{}
		err := WriteMsg(w, &handshakepb.Notice{Kind: &handshakepb.Notice_GoAway{GoAway: &handshakepb.GoAway{Reason: "\xff"}}})
		if err == nil {
			t.Fatal("WriteMsg of invalid UTF-8 succeeded")
		}
		if w.calls != 0 {
			t.Fatalf("WriteMsg made %d Write calls for a message it could not marshal", w.calls)
		}
	})
}

// headerGuard serves data but fails the test if anything beyond the first
// limit bytes is asked for.
type headerGuard struct {
	t     *testing.T
	data  []byte
	off   int
	limit int
}

func (g *headerGuard) Read(p []byte) (int, error) {
	if g.off >= g.limit {
		g.t.Errorf("ReadMsg read beyond the first %d bytes", g.limit)
		return 0, errors.New("headerGuard: read beyond the header")
	}
	n := copy(p, g.data[g.off:min(len(g.data), g.limit)])
	g.off += n
	return n, nil
}

func TestReadMsgTooLarge(t *testing.T) {
	body := bytes.Repeat([]byte{0}, 256)
	tests := []struct {
		name     string
		announce uint32
		maxSize  int
	}{
		{"one over the cap", 101, 100},
		{"default cap", DefaultMaxMessageSize + 1, DefaultMaxMessageSize},
		{"4 GiB", 0xFFFFFFFF, DefaultMaxMessageSize},
		{"zero cap", 1, 0},
		{"high bit", 0x80000000, 1 << 20},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := &headerGuard{t: t, data: append(header(tc.announce), body...), limit: 4}
			err := ReadMsg(g, &handshakepb.Hello{}, tc.maxSize)
			if !errors.Is(err, ErrTooLarge) {
				t.Fatalf("ReadMsg = %v, want ErrTooLarge", err)
			}
			if errors.Is(err, ErrMalformed) {
				t.Fatalf("ReadMsg = %v, which is also ErrMalformed", err)
			}
			if g.off != 4 {
				t.Fatalf("ReadMsg consumed %d bytes, want the 4 of the header", g.off)
			}
		})
	}
}

// TestReadMsgSizeBoundary checks that a frame of exactly maxSize is accepted.
func TestReadMsgSizeBoundary(t *testing.T) {
	m := &handshakepb.Notice{Kind: &handshakepb.Notice_GoAway{GoAway: &handshakepb.GoAway{Reason: strings.Repeat("r", 100)}}}
	raw := frame(t, m)
	size := proto.Size(m)

	var got handshakepb.Notice
	if err := ReadMsg(bytes.NewReader(raw), &got, size); err != nil {
		t.Fatalf("ReadMsg with maxSize == frame size: %v", err)
	}
	if !proto.Equal(&got, m) {
		t.Fatalf("got %v, want %v", &got, m)
	}
	if err := ReadMsg(bytes.NewReader(raw), &got, size-1); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("ReadMsg with maxSize == frame size - 1 = %v, want ErrTooLarge", err)
	}
	// An empty message is an empty frame, allowed even with a zero cap.
	if err := ReadMsg(bytes.NewReader(header(0)), &handshakepb.Hello{}, 0); err != nil {
		t.Fatalf("ReadMsg of an empty frame with maxSize 0: %v", err)
	}
}

// TestReadMsgNegativeMaxSize: a negative cap admits no frame with a body,
// rather than wrapping around to "no limit" and allocating what the peer
// announces.
func TestReadMsgNegativeMaxSize(t *testing.T) {
	g := &headerGuard{t: t, data: append(header(1<<10), make([]byte, 1<<10)...), limit: 4}
	if err := ReadMsg(g, &handshakepb.Hello{}, -1); !errors.Is(err, ErrTooLarge) {
		t.Errorf("ReadMsg of a 1 KiB frame with maxSize -1 = %v, want ErrTooLarge", err)
	}
}

func TestReadMsgTruncated(t *testing.T) {
	full := frame(t, NewHello(metadata.Pairs("key", "value")))
	tests := []struct {
		name string
		data []byte
		want error
	}{
		{"nothing", nil, io.EOF},
		{"1 header byte", full[:1], io.ErrUnexpectedEOF},
		{"3 header bytes", full[:3], io.ErrUnexpectedEOF},
		{"header only", full[:4], io.ErrUnexpectedEOF},
		{"half the body", full[:4+(len(full)-4)/2], io.ErrUnexpectedEOF},
		{"all but one byte", full[:len(full)-1], io.ErrUnexpectedEOF},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, r := range []struct {
				name string
				r    io.Reader
			}{
				{"whole", bytes.NewReader(tc.data)},
				{"byte by byte", iotest.OneByteReader(bytes.NewReader(tc.data))},
				{"data with EOF", iotest.DataErrReader(bytes.NewReader(tc.data))},
			} {
				err := ReadMsg(r.r, &handshakepb.Hello{}, DefaultMaxMessageSize)
				// io.EOF is compared exactly: callers test err == io.EOF.
				if err != tc.want {
					t.Errorf("%s: ReadMsg = %v, want %v", r.name, err, tc.want)
				}
			}
		})
	}
}

func TestReadMsgPassesReadErrors(t *testing.T) {
	boom := errors.New("connection reset")
	full := frame(t, NewHello(nil))
	for _, n := range []int{0, 2, 4, len(full) - 1} {
		r := io.MultiReader(bytes.NewReader(full[:n]), iotest.ErrReader(boom))
		if err := ReadMsg(r, &handshakepb.Hello{}, DefaultMaxMessageSize); !errors.Is(err, boom) {
			t.Errorf("error after %d bytes: ReadMsg = %v, want %v", n, err, boom)
		}
	}
}

func TestReadMsgMalformed(t *testing.T) {
	withHeader := func(body ...byte) []byte { return append(header(uint32(len(body))), body...) }
	tests := []struct {
		name string
		data []byte
	}{
		{"all ones", withHeader(0xff, 0xff, 0xff, 0xff)},
		{"truncated varint", withHeader(0x08)},
		{"varint too long", withHeader(0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01)},
		{"length beyond body", withHeader(0x1a, 0x05, 0x0a)},
		{"field number zero", withHeader(0x00, 0x01)},
		{"unmatched end group", withHeader(0x0c)},
		{"invalid UTF-8 key", withHeader(0x1a, 0x03, 0x0a, 0x01, 0xff)},
		{"bad nested entry", withHeader(0x1a, 0x02, 0x0a, 0x05)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := ReadMsg(bytes.NewReader(tc.data), &handshakepb.Hello{}, DefaultMaxMessageSize)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("ReadMsg = %v, want ErrMalformed", err)
			}
		})
	}
}

// TestReadMsgKeepsUnknownFields: a newer peer's extra fields do not break
// an older reader.
func TestReadMsgKeepsUnknownFields(t *testing.T) {
	body, err := proto.Marshal(NewHello(nil))
	if err != nil {
		t.Fatal(err)
	}
	body = append(body, 0xa0, 0x06, 0x2a) // field 100, varint 42
	var h handshakepb.Hello
	if err := ReadMsg(bytes.NewReader(append(header(uint32(len(body))), body...)), &h, DefaultMaxMessageSize); err != nil {
		t.Fatalf("ReadMsg with an unknown field: %v", err)
	}
	if h.GetProtocolVersion() != ProtocolVersion || h.GetMinProtocolVersion() != MinProtocolVersion {
		t.Fatalf("known fields = %d-%d, want %d-%d", h.GetMinProtocolVersion(), h.GetProtocolVersion(), MinProtocolVersion, ProtocolVersion)
	}
}

func TestNegotiate(t *testing.T) {
	tests := []struct {
		name    string
		hello   *handshakepb.Hello
		want    uint32
		wantErr bool
	}{
		{"same version", &handshakepb.Hello{ProtocolVersion: ProtocolVersion, MinProtocolVersion: MinProtocolVersion}, ProtocolVersion, false},
		{"this build's hello", NewHello(nil), ProtocolVersion, false},
		{"only the current version", &handshakepb.Hello{ProtocolVersion: ProtocolVersion, MinProtocolVersion: ProtocolVersion}, ProtocolVersion, false},
		{"client newer, overlapping", &handshakepb.Hello{ProtocolVersion: ProtocolVersion + 5, MinProtocolVersion: MinProtocolVersion}, ProtocolVersion, false},
		{"client newer, overlapping at our top", &handshakepb.Hello{ProtocolVersion: ProtocolVersion + 5, MinProtocolVersion: ProtocolVersion}, ProtocolVersion, false},
		{"client newer, no overlap", &handshakepb.Hello{ProtocolVersion: ProtocolVersion + 5, MinProtocolVersion: ProtocolVersion + 1}, 0, true},
		{"client newer, min unset", &handshakepb.Hello{ProtocolVersion: ProtocolVersion + 1}, 0, true},
		{"client too old", &handshakepb.Hello{ProtocolVersion: MinProtocolVersion - 1, MinProtocolVersion: MinProtocolVersion - 1}, 0, true},
		{"min above max, max ours", &handshakepb.Hello{ProtocolVersion: ProtocolVersion, MinProtocolVersion: ProtocolVersion + 7}, ProtocolVersion, false},
		{"min above max, both too new", &handshakepb.Hello{ProtocolVersion: ProtocolVersion + 3, MinProtocolVersion: ProtocolVersion + 9}, 0, true},
		{"min above max, max too old", &handshakepb.Hello{ProtocolVersion: MinProtocolVersion - 1, MinProtocolVersion: ProtocolVersion}, 0, true},
		{"zeros", &handshakepb.Hello{}, 0, true},
		{"nil hello", nil, 0, true},
		{"max uint32", &handshakepb.Hello{ProtocolVersion: ^uint32(0), MinProtocolVersion: 1}, ProtocolVersion, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Negotiate(tc.hello)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("Negotiate = %d, nil; want an error", got)
				}
				if status.Code(err) != codes.FailedPrecondition {
					t.Fatalf("Negotiate error %v has code %v, want FailedPrecondition", err, status.Code(err))
				}
				if got != 0 {
					t.Fatalf("Negotiate returned version %d along with its error", got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Negotiate = %d, %v; want %d, nil", got, err, tc.want)
			}
			if got < MinProtocolVersion || got > ProtocolVersion {
				t.Fatalf("Negotiate chose %d, outside this build's %d-%d", got, MinProtocolVersion, ProtocolVersion)
			}
		})
	}
}

func TestCheckWelcomeVersion(t *testing.T) {
	for v := uint32(0); v <= ProtocolVersion+2; v++ {
		err := CheckWelcomeVersion(&handshakepb.Welcome{ProtocolVersion: v})
		ok := v >= MinProtocolVersion && v <= ProtocolVersion
		if ok && err != nil {
			t.Errorf("version %d: %v, want nil", v, err)
		}
		if !ok && status.Code(err) != codes.FailedPrecondition {
			t.Errorf("version %d: %v, want FailedPrecondition", v, err)
		}
	}
	if err := CheckWelcomeVersion(&handshakepb.Welcome{ProtocolVersion: ^uint32(0)}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("max uint32: %v, want FailedPrecondition", err)
	}
	if err := CheckWelcomeVersion(nil); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("nil welcome: %v, want FailedPrecondition", err)
	}
	// What a server of this build sends is accepted by a client of this build.
	hello := NewHello(nil)
	v, err := Negotiate(hello)
	if err != nil {
		t.Fatalf("Negotiate: %v", err)
	}
	if err := CheckWelcomeVersion(Accept(v, "id")); err != nil {
		t.Fatalf("CheckWelcomeVersion(Accept(%d)): %v", v, err)
	}
	if err := CheckWelcomeVersion(Reject(errors.New("no"))); err != nil {
		t.Fatalf("CheckWelcomeVersion(Reject): %v", err)
	}
}

func TestAcceptAndReject(t *testing.T) {
	w := Accept(ProtocolVersion, "abc")
	if w.GetId() != "abc" || w.GetProtocolVersion() != ProtocolVersion || w.GetStatus() != nil {
		t.Fatalf("Accept = %v", w)
	}
	r := Reject(status.Error(codes.Unauthenticated, "who are you"))
	if r.GetId() != "" || r.GetStatus().GetCode() != int32(codes.Unauthenticated) || r.GetStatus().GetMessage() != "who are you" {
		t.Fatalf("Reject = %v", r)
	}
	// A non-status error becomes Unknown with its text.
	r = Reject(errors.New("plain"))
	if err := StatusFromProto(r.GetStatus()); status.Code(err) != codes.Unknown || status.Convert(err).Message() != "plain" {
		t.Fatalf("Reject(plain error) decodes to %v", err)
	}
	// Even a nil error still rejects.
	if err := StatusFromProto(Reject(nil).GetStatus()); err == nil || status.Code(err) != codes.Unknown {
		t.Fatalf("Reject(nil) decodes to %v, want an Unknown error", err)
	}
}

func TestStatusRoundTrip(t *testing.T) {
	withDetails, err := status.New(codes.PermissionDenied, "not you").
		WithDetails(wrapperspb.String("policy 7"), durationpb.New(90*time.Second))
	if err != nil {
		t.Fatalf("WithDetails: %v", err)
	}
	tests := []struct {
		name string
		st   *status.Status
	}{
		{"with details", withDetails},
		{"no details", status.New(codes.ResourceExhausted, "too many clients")},
		{"empty message", status.New(codes.Unavailable, "")},
		{"non-ASCII message", status.New(codes.InvalidArgument, "clé invalide ✗")},
		{"code outside the known set", status.New(codes.Code(99), "future")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			check := func(how string, p *handshakepb.Status) {
				t.Helper()
				err := StatusFromProto(p)
				got, ok := status.FromError(err)
				if !ok {
					t.Fatalf("%s: StatusFromProto = %v, not a status error", how, err)
				}
				if !proto.Equal(got.Proto(), tc.st.Proto()) {
					t.Fatalf("%s: round trip = %v, want %v", how, got.Proto(), tc.st.Proto())
				}
			}
			check("in memory", StatusToProto(tc.st))

			// And through the wire, inside a rejecting welcome.
			var w handshakepb.Welcome
			if err := ReadMsg(bytes.NewReader(frame(t, Reject(tc.st.Err()))), &w, DefaultMaxMessageSize); err != nil {
				t.Fatalf("ReadMsg: %v", err)
			}
			check("on the wire", w.GetStatus())
		})
	}

	t.Run("details decode", func(t *testing.T) {
		details := status.Convert(StatusFromProto(StatusToProto(withDetails))).Details()
		if len(details) != 2 {
			t.Fatalf("got %d details, want 2: %v", len(details), details)
		}
		if s, ok := details[0].(*wrapperspb.StringValue); !ok || s.GetValue() != "policy 7" {
			t.Fatalf("detail 0 = %#v", details[0])
		}
		if d, ok := details[1].(*durationpb.Duration); !ok || d.AsDuration() != 90*time.Second {
			t.Fatalf("detail 1 = %#v", details[1])
		}
	})
}

func TestStatusFromProtoOKStillRejects(t *testing.T) {
	detail := mustAny(t, wrapperspb.String("d"))
	tests := []struct {
		name string
		p    *handshakepb.Status
		msg  string
		nDet int
	}{
		{"OK with message", &handshakepb.Status{Code: int32(codes.OK), Message: "all good?"}, "all good?", 0},
		{"OK with details", &handshakepb.Status{Code: int32(codes.OK), Message: "m", Details: []*anypb.Any{detail}}, "m", 1},
		{"empty status", &handshakepb.Status{}, "", 0},
		{"nil status", nil, "", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := StatusFromProto(tc.p)
			if err == nil {
				t.Fatal("StatusFromProto returned nil: a rejection must stay an error")
			}
			st := status.Convert(err)
			if st.Code() != codes.Unknown || st.Message() != tc.msg || len(st.Proto().GetDetails()) != tc.nDet {
				t.Fatalf("StatusFromProto = code %v, message %q, %d details; want Unknown, %q, %d",
					st.Code(), st.Message(), len(st.Proto().GetDetails()), tc.msg, tc.nDet)
			}
		})
	}
}

func TestStatusToProtoNil(t *testing.T) {
	p := StatusToProto(nil) // the nil *status.Status stands for OK
	if p.GetCode() != int32(codes.OK) || p.GetMessage() != "" || len(p.GetDetails()) != 0 {
		t.Fatalf("StatusToProto(nil) = %v", p)
	}
}

func TestMDToProto(t *testing.T) {
	if got := MDToProto(nil); got != nil {
		t.Fatalf("MDToProto(nil) = %v, want nil", got)
	}
	if got := MDToProto(metadata.MD{}); got != nil {
		t.Fatalf("MDToProto(empty) = %v, want nil", got)
	}

	md := metadata.MD{
		"zeta":      {"last"},
		"alpha":     {"1", "2", "3"},
		"m-bin":     {"bin\x00ary"},
		"beta":      {""},
		"x-trace":   {"abc"},
		"no-values": {},
	}
	want := []*handshakepb.MetadataEntry{
		{Key: "alpha", Values: byteValues("1", "2", "3")},
		{Key: "beta", Values: byteValues("")},
		{Key: "m-bin", Values: byteValues("bin\x00ary")},
		{Key: "no-values"},
		{Key: "x-trace", Values: byteValues("abc")},
		{Key: "zeta", Values: byteValues("last")},
	}
	// Map order is random: repeat to catch an unstable order.
	for range 20 {
		got := MDToProto(md)
		if len(got) != len(want) {
			t.Fatalf("MDToProto = %v, want %v", got, want)
		}
		for i := range want {
			if !proto.Equal(got[i], want[i]) {
				t.Fatalf("MDToProto entry %d = %v, want %v (all: %v)", i, got[i], want[i], got)
			}
		}
	}

	// The entries do not alias md's slices.
	got := MDToProto(md)
	md["alpha"][0] = "changed"
	if string(got[0].GetValues()[0]) != "1" {
		t.Fatalf("MDToProto shares its value slices with the input")
	}
}

func TestMDRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		md   metadata.MD
	}{
		{"single", metadata.Pairs("k", "v")},
		{"multiple values keep their order", metadata.Pairs("k", "3", "k", "1", "k", "2")},
		{"several keys", metadata.Pairs("a", "1", "b", "2", "c", "3", "a", "4")},
		{"empty value", metadata.Pairs("k", "")},
		{"-bin key, text value", metadata.Pairs("trace-bin", "plain text")},
		{"-bin key, several values", metadata.Pairs("x-bin", "one", "x-bin", "two")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := MDFromProto(MDToProto(tc.md)); !reflect.DeepEqual(got, tc.md) {
				t.Fatalf("in memory: got %v, want %v", got, tc.md)
			}
			var h handshakepb.Hello
			if err := ReadMsg(bytes.NewReader(frame(t, NewHello(tc.md))), &h, DefaultMaxMessageSize); err != nil {
				t.Fatalf("ReadMsg: %v", err)
			}
			if got := MDFromProto(h.GetMetadata()); !reflect.DeepEqual(got, tc.md) {
				t.Fatalf("on the wire: got %v, want %v", got, tc.md)
			}
		})
	}
}

// TestBinaryMetadataOnTheWire checks that gRPC "-bin" metadata values, which
// are arbitrary bytes and not valid UTF-8, survive the hello's wire form
// (MetadataEntry.values is bytes for that reason).
func TestBinaryMetadataOnTheWire(t *testing.T) {
	md := metadata.Pairs("token-bin", "\xff\xfe\x00\x80binary", "trace-bin", string([]byte{0xc3, 0x28}))
	// In memory the conversion is lossless.
	if got := MDFromProto(MDToProto(md)); !reflect.DeepEqual(got, md) {
		t.Fatalf("in memory: got %v, want %v", got, md)
	}
	var b bytes.Buffer
	if err := WriteMsg(&b, NewHello(md)); err != nil {
		t.Fatalf("WriteMsg of a hello with binary -bin metadata: %v", err)
	}
	var h handshakepb.Hello
	if err := ReadMsg(&b, &h, DefaultMaxMessageSize); err != nil {
		t.Fatalf("ReadMsg: %v", err)
	}
	if got := MDFromProto(h.GetMetadata()); !reflect.DeepEqual(got, md) {
		t.Fatalf("on the wire: got %q, want %q", got, md)
	}
}

func TestMDFromProto(t *testing.T) {
	if got := MDFromProto(nil); got == nil || len(got) != 0 {
		t.Fatalf("MDFromProto(nil) = %#v, want an empty, non-nil MD", got)
	}
	// Keys are lower-cased as gRPC does, and entries for the same key merge
	// in order.
	got := MDFromProto([]*handshakepb.MetadataEntry{
		{Key: "X-Mixed", Values: byteValues("1")},
		{Key: "other", Values: byteValues("a")},
		{Key: "x-mixed", Values: byteValues("2", "3")},
		{Key: "Bin-BIN", Values: byteValues("b")},
		nil,
	})
	want := metadata.MD{"x-mixed": {"1", "2", "3"}, "other": {"a"}, "bin-bin": {"b"}} // the nil entry adds nothing
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("MDFromProto = %v, want %v", got, want)
	}
}

// byteValues converts metadata values to their wire form.
func byteValues(vs ...string) [][]byte {
	out := make([][]byte, len(vs))
	for i, v := range vs {
		out[i] = []byte(v)
	}
	return out
}
