package handshake

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/brpc-go/brpc/internal/handshake/handshakepb"
)

// fuzzMaxSize is small so that the fuzzer reaches the size check often.
const fuzzMaxSize = 512

// FuzzReadMsg feeds arbitrary bytes to ReadMsg for a Hello. It must never
// panic, fail only with the errors it documents, consume exactly one frame on
// success, and whatever it decodes must survive WriteMsg and ReadMsg again.
func FuzzReadMsg(f *testing.F) {
	valid := func(m proto.Message) []byte { return frame(f, m) }
	hello := valid(NewHello(metadata.Pairs("k", "v", "k", "w", "trace-bin", "abc")))
	f.Add(hello)
	f.Add(valid(&handshakepb.Hello{}))
	f.Add(append(valid(NewHello(nil)), hello...))            // two frames
	f.Add(hello[:len(hello)-3])                              // truncated body
	f.Add(hello[:2])                                         // truncated header
	f.Add([]byte{})                                          // nothing
	f.Add(append(header(fuzzMaxSize+1), make([]byte, 8)...)) // just too large
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x08, 0x01})        // 4 GiB
	f.Add(append(header(4), 0xff, 0xff, 0xff, 0xff))         // garbage body
	f.Add(append(header(5), 0x1a, 0x03, 0x0a, 0x01, 0xff))   // invalid UTF-8 key
	f.Add(append(header(3), 0xa0, 0x06, 0x2a))               // unknown field

	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		var h handshakepb.Hello
		err := ReadMsg(r, &h, fuzzMaxSize)
		if err != nil {
			switch {
			case err == io.EOF:
				if len(data) != 0 {
					t.Fatalf("io.EOF with %d bytes of input", len(data))
				}
			case errors.Is(err, io.ErrUnexpectedEOF):
			case errors.Is(err, ErrTooLarge):
				if len(data) < 4 || binary.BigEndian.Uint32(data) <= fuzzMaxSize {
					t.Fatalf("ErrTooLarge for a frame within the cap: %v", err)
				}
				if r.Len() != len(data)-4 {
					t.Fatalf("ErrTooLarge after reading %d bytes, want only the 4 of the header", len(data)-r.Len())
				}
			case errors.Is(err, ErrMalformed):
			default:
				t.Fatalf("ReadMsg returned an undocumented error: %v", err)
			}
			return
		}

		n := int(binary.BigEndian.Uint32(data))
		if n > fuzzMaxSize {
			t.Fatalf("ReadMsg accepted a %d-byte frame with a cap of %d", n, fuzzMaxSize)
		}
		if consumed := len(data) - r.Len(); consumed != 4+n {
			t.Fatalf("ReadMsg consumed %d bytes for a frame of 4+%d", consumed, n)
		}

		var b bytes.Buffer
		if err := WriteMsg(&b, &h); err != nil {
			t.Fatalf("WriteMsg of a decoded hello: %v", err)
		}
		var again handshakepb.Hello
		if err := ReadMsg(&b, &again, DefaultMaxMessageSize); err != nil {
			t.Fatalf("ReadMsg of a re-encoded hello: %v", err)
		}
		if b.Len() != 0 {
			t.Fatalf("%d bytes left after the re-encoded frame", b.Len())
		}
		if !proto.Equal(&h, &again) {
			t.Fatalf("re-encoded hello differs:\n got %v\nwant %v", &again, &h)
		}
		// The metadata conversion must not panic on anything decoded.
		_ = MDToProto(MDFromProto(h.GetMetadata()))
	})
}
