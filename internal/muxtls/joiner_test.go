package muxtls

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"

	"github.com/brpc-go/brpc/internal/wiretest"
)

// recordingConn records each Write it gets.
type recordingConn struct {
	writes [][]byte
	err    error
}

func (r *recordingConn) Read([]byte) (int, error) { return 0, io.EOF }
func (r *recordingConn) Close() error             { return nil }
func (r *recordingConn) Write(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	r.writes = append(r.writes, bytes.Clone(p))
	return len(p), nil
}

func TestFrameJoinerJoinsDataFrames(t *testing.T) {
	body := bytes.Repeat([]byte("x"), 100)
	large := bytes.Repeat([]byte("y"), maxJoinedBody+1)
	tests := []struct {
		name   string
		writes [][]byte
		want   [][]byte // what reaches the connection, Write by Write
	}{
		{
			name:   "data frame: header and body in one write",
			writes: [][]byte{wiretest.YamuxHeader(YamuxTypeData, 100), body},
			want:   [][]byte{append(wiretest.YamuxHeader(YamuxTypeData, 100), body...)},
		},
		{
			name:   "window update goes through at once",
			writes: [][]byte{wiretest.YamuxHeader(1, 65536)},
			want:   [][]byte{wiretest.YamuxHeader(1, 65536)},
		},
		{
			name:   "data frame without a body goes through at once",
			writes: [][]byte{wiretest.YamuxHeader(YamuxTypeData, 0)},
			want:   [][]byte{wiretest.YamuxHeader(YamuxTypeData, 0)},
		},
		{
			name:   "large body: header and body apart",
			writes: [][]byte{wiretest.YamuxHeader(YamuxTypeData, uint32(len(large))), large},
			want:   [][]byte{wiretest.YamuxHeader(YamuxTypeData, uint32(len(large))), large},
		},
		{
			name:   "a body of another length is not joined",
			writes: [][]byte{wiretest.YamuxHeader(YamuxTypeData, 100), body[:50]},
			want:   [][]byte{wiretest.YamuxHeader(YamuxTypeData, 100), body[:50]},
		},
		{
			name: "frames in a row",
			writes: [][]byte{
				wiretest.YamuxHeader(YamuxTypeData, 100), body,
				wiretest.YamuxHeader(2, 0),
				wiretest.YamuxHeader(YamuxTypeData, 3), []byte("abc"),
			},
			want: [][]byte{
				append(wiretest.YamuxHeader(YamuxTypeData, 100), body...),
				wiretest.YamuxHeader(2, 0),
				append(wiretest.YamuxHeader(YamuxTypeData, 3), "abc"...),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc := &recordingConn{}
			j := &Joiner{ReadWriteCloser: rc}
			for i, w := range tt.writes {
				n, err := j.Write(w)
				if err != nil || n != len(w) {
					t.Fatalf("write %d: got (%d, %v), want (%d, nil)", i, n, err, len(w))
				}
			}
			if len(rc.writes) != len(tt.want) {
				t.Fatalf("the connection got %d writes, want %d", len(rc.writes), len(tt.want))
			}
			for i := range tt.want {
				if !bytes.Equal(rc.writes[i], tt.want[i]) {
					t.Errorf("write %d: got %d bytes %x..., want %d bytes %x...", i, len(rc.writes[i]), rc.writes[i][:12], len(tt.want[i]), tt.want[i][:12])
				}
			}
		})
	}
}

func TestFrameJoinerReportsWriteErrorsOnTheBody(t *testing.T) {
	broken := errors.New("broken pipe")
	rc := &recordingConn{}
	j := &Joiner{ReadWriteCloser: rc}
	if _, err := j.Write(wiretest.YamuxHeader(YamuxTypeData, 4)); err != nil {
		t.Fatalf("holding the header: %v", err)
	}
	rc.err = broken
	if n, err := j.Write([]byte("body")); !errors.Is(err, broken) || n != 0 {
		t.Fatalf("body write on a broken connection: got (%d, %v), want (0, %v)", n, err, broken)
	}
}

// recordingNetConn is a net.Conn that records each Write it gets.
type recordingNetConn struct {
	net.Conn // nil: only Write and Close are used
	recordingConn
}

func (r *recordingNetConn) Read(p []byte) (int, error)  { return r.recordingConn.Read(p) }
func (r *recordingNetConn) Write(p []byte) (int, error) { return r.recordingConn.Write(p) }
func (r *recordingNetConn) Close() error                { return nil }

func TestRecordBatcherSendsAHeldFrameInOneWrite(t *testing.T) {
	rc := &recordingNetConn{}
	rb := &Batcher{Conn: rc}
	// Outside hold and flush, writes go through at once.
	if _, err := rb.Write([]byte("alert")); err != nil {
		t.Fatal(err)
	}
	if len(rc.writes) != 1 {
		t.Fatalf("a write outside hold reached the connection %d times, want 1", len(rc.writes))
	}
	// A frame too large to join (header and body written apart, as TLS
	// would write several records) reaches the connection in one write.
	j := &Joiner{ReadWriteCloser: rb, batch: rb}
	body := bytes.Repeat([]byte("z"), 40<<10)
	hdr := wiretest.YamuxHeader(YamuxTypeData, uint32(len(body)))
	for _, w := range [][]byte{hdr, body} {
		if n, err := j.Write(w); err != nil || n != len(w) {
			t.Fatalf("write: (%d, %v)", n, err)
		}
	}
	if len(rc.writes) != 2 || !bytes.Equal(rc.writes[1], append(bytes.Clone(hdr), body...)) {
		t.Fatalf("the connection got %d writes; want the alert, then header and body in one write", len(rc.writes))
	}
	// A window update after it goes through on its own.
	if _, err := j.Write(wiretest.YamuxHeader(1, 100)); err != nil {
		t.Fatal(err)
	}
	if len(rc.writes) != 3 {
		t.Fatalf("the connection got %d writes, want 3", len(rc.writes))
	}
	// A frame above maxBatch is not held: its writes go through one by one.
	big := bytes.Repeat([]byte("b"), maxBatch+1)
	for _, w := range [][]byte{wiretest.YamuxHeader(YamuxTypeData, uint32(len(big))), big} {
		if _, err := j.Write(w); err != nil {
			t.Fatal(err)
		}
	}
	if len(rc.writes) != 5 {
		t.Fatalf("a frame above maxBatch: the connection got %d writes in all, want 5", len(rc.writes))
	}
	// A failed flush is the frame's error.
	broken := errors.New("broken pipe")
	rc.err = broken
	if _, err := j.Write(hdr); err != nil {
		t.Fatal(err)
	}
	if n, err := j.Write(body); !errors.Is(err, broken) || n != 0 {
		t.Fatalf("frame on a broken connection: (%d, %v), want (0, %v)", n, err, broken)
	}
}
