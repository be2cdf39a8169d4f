package session

import (
	"bytes"
	"crypto/tls"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/brpc-go/brpc/internal/muxtls"
	"github.com/brpc-go/brpc/internal/wiretest"
)

// writeWatch tells, once armed, that a Write reached it.
type writeWatch struct {
	net.Conn
	armed   atomic.Bool
	writing chan struct{}
}

func (w *writeWatch) Write(p []byte) (int, error) {
	if w.armed.Load() {
		select {
		case w.writing <- struct{}{}:
		default:
		}
	}
	return w.Conn.Write(p)
}

// TestCloseBreaksAFrameWriteToAPeerThatStoppedReading: the TLS stack under
// yamux closes at once while a batched frame's write is stuck toward a peer
// that does not read (a net.Pipe nobody reads), and the write fails. TLS's
// own Close would queue its close_notify behind the frame and wait out its
// 5 s alert deadline.
func TestCloseBreaksAFrameWriteToAPeerThatStoppedReading(t *testing.T) {
	near, far := net.Pipe()
	defer far.Close()
	ww := &writeWatch{Conn: near, writing: make(chan struct{}, 1)}
	tc, muxConn, _ := tlsLayers(ww, clientTLS(t), true, 0)
	peer := tls.Server(far, serverTLS(t))
	handshook := make(chan error, 1)
	go func() { handshook <- peer.Handshake() }()
	if err := tc.Handshake(); err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	if err := <-handshook; err != nil {
		t.Fatalf("server handshake: %v", err)
	}

	// The peer reads no more: the frame's one write blocks.
	ww.armed.Store(true)
	body := bytes.Repeat([]byte("x"), 1000)
	wrote := make(chan error, 1)
	go func() {
		if _, err := muxConn.Write(wiretest.YamuxHeader(muxtls.YamuxTypeData, uint32(len(body)))); err != nil {
			wrote <- err
			return
		}
		_, err := muxConn.Write(body)
		wrote <- err
	}()
	<-ww.writing

	start := time.Now()
	muxConn.Close()
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Close with a frame write stuck took %v, want well under TLS's 5 s alert deadline", took)
	}
	if err := <-wrote; err == nil {
		t.Error("the stuck frame write succeeded after Close, want an error")
	}
}
