package integrationtests

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/handshake"
	"github.com/brpc-go/brpc/internal/handshake/handshakepb"
	"github.com/brpc-go/brpc/internal/session"
	"github.com/brpc-go/brpc/internal/testenv"
)

func TestMaxClients(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		e := testenv.New(t, testenv.Config{Transport: tr, ServerOpts: []brpc.ServerOption{
			brpc.WithAuthenticator(byNameFromMetadata), brpc.WithMaxClients(2),
		}})
		named := func(n string) testenv.ClientConfig {
			return testenv.ClientConfig{Name: n, MD: metadata.Pairs("name", n)}
		}
		a := e.Connect(named("a"))
		e.Connect(named("b"))
		_, err := e.Dial(named("c"))
		testenv.WantCode(t, err, codes.ResourceExhausted, "a third client with WithMaxClients(2)")

		// A client taking over its own ID is not a new client.
		a2 := e.Connect(named("a"))
		if len(e.Srv.Peers()) != 2 {
			t.Fatalf("Peers() = %v after a reconnect under the same ID", e.Srv.Peers())
		}
		a2.Shutdown()
		a.Shutdown()
		testenv.WaitFor(t, 5*time.Second, "a to leave", func() bool { return len(e.Srv.Peers()) == 1 })
		e.Connect(named("c"))
	})
}

// rawSession opens a transport session to e's server with brpc's session
// package, without a handshake.
func rawSession(t *testing.T, e *testenv.Env, tr string) session.Session {
	t.Helper()
	return rawSessionTo(t, e.Endpoint(), tr)
}

// rawSessionTo opens a transport session to ep with brpc's session
// package, without a handshake.
func rawSessionTo(t *testing.T, ep testenv.Endpoint, tr string) session.Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tlsConf := attackerTLS(ep, brpc.ALPN)
	var s session.Session
	var err error
	if tr == "tcp" {
		s, err = session.DialTCP(ctx, ep.Addr, tlsConf, session.TCPConfig{})
	} else {
		s, err = session.DialQUIC(ctx, ep.Addr, tlsConf, session.QUICConfig{})
	}
	if err != nil {
		t.Fatalf("raw %s session: %v", tr, err)
	}
	t.Cleanup(func() { s.Close(session.CodeNormal, "test over") })
	return s
}

// welcomed runs brpc's handshake by hand on s.
func welcomed(t *testing.T, s session.Session) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctrl, err := s.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := helloOn(ctrl); err != nil {
		t.Fatal(err)
	}
}

func TestMaxPendingHandshakes(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		const max = 5
		e := testenv.New(t, testenv.Config{Transport: tr, ServerOpts: []brpc.ServerOption{
			brpc.WithMaxPendingHandshakes(max), brpc.WithHandshakeTimeout(1500 * time.Millisecond),
		}})
		// max sessions that never say hello fill the brpc phase.
		for i := 0; i < max; i++ {
			rawSession(t, e, tr)
		}
		// Anyone else is turned away at once while they hang on. The
		// server counts a session once it has accepted it: a client that
		// came before that is admitted, and the next one tried.
		// QUIC carries the reason in its close code; over TCP the refusal
		// comes before brpc can say why, so the client sees Unavailable and
		// retries later, as it should.
		want := codes.ResourceExhausted
		if tr == "tcp" {
			want = codes.Unavailable
		}
		var err error
		var took time.Duration
		testenv.WaitFor(t, 5*time.Second, "a Dial refused while the pending handshakes are at their cap", func() bool {
			start := time.Now()
			var c *testenv.Client
			c, err = e.Dial(testenv.ClientConfig{Name: "late"})
			took = time.Since(start)
			if err == nil {
				c.Shutdown()
				return false
			}
			return true
		})
		testenv.WantCode(t, err, want, "Dial while the pending handshakes are at their cap")
		if took > time.Second {
			t.Fatalf("the refusal took %v", took)
		}
		// Once the silent ones are cut off, clients are admitted again.
		testenv.WaitFor(t, 10*time.Second, "an ordinary client to be admitted again", func() bool {
			c, err := e.Dial(testenv.ClientConfig{Name: "later"})
			if err != nil {
				return false
			}
			c.Shutdown()
			return true
		})
	})
}

