// Package wiretest holds what brpc's tests use to look at the bytes its
// connections write: a net.Conn that records its writes, and yamux frame
// headers built by hand. It is imported by tests only.
package wiretest

import (
	"bytes"
	"encoding/binary"
	"net"
	"sync"
	"testing"
)

// Recorder is a net.Conn that records, while on, each Write that reaches
// it (a copy of its bytes, one entry per Write).
type Recorder struct {
	net.Conn

	mu     sync.Mutex
	on     bool
	writes [][]byte
}

// Write records p when recording is on, then writes it to the Conn.
func (r *Recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	if r.on {
		r.writes = append(r.writes, bytes.Clone(p))
	}
	r.mu.Unlock()
	return r.Conn.Write(p)
}

// Record switches recording on or off and returns (and forgets) what was
// recorded so far.
func (r *Recorder) Record(on bool) [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	w := r.writes
	r.writes, r.on = nil, on
	return w
}

// yamuxHeaderSize is the size of a yamux frame header (muxtls's
// YamuxHeaderSize, written out here since muxtls's own tests import this
// package).
const yamuxHeaderSize = 12

// YamuxHeader is a yamux frame header of type typ (0 is a data frame) for
// stream 7, announcing length bytes.
func YamuxHeader(typ byte, length uint32) []byte {
	h := make([]byte, yamuxHeaderSize)
	h[1] = typ
	binary.BigEndian.PutUint32(h[4:8], 7) // stream ID
	binary.BigEndian.PutUint32(h[8:12], length)
	return h
}

// TLSPlaintexts returns the plaintext size of each TLS 1.3 record in w, a
// socket write of whole records (each an AEAD record: its content type
// byte and 16-byte tag come on top of the plaintext). It fails the test
// when w ends inside a record.
func TLSPlaintexts(t testing.TB, w []byte) []int {
	t.Helper()
	var sizes []int
	for len(w) > 0 {
		if len(w) < 5 {
			t.Fatalf("a socket write ends in %d bytes of a TLS record header", len(w))
		}
		n := int(binary.BigEndian.Uint16(w[3:5]))
		if len(w) < 5+n || n < 17 {
			t.Fatalf("a socket write holds a TLS record of %d bytes, and %d bytes after its header", n, len(w)-5)
		}
		sizes = append(sizes, n-17)
		w = w[5+n:]
	}
	return sizes
}
