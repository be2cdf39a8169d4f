package handshake

import (
	"bytes"
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc/internal/session"
)

// welcomeConn is a control stream that takes the hello and answers with
// a welcome; onLast runs as the read that ends the welcome returns. Its
// deadlines do nothing and take no lock, so that nothing orders the
// deadline a canceled context sets with what the caller does meanwhile.
type welcomeConn struct {
	net.Conn
	welcome *bytes.Reader
	onLast  func()
	cut     chan struct{} // gets a value when a deadline is set
}

func (c *welcomeConn) Write(p []byte) (int, error) { return len(p), nil }
func (c *welcomeConn) Read(p []byte) (int, error) {
	n, err := c.welcome.Read(p)
	if c.welcome.Len() == 0 && c.onLast != nil {
		c.onLast()
		c.onLast = nil
	}
	return n, err
}
func (c *welcomeConn) Close() error { return nil }
func (c *welcomeConn) SetDeadline(time.Time) error {
	select {
	case c.cut <- struct{}{}:
	default:
	}
	return nil
}

type streamSession struct {
	session.Session
	conn net.Conn
}

func (s streamSession) OpenStream(context.Context) (net.Conn, error) { return s.conn, nil }

func TestSendHelloContextEndsAsWelcomeArrives(t *testing.T) {
	// Dial's context ends just as the welcome is read: SendHello fails
	// with the context's status, and the deadline it cuts short on the
	// control stream, from another goroutine, reaches the stream it
	// opened, not the nil it returns.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	conn := &welcomeConn{welcome: bytes.NewReader(frame(t, Accept(ProtocolVersion, "id"))), onLast: cancel, cut: make(chan struct{}, 1)}
	ctrl, _, err := SendHello(ctx, streamSession{conn: conn}, nil)
	if ctrl != nil || status.Code(err) != codes.Canceled {
		t.Fatalf("SendHello with its context canceled as the welcome came: %v, %v; want nil and Canceled", ctrl, err)
	}
	select {
	case <-conn.cut:
	case <-time.After(10 * time.Second):
		t.Fatal("the control stream's deadline was never cut short")
	}
}