func TestMaxPendingTLSHandshakesOnTCP(t *testing.T) {
	const max = 5
	e := testenv.New(t, testenv.Config{Transport: "tcp", ServerOpts: []brpc.ServerOption{
		brpc.WithMaxPendingHandshakes(max), brpc.WithHandshakeTimeout(1500 * time.Millisecond),
	}})
	// TCP connections that never send a TLS ClientHello (slowloris).
	var idle []net.Conn
	for i := 0; i < max; i++ {
		c, err := net.Dial("tcp", e.Addr)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	t.Cleanup(func() {
		for _, c := range idle {
			c.Close()
		}
	})
	// A connection beyond the cap is closed at once. The listener counts a
	// connection once it has accepted it: one that came before that is
	// held like the silent ones (and kept open), and the next one tried.
	testenv.WaitFor(t, 5*time.Second, "a connection beyond the cap to be closed at once", func() bool {
		extra, err := net.Dial("tcp", e.Addr)
		if err != nil {
			t.Fatal(err)
		}
		extra.SetReadDeadline(time.Now().Add(time.Second))
		_, err = extra.Read(make([]byte, 1))
		if err == io.EOF {
			extra.Close()
			return true
		}
		t.Cleanup(func() { extra.Close() })
		return false
	})
	// The silent ones are cut at the handshake timeout.
	for _, c := range idle {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("a silent connection read %v, want io.EOF after the handshake timeout", err)
		}
	}
	e.WantServes(t, "ok")
}

func TestHandshakeRateLimitPerAddress(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		e := testenv.New(t, testenv.Config{Transport: tr, ServerOpts: []brpc.ServerOption{brpc.WithHandshakeRateLimit(2, 3)}})
		for i := 0; i < 3; i++ {
			c, err := e.Dial(testenv.ClientConfig{Name: fmt.Sprint("c", i)})
			if err != nil {
				t.Fatalf("connection %d within the burst: %v", i, err)
			}
			c.Shutdown()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := brpc.Dial(ctx, e.Target, brpc.WithTLSConfig(e.CA.ClientTLS()))
		if err == nil {
			t.Fatal("a fourth connection at once was admitted past the burst of 3")
		}
		t.Logf("refused: %v", err)
		time.Sleep(600 * time.Millisecond) // a token comes back every 500 ms
		e.WantServes(t, "ok")
	})
}

func TestStreamFloodIsCapped(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		const max = 10
		e := testenv.New(t, testenv.Config{Transport: tr, ServerOpts: []brpc.ServerOption{brpc.WithMaxStreamsPerSession(max)}})
		s := rawSession(t, e, tr)
		welcomed(t, s)
		// Open streams far past the cap, each starting an HTTP/2 connection
		// as grpc-go would. QUIC's stream limit stops the opener (the control
		// stream counts); on TCP the server resets streams past the cap, and
		// only the others get the gRPC server's SETTINGS back.
		var streams []net.Conn
		for i := 0; i < 5*max; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			st, err := s.OpenStream(ctx)
			cancel()
			if err != nil {
				break
			}
			t.Cleanup(func() { st.Close() })
			st.SetDeadline(time.Now().Add(2 * time.Second))
			if _, err := st.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")); err == nil {
				streams = append(streams, st)
			}
		}
		served := 0
		for _, st := range streams {
			if _, err := st.Read(make([]byte, 9)); err == nil {
				served++
			}
		}
		t.Logf("%s: %d streams opened past the handshake, %d served", tr, len(streams), served)
		if served > max {
			t.Fatalf("%d streams served, more than the cap of %d", served, max)
		}
		if served == 0 {
			t.Fatal("no stream was served at all")
		}
		// Others are served meanwhile.
		e.WantServes(t, "ok")
	})
}

func TestTCPListenerRefusesWrongTLS(t *testing.T) {
	e := testenv.New(t, testenv.Config{Transport: "tcp"})
	for name, conf := range map[string]*tls.Config{
		"wrong ALPN": {RootCAs: e.CA.Pool, ServerName: "localhost", NextProtos: []string{"h2"}},
		"no ALPN":    {RootCAs: e.CA.Pool, ServerName: "localhost"},
		"TLS 1.2":    {RootCAs: e.CA.Pool, ServerName: "localhost", NextProtos: []string{brpc.ALPN}, MaxVersion: tls.VersionTLS12},
	} {
		c, err := tls.Dial("tcp", e.Addr, conf)
		if err == nil {
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			_, err = c.Read(make([]byte, 1))
			c.Close()
		}
		if err == nil {
			t.Errorf("%s: the TLS connection was accepted", name)
		}
		t.Logf("%s: %v", name, err)
	}
	// Garbage instead of a ClientHello.
	c, err := net.Dial("tcp", e.Addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	io.Copy(io.Discard, c)
	c.Close()
	e.WantServes(t, "ok")
}

func TestOversizedAndMalformedHellosOnBothTransports(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		e := testenv.New(t, testenv.Config{Transport: tr, ServerOpts: []brpc.ServerOption{brpc.WithMaxHelloSize(1024)}})
		big := metadata.Pairs("blob", string(make([]byte, 4096)))
		_, err := e.Dial(testenv.ClientConfig{Name: "big", MD: big})
		testenv.WantCode(t, err, codes.ResourceExhausted, "a hello above WithMaxHelloSize")

		s := rawSession(t, e, tr)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ctrl, err := s.OpenStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ctrl.SetDeadline(time.Now().Add(5 * time.Second))
		ctrl.Write([]byte{0, 0, 0, 3, 0xff, 0xff, 0xff})
		var w handshakepb.Welcome
		if err := handshake.ReadMsg(ctrl, &w, 1<<16); err != nil {
			t.Fatalf("reading the answer to a malformed hello: %v", err)
		}
		if codes.Code(w.GetStatus().GetCode()) != codes.InvalidArgument {
			t.Fatalf("malformed hello answered with %v, want InvalidArgument", w.GetStatus())
		}
		e.WantServes(t, "ok")
	})
}

