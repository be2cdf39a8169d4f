package session

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/brpc-go/brpc/internal/muxtls"
)

// yamuxFrame encodes one yamux frame: header and body.
func yamuxFrame(typ byte, flags uint16, id uint32, body []byte, length uint32) []byte {
	f := make([]byte, muxtls.YamuxHeaderSize, muxtls.YamuxHeaderSize+len(body))
	f[1] = typ
	binary.BigEndian.PutUint16(f[2:], flags)
	binary.BigEndian.PutUint32(f[4:], id)
	if body != nil {
		length = uint32(len(body))
	}
	binary.BigEndian.PutUint32(f[8:], length)
	return append(f, body...)
}

// oneByteReader hands out its bytes one Read at a time, so that every
// frame header and body is split across Reads.
type oneByteReader struct{ b []byte }

func (r *oneByteReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	p[0] = r.b[0]
	r.b = r.b[1:]
	return 1, nil
}

func (r *oneByteReader) Write(p []byte) (int, error) { return len(p), nil }
func (r *oneByteReader) Close() error                { return nil }

func TestFrameInspectorRules(t *testing.T) {
	open := func(id uint32) []byte { return yamuxFrame(yamuxTypeWindowUpdate, yamuxFlagSYN, id, nil, 0) }
	data := func(id uint32, body []byte) []byte { return yamuxFrame(muxtls.YamuxTypeData, 0, id, body, 0) }
	ping := yamuxFrame(yamuxTypePing, yamuxFlagSYN, 0, nil, 7)
	// A body that looks like a SYN header must not be taken for one.
	fakeSYN := open(3)
	cases := []struct {
		name      string
		admitted  bool // admitted after the first frame
		frames    [][]byte
		violation bool
	}{
		{"hello on the control stream", false, [][]byte{open(1), data(1, []byte("hello")), ping}, false},
		{"data that looks like a header", false, [][]byte{open(1), data(1, fakeSYN), data(1, fakeSYN)}, false},
		{"second stream before the welcome", false, [][]byte{open(1), data(1, []byte("hi")), open(3)}, true},
		{"second stream by a data frame's SYN", false, [][]byte{open(1), yamuxFrame(muxtls.YamuxTypeData, yamuxFlagSYN, 3, []byte("x"), 0)}, true},
		{"second stream after the welcome", true, [][]byte{open(1), open(3), data(3, []byte("grpc")), data(1, nil)}, false},
		{"data on the control stream after the welcome", true, [][]byte{open(1), data(1, []byte("x"))}, true},
		{"control stream overrun", false, [][]byte{open(1), data(1, make([]byte, 200)), data(1, make([]byte, 200))}, true},
		{"frames on unknown streams", false, [][]byte{open(1), data(9, []byte("zz")), yamuxFrame(yamuxTypeWindowUpdate, 0, 9, nil, 100)}, false},
		{"unanswered pings", false, append([][]byte{open(1)}, bytes.Split(bytes.Repeat(append(ping, '|'), maxUnansweredPings+1), []byte{'|'})...), true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := &oneByteReader{b: bytes.Join(c.frames, nil)}
			fi := &frameInspector{ReadWriteCloser: in, limit: 300}
			var failed error
			fi.setFail(func(err error) { failed = err })
			if c.admitted {
				// Let the first frame through first.
				for range len(c.frames[0]) {
					if _, err := fi.Read(make([]byte, 1)); err != nil {
						t.Fatalf("reading the first frame: %v", err)
					}
				}
				fi.admitted.Store(true)
			}
			_, err := io.Copy(io.Discard, fi)
			var lce *localCloseError
			switch {
			case c.violation && !(errors.As(err, &lce) && lce.code == CodeProtocol):
				t.Fatalf("read error %v, want a protocol error", err)
			case c.violation && failed != err:
				t.Fatalf("the session was told %v, want %v", failed, err)
			case !c.violation && err != nil:
				t.Fatalf("read error %v, want none", err)
			}
		})
	}
}

func TestFrameInspectorCountsPingAnswers(t *testing.T) {
	ping := yamuxFrame(yamuxTypePing, yamuxFlagSYN, 0, nil, 1)
	pong := yamuxFrame(yamuxTypePing, yamuxFlagACK, 0, nil, 1)
	in := &oneByteReader{}
	fi := &frameInspector{ReadWriteCloser: in, limit: 300}
	fi.setFail(func(error) {})
	for i := range 10 * maxUnansweredPings {
		in.b = append(in.b, ping...)
		if _, err := io.Copy(io.Discard, fi); err != nil {
			t.Fatalf("ping %d, each answered: %v", i, err)
		}
		// yamux writes a data frame's header and body apart; the answer
		// follows them.
		fi.Write(yamuxFrame(muxtls.YamuxTypeData, 0, 2, nil, 3))
		fi.Write([]byte("abc"))
		fi.Write(pong)
	}
}
