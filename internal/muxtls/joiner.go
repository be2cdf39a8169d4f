package muxtls

import (
	"encoding/binary"
	"io"
	"sync"
)

// The yamux frame header (hashicorp/yamux spec.md): version (1 byte), type
// (1), flags (2), stream ID (4), length (4). YamuxHeaderSize is its size and
// YamuxTypeData the type of a data frame; the TCP sessions' frame inspector
// reads the same headers.
const (
	YamuxHeaderSize = 12
	YamuxTypeData   = 0
)

// maxJoinedBody is the largest body Joiner sends in one Write with its
// header: one TLS record carries at most 16 KiB of plaintext, so a larger
// body takes several records anyway and the header's own record hardly
// matters.
const maxJoinedBody = 16<<10 - YamuxHeaderSize

var joinBufs = sync.Pool{New: func() any { b := make([]byte, 0, YamuxHeaderSize+maxJoinedBody); return &b }}

// Joiner sits between yamux and the TLS connection. yamux's send loop
// writes each data frame as two Writes, header then body, which on a
// tls.Conn makes two records, two encryptions and two system calls, and two
// records for the peer to decrypt. Joiner holds a data frame's header
// back and sends it with a body of up to maxJoinedBody in one Write. With a
// Batcher under the TLS connection (batch), all the records of a
// data frame of up to maxBatch go out in one system call. Frames without a
// body (window updates, pings, a data frame with only flags) go straight
// through. Only yamux's send loop writes, one frame at a time.
type Joiner struct {
	io.ReadWriteCloser
	batch *Batcher // nil: no batching

	mu      sync.Mutex
	hdr     [YamuxHeaderSize]byte
	pending int // body length the held header announces; 0: none held
}

// NewJoiner returns the Joiner of yamux frames written to w: the TLS
// connection, or a layer right on it. batch is the Batcher under that TLS
// connection, or nil for no batching.
func NewJoiner(w io.ReadWriteCloser, batch *Batcher) *Joiner {
	return &Joiner{ReadWriteCloser: w, batch: batch}
}

// Write passes p on, except a data frame's header, which it holds back
// until the frame's body comes (the next Write) and sends with it.
func (j *Joiner) Write(p []byte) (int, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.pending == 0 {
		if len(p) == YamuxHeaderSize && p[1] == YamuxTypeData {
			if n := binary.BigEndian.Uint32(p[8:12]); n > 0 {
				copy(j.hdr[:], p)
				j.pending = int(n)
				return len(p), nil
			}
		}
		return j.ReadWriteCloser.Write(p)
	}
	want := j.pending
	j.pending = 0
	batched := j.batch != nil && len(p) <= maxBatch
	if batched {
		j.batch.hold()
	}
	n, err := j.writeFrame(want, p)
	if batched {
		if ferr := j.batch.flush(); ferr != nil && err == nil {
			n, err = 0, ferr
		}
	}
	return n, err
}

// writeFrame writes the held header and p, the body it announced (want
// bytes).
func (j *Joiner) writeFrame(want int, p []byte) (int, error) {
	if len(p) != want || len(p) > maxJoinedBody {
		// Not the body the header announced, or too large to join: send
		// both as they came.
		if _, err := j.ReadWriteCloser.Write(j.hdr[:]); err != nil {
			return 0, err
		}
		return j.ReadWriteCloser.Write(p)
	}
	bp := joinBufs.Get().(*[]byte)
	buf := append(append((*bp)[:0], j.hdr[:]...), p...)
	_, err := j.ReadWriteCloser.Write(buf)
	*bp = buf[:0]
	joinBufs.Put(bp)
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close closes the TLS connection or, while yamux's send loop is in the
// middle of a frame, the TCP connection under it. A peer that stopped
// reading holds that write until its socket drains. crypto/tls breaks a
// Write in flight the same way, but a batched frame's records are written
// after TLS's Write has returned, so TLS would queue its close_notify alert
// behind them and wait out its 5 s alert deadline. Otherwise the TLS
// connection closes with no frame begun meanwhile: one would fail instead.
func (j *Joiner) Close() error {
	if j.batch != nil {
		if !j.mu.TryLock() {
			return j.batch.Conn.Close()
		}
		defer j.mu.Unlock()
	}
	return j.ReadWriteCloser.Close()
}