// A client that opens a stream before its welcome is refused: the server's
// session layer closes the session with "protocol error", the PeerRejected
// event says what the client did, with the status the client makes of the
// close, and other clients are served meanwhile.
func TestStreamBeforeWelcomeIsRejected(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		rejected := make(chan brpc.PeerEvent, 1)
		e := testenv.New(t, testenv.Config{Transport: tr, ServerOpts: []brpc.ServerOption{
			brpc.WithPeerEvents(func(ev brpc.PeerEvent) {
				if ev.Type == brpc.PeerRejected {
					select {
					case rejected <- ev:
					default:
					}
				}
			}),
		}})
		s := rawSession(t, e, tr)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ctrl, err := s.OpenStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer ctrl.Close()
		// The start of a hello: its length prefix.
		if _, err := ctrl.Write([]byte{0, 0, 0, 64}); err != nil {
			t.Fatal(err)
		}
		// The server may end the session before the open returns.
		if early, err := s.OpenStream(ctx); err == nil {
			defer early.Close()
			_, _ = early.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
		}
		var ev brpc.PeerEvent
		select {
		case ev = <-rejected:
		case <-ctx.Done():
			t.Fatal("no PeerRejected event for a stream opened before the welcome")
		}
		if !strings.Contains(ev.Reason, "a stream was opened before the welcome") || status.Code(ev.Err) != codes.Internal {
			t.Fatalf("PeerRejected reason %q, err %v; want the early stream named, codes.Internal", ev.Reason, ev.Err)
		}
		t.Logf("rejected: %s", ev.Reason)
		select {
		case <-s.Context().Done():
		case <-ctx.Done():
			t.Fatal("the client's session is still up")
		}
		if tr == "quic" {
			if end, ok := s.Ending(); !ok || !end.ByPeer || end.Code != session.CodeProtocol {
				t.Fatalf("client's Ending %v, want closed by the server with CodeProtocol", end)
			}
		}
		e.WantServes(t, "ok")
	})
}

// A welcomed TCP client that sends on its control stream, which carries
// nothing from the client after its hello, is disconnected, and the
// PeerDisconnected event says so.
func TestTCPDataOnControlStreamAfterWelcomeDisconnects(t *testing.T) {
	// The session ends as a disconnection, or, when the client's data
	// arrives before the server has seen its welcome go out (a loaded
	// machine), as a rejection: either way for the data, and reported so.
	disconnected := make(chan brpc.PeerEvent, 1)
	e := testenv.New(t, testenv.Config{Transport: "tcp", ServerOpts: []brpc.ServerOption{
		brpc.WithPeerEvents(func(ev brpc.PeerEvent) {
			if ev.Type == brpc.PeerDisconnected || ev.Type == brpc.PeerRejected {
				select {
				case disconnected <- ev:
				default:
				}
			}
		}),
	}})
	s := rawSession(t, e, "tcp")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctrl, err := s.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ctrl.Close()
	if err := handshake.WriteMsg(ctrl, handshake.NewHello(nil)); err != nil {
		t.Fatal(err)
	}
	var w handshakepb.Welcome
	if err := handshake.ReadMsg(ctrl, &w, 1<<16); err != nil || w.GetId() == "" {
		t.Fatalf("welcome: %v %v", &w, err)
	}
	_, _ = ctrl.Write([]byte("more after the welcome"))
	var ev brpc.PeerEvent
	select {
	case ev = <-disconnected:
	case <-ctx.Done():
		t.Fatal("no PeerDisconnected event for data on the control stream after the welcome")
	}
	if !strings.Contains(ev.Reason, "data on the control stream after the welcome") {
		t.Fatalf("%v event %+v: the reason does not name the data on the control stream", ev.Type, ev)
	}
	if ev.Type == brpc.PeerDisconnected && (ev.Peer.ID != w.GetId() || ev.Kind != brpc.DisconnectConnectionLost) {
		t.Fatalf("PeerDisconnected %+v; want %s lost", ev, w.GetId())
	}
	t.Logf("disconnected: %s", ev.Reason)
}
