package muxtls

import (
	"net"
	"sync"
)

// maxBatch is the largest yamux frame body whose TLS records are sent in one
// system call; larger frames (a peer's grpc-go configured with a big write
// buffer) are written record by record, so that no session keeps a large
// buffer.
const maxBatch = 64 << 10

var batchBufs = sync.Pool{New: func() any { b := make([]byte, 0, maxBatch+maxBatch/8); return &b }}

// Batcher sits under the TLS connection yamux runs on. crypto/tls
// writes every record of a Write with its own system call: a 32 KiB frame
// is three records (the header's and two of 16 KiB), so three calls.
// Between hold and flush, Batcher collects what TLS writes and then
// sends it with one call. Outside that window it writes through, so TLS's
// own messages (handshake, alerts, key updates) are never delayed. Every
// write to the connection happens under mu, so bytes reach the wire in the
// order TLS wrote them.
type Batcher struct {
	net.Conn

	mu   sync.Mutex
	held *[]byte // collecting between hold and flush; nil otherwise
}

// NewBatcher returns the Batcher of what TLS writes to raw.
func NewBatcher(raw net.Conn) *Batcher { return &Batcher{Conn: raw} }

func (b *Batcher) hold() {
	b.mu.Lock()
	if b.held == nil {
		b.held = batchBufs.Get().(*[]byte)
		*b.held = (*b.held)[:0]
	}
	b.mu.Unlock()
}

// Write collects p while a frame is held (between hold and flush) and
// writes it through otherwise.
func (b *Batcher) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.held != nil {
		*b.held = append(*b.held, p...)
		return len(p), nil
	}
	return b.Conn.Write(p)
}

// flush sends what was collected since hold, in one write.
func (b *Batcher) flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	h := b.held
	if h == nil {
		return nil
	}
	b.held = nil
	var err error
	if len(*h) > 0 {
		_, err = b.Conn.Write(*h)
	}
	if cap(*h) <= 2*maxBatch {
		*h = (*h)[:0]
		batchBufs.Put(h)
	}
	return err
}
