package handshake

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/brpc-go/brpc/internal/session"
)

// silentSession opens streams to a peer that reads everything and never
// answers.
type silentSession struct {
	session.Session // only OpenStream is used
	mu              sync.Mutex
	peers           []net.Conn
}

func (s *silentSession) OpenStream(context.Context) (net.Conn, error) {
	c, p := net.Pipe()
	s.mu.Lock()
	s.peers = append(s.peers, p)
	s.mu.Unlock()
	go func() { _, _ = io.Copy(io.Discard, p) }()
	return c, nil
}

func (s *silentSession) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.peers {
		p.Close()
	}
}

// A dial timing out as the server stays silent ends the handshake through
// the stream's deadline and ctx's callback at about the same moment; the
// callback must not touch what SendHello returns (the race detector and a
// nil stream caught it doing so under load).
func TestSendHelloTimeoutRacesNothing(t *testing.T) {
	sess := &silentSession{}
	defer sess.close()
	for i := range 50 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i%5)*time.Millisecond+time.Millisecond)
		ctrl, _, err := SendHello(ctx, sess, nil)
		cancel()
		if err == nil || ctrl != nil {
			t.Fatalf("SendHello to a silent server: stream %v, error %v; want no stream and an error", ctrl, err)
		}
	}
}
