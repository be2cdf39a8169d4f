package client

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/brpc-go/brpc/internal/session"
)

// A client's QUIC handshake waits for a server that says nothing (a
// restarted server holding Initials until it has a handshake slot free)
// as long as a brpc server lets a handshake take, not quic-go's default
// 5 s: it is the caller's deadline that ends this dial, at 7 s.
func TestQUICHandshakeWaitsForASilentServer(t *testing.T) {
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := udp.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	c := &Conn{}
	ctx, cancel := context.WithTimeout(context.Background(), 7*time.Second)
	defer cancel()
	start := time.Now()
	s, err := c.dialTransport(ctx, Endpoint{HostPort: udp.LocalAddr().String(), TLS: &tls.Config{ServerName: "brpc", NextProtos: []string{"brpc"}}}, session.TransportQUIC)
	if err == nil {
		s.Close(0, "")
		t.Fatal("a QUIC dial to a server that never answers succeeded")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the dial ended after %v with %v; want the caller's deadline (7 s) to end it", time.Since(start).Round(time.Millisecond), err)
	}
}
