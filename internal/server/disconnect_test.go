package server

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/brpc-go/brpc/internal/session"
)

// TestDisconnectOfEndings checks the disconnect kind and reason each way a
// session can end is reported with, both read from the one Ending.
func TestDisconnectOfEndings(t *testing.T) {
	tests := []struct {
		name   string
		ending session.Ending
		kind   DisconnectKind
		reason string // a prefix of the reason
	}{
		{"Stop", session.Ending{Kind: session.EndClosed, Code: session.CodeShutdown, Reason: "server stopped"}, ServerStopped, "server stopped"},
		{"a Listener closed", session.Ending{Kind: session.EndClosed, Code: session.CodeShutdown, Reason: "listener closed"}, ServerStopped, "listener closed"},
		{"replaced", session.Ending{Kind: session.EndClosed, Code: session.CodeReplaced, Reason: "replaced by a newer session"}, Replaced, "replaced by a newer session"},
		{"another close by the server", session.Ending{Kind: session.EndClosed, Code: session.CodeProtocol, Reason: "bad"}, ConnectionLost, "server closed the connection (protocol error): bad"},
		{"the client's plain close", session.Ending{Kind: session.EndClosed, ByPeer: true, Code: session.CodeNormal, Reason: "bye"}, ClientClosed, "client closed the connection"},
		{"the client's close with a code", session.Ending{Kind: session.EndClosed, ByPeer: true, Code: session.CodeProtocol, Reason: "bad"}, ClientClosed, "client closed the connection (protocol error): bad"},
		{"a silent client", session.Ending{Kind: session.EndKeepaliveTimeout, Reason: "silent"}, KeepaliveTimeout, "client silent past the keepalive timeout"},
		{"a lost connection", session.Ending{Kind: session.EndConnectionLost, Reason: "reset"}, ConnectionLost, "connection ended: reset"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kind, reason, _ := disconnectOf(tt.ending, true)
			if kind != tt.kind || !strings.HasPrefix(reason, tt.reason) {
				t.Errorf("disconnectOf(%v) = %q, %q; want %q, %q", tt.ending, kind, reason, tt.kind, tt.reason)
			}
		})
	}
}

// TestConcurrentClosesAgreeOnKindAndReason ends sessions by a replacement
// and by Stop at once, as a newer session and a stopping server can, and
// checks that the disconnect's kind and reason always tell of the same
// close, on both transports.
func TestConcurrentClosesAgreeOnKindAndReason(t *testing.T) {
	const replacedReason = "replaced by a newer session of the same client"
	for _, tr := range []string{session.TransportQUIC, session.TransportTCP} {
		t.Run(tr, func(t *testing.T) {
			pair := sessionPairs(t, tr)
			seen := map[DisconnectKind]int{}
			for i := 0; i < 20; i++ {
				client, server := pair()
				ss := &Session{sess: server}
				var wg sync.WaitGroup
				wg.Add(2)
				go func() {
					defer wg.Done()
					ss.closeTold(session.CodeReplaced, replacedReason, errors.New("replaced"), time.Now().Add(bound), 0)
				}()
				go func() {
					defer wg.Done()
					ss.closeTold(session.CodeShutdown, "server stopped", errShuttingDown, time.Now().Add(bound), 0)
				}()
				wg.Wait()
				<-server.Context().Done()
				kind, reason, _ := ss.disconnectReason()
				switch {
				case kind == Replaced && reason == replacedReason, kind == ServerStopped && reason == "server stopped":
				default:
					t.Fatalf("disconnect reported as %q with reason %q: kind and reason disagree", kind, reason)
				}
				seen[kind]++
				client.Close(session.CodeNormal, "done")
			}
			t.Logf("kinds seen: %v", seen)
		})
	}
}

// sessionPairs listens on tr and returns a function that connects a client
// session to a server session over it; everything is closed by t.Cleanup.
func sessionPairs(t *testing.T, tr string) func() (client, server session.Session) {
	t.Helper()
	serverTLS, clientTLS := tlsPair(t)

	var accept func(context.Context) (session.Session, error)
	var dial func(context.Context, string) (session.Session, error)
	var addr string
	switch tr {
	case session.TransportQUIC:
		l, err := session.ListenUDP("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		if err := l.Start(serverTLS, session.QUICConfig{Settings: settings()}); err != nil {
			t.Fatal(err)
		}
		accept, addr = l.Accept, l.Addr().String()
		dial = func(ctx context.Context, a string) (session.Session, error) {
			return session.DialQUIC(ctx, a, clientTLS, session.QUICConfig{Settings: settings()})
		}
	default:
		l, err := session.ListenTCP("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		if err := l.Start(serverTLS, session.TCPConfig{Settings: settings()}); err != nil {
			t.Fatal(err)
		}
		accept, addr = l.Accept, l.Addr().String()
		dial = func(ctx context.Context, a string) (session.Session, error) {
			return session.DialTCP(ctx, a, clientTLS, session.TCPConfig{Settings: settings()})
		}
	}
	return func() (session.Session, session.Session) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), bound)
		defer cancel()
		accepted := make(chan session.Session, 1)
		go func() {
			s, _ := accept(ctx)
			accepted <- s
		}()
		c, err := dial(ctx, addr)
		if err != nil {
			cancel()
			<-accepted
			t.Fatalf("dial %s: %v", tr, err)
		}
		s := <-accepted
		if s == nil {
			c.Close(session.CodeNormal, "no server side")
			t.Fatalf("accept %s: no session", tr)
		}
		return c, s
	}
}
