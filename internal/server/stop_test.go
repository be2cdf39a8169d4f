package server

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/brpc-go/brpc/internal/handshake"
	"github.com/brpc-go/brpc/internal/handshake/handshakepb"
	"github.com/brpc-go/brpc/internal/session"
)

// tcpListener shows a TCP session listener to the core as the public
// listeners do.
type tcpListener struct {
	l   *session.TCPListener
	tls *tls.Config
}

func (l *tcpListener) Start(cfg ListenConfig) (Acceptor, error) {
	return l, l.l.Start(l.tls, cfg.TCP)
}
func (l *tcpListener) Accept() (session.Session, error) { return l.l.Accept(context.Background()) }
func (l *tcpListener) StopAccepting()                   { _ = l.l.StopAccepting() }
func (l *tcpListener) Close() error                     { return l.l.Close() }

// TestStopAnnouncesShutdown stops a server with one client that reads the
// control stream and many that do not, on each transport. The reading
// client is told, on the control stream, that the server shuts down
// (CodeShutdown: on TCP the close itself carries no code); the silent ones
// hold Stop for one short linger in all, not one each; every disconnect is
// reported as server_stopped.
func TestStopAnnouncesShutdown(t *testing.T) {
	const silent = 20
	for _, tr := range []string{session.TransportQUIC, session.TransportTCP} {
		t.Run(tr, func(t *testing.T) {
			serverTLS, clientTLS := tlsPair(t)

			var lis Listener
			var addr string
			var dial func(ctx context.Context) (session.Session, error)
			if tr == session.TransportQUIC {
				l, err := session.ListenUDP("127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				lis, addr = &quicListener{l: l, tls: serverTLS}, l.Addr().String()
				dial = func(ctx context.Context) (session.Session, error) {
					return session.DialQUIC(ctx, addr, clientTLS, session.QUICConfig{Settings: settings()})
				}
			} else {
				l, err := session.ListenTCP("127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				lis, addr = &tcpListener{l: l, tls: serverTLS}, l.Addr().String()
				dial = func(ctx context.Context) (session.Session, error) {
					return session.DialTCP(ctx, addr, clientTLS, session.TCPConfig{Settings: settings()})
				}
			}

			var mu sync.Mutex
			var disconnects []Event
			connected := make(chan struct{}, silent+1)
			core := New(grpc.NewServer(), Config{
				Session:          settings(),
				HandshakeTimeout: bound,
				MaxHelloSize:     64 << 10,
				OnEvent: func(ev Event) {
					switch ev.Type {
					case Connected:
						connected <- struct{}{}
					case Disconnected:
						mu.Lock()
						disconnects = append(disconnects, ev)
						mu.Unlock()
					}
				},
			})
			served := make(chan error, 1)
			go func() { served <- core.Serve(lis) }()

			ctx, cancel := context.WithTimeout(context.Background(), bound)
			defer cancel()
			clients, reader := helloClients(t, ctx, silent+1, dial, connected)

			// The first client reads its control stream, as brpc's client
			// does, and closes the session as the server announces.
			notice := make(chan *handshakepb.Closing, 1)
			go func() {
				defer close(notice)
				for {
					var n handshakepb.Notice
					if err := handshake.ReadMsg(reader, &n, handshake.MaxWelcomeSize); err != nil {
						return
					}
					if cl := n.GetClosing(); cl != nil {
						clients[0].PeerAnnounced(session.CloseCode(cl.GetCode()), cl.GetReason())
						notice <- cl
						return
					}
				}
			}()

			start := time.Now()
			core.Stop()
			took := time.Since(start)
			if err := <-served; err != nil {
				t.Fatalf("Serve after Stop: %v", err)
			}
			// Told one by one, the silent clients would hold Stop for
			// stopLinger each.
			if limit := 5 * time.Second; took > limit {
				t.Errorf("Stop took %v with %d clients that never close, want under %v", took, silent, limit)
			}

			cl := <-notice
			if cl == nil || session.CloseCode(cl.GetCode()) != session.CodeShutdown {
				t.Fatalf("the reading client got %v before its session ended, want a Closing notice with CodeShutdown", cl)
			}
			e, ok := clients[0].Ending()
			if !ok || e.Kind != session.EndClosed || !e.ByPeer || e.Code != session.CodeShutdown || e.Reason != "server stopped" {
				t.Errorf("the reading client's Ending = %v, %v; want the server's close with CodeShutdown", e, ok)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(disconnects) != silent+1 {
				t.Fatalf("%d disconnect events, want %d", len(disconnects), silent+1)
			}
			for _, ev := range disconnects {
				if ev.Kind != ServerStopped || ev.Reason != "server stopped" {
					t.Errorf("disconnect %q (%s) after Stop, want server_stopped", ev.Kind, ev.Reason)
				}
			}
			t.Logf("Stop took %v", took)
		})
	}
}

// TestStopWaitsLongerForMoreClients stops a QUIC server whose clients are
// slow to read their Closing notices: Stop's wait for them to close grows
// with the number of sessions it tells, so that a client reading its
// notice after the base linger still gets it, reconnect window included.
// Closed at the base linger, its session would end before the read, and
// QUIC's close discards the notice the stream holds.
func TestStopWaitsLongerForMoreClients(t *testing.T) {
	const clients = 3
	serverTLS, clientTLS := tlsPair(t)
	l, err := session.ListenUDP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	connected := make(chan struct{}, clients)
	core := New(grpc.NewServer(), Config{
		Session:            settings(),
		HandshakeTimeout:   bound,
		MaxHelloSize:       64 << 10,
		ReconnectCostQUIC:  time.Second,
		MaxReconnectWindow: time.Minute,
		OnEvent: func(ev Event) {
			if ev.Type == Connected {
				connected <- struct{}{}
			}
		},
	})
	// The base linger is short, the per-session share long: the slow
	// client reads ten base lingers late and still has seconds to spare.
	core.linger, core.lingerPerSession = 50*time.Millisecond, 2*time.Second
	const readAfter = 500 * time.Millisecond
	served := make(chan error, 1)
	go func() { served <- core.Serve(&quicListener{l: l, tls: serverTLS}) }()

	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	sessions, ctrl := helloClients(t, ctx, clients, func(ctx context.Context) (session.Session, error) {
		return session.DialQUIC(ctx, addr, clientTLS, session.QUICConfig{Settings: settings()})
	}, connected)

	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		core.Stop()
	}()
	// The slow client reads once the base linger is long over.
	time.Sleep(readAfter)
	var n handshakepb.Notice
	err = handshake.ReadMsg(ctrl, &n, handshake.MaxWelcomeSize)
	switch {
	case err != nil:
		t.Errorf("the client reading its control stream %v after Stop began got %v, want the Closing notice (its session was closed before it read)", readAfter, err)
	case n.GetClosing() == nil:
		t.Errorf("the client got %v, want a Closing notice", &n)
	case handshake.ReconnectWindow(n.GetClosing()) != clients*time.Second:
		t.Errorf("the notice announces a reconnect window of %v, want %v", handshake.ReconnectWindow(n.GetClosing()), clients*time.Second)
	default:
		sessions[0].PeerAnnounced(session.CloseCode(n.GetClosing().GetCode()), n.GetClosing().GetReason())
	}
	// The others never close: Stop closes them at its linger's end.
	<-stopped
	if err := <-served; err != nil {
		t.Fatalf("Serve after Stop: %v", err)
	}
}

// helloClients dials n sessions with dial, sends each one's hello and waits
// for the server's Connected event (on connected) before the next. It
// returns the sessions, closed when the test ends, and the first one's
// control stream.
func helloClients(t *testing.T, ctx context.Context, n int, dial func(context.Context) (session.Session, error), connected <-chan struct{}) ([]session.Session, net.Conn) {
	t.Helper()
	var clients []session.Session
	t.Cleanup(func() {
		for _, c := range clients {
			c.Close(session.CodeNormal, "test over")
		}
	})
	var first net.Conn
	for i := range n {
		c, err := dial(ctx)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		clients = append(clients, c)
		ctrl, _, err := handshake.SendHello(ctx, c, nil)
		if err != nil {
			t.Fatalf("hello: %v", err)
		}
		if i == 0 {
			first = ctrl
		}
		<-connected
	}
	return clients, first
}
