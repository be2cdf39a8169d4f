package handshake

import (
	"context"
	"crypto/tls"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc/internal/certs"
	"github.com/brpc-go/brpc/internal/handshake/handshakepb"
	"github.com/brpc-go/brpc/internal/session"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// bound is the generous upper limit for anything that should happen
// promptly on loopback.
const bound = 5 * time.Second

const testALPN = "brpc-handshake-test"

var testCA = sync.OnceValues(certs.NewCA)

// sessionPair connects a QUIC client session to a server session on
// loopback; the test's cleanup closes both.
func sessionPair(t *testing.T) (client, server session.Session) {
	t.Helper()
	return sessionPairOn(t, session.TransportQUIC)
}

// sessionPairOn is sessionPair on the transport named tr.
func sessionPairOn(t *testing.T, tr string) (client, server session.Session) {
	t.Helper()
	ca, err := testCA()
	if err != nil {
		t.Fatal(err)
	}
	serverConf, err := ca.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	serverConf.NextProtos = []string{testALPN}
	clientConf := &tls.Config{RootCAs: ca.Pool, NextProtos: []string{testALPN}, ServerName: "localhost"}
	var (
		addr   string
		accept func(context.Context) (session.Session, error)
		dial   func(context.Context) (session.Session, error)
	)
	if tr == session.TransportTCP {
		ln, err := session.ListenTCP("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = ln.Close() })
		if err := ln.Start(serverConf, session.TCPConfig{}); err != nil {
			t.Fatal(err)
		}
		addr, accept = ln.Addr().String(), ln.Accept
		dial = func(ctx context.Context) (session.Session, error) {
			return session.DialTCP(ctx, addr, clientConf, session.TCPConfig{})
		}
	} else {
		ln, err := session.ListenUDP("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = ln.Close() })
		if err := ln.Start(serverConf, session.QUICConfig{}); err != nil {
			t.Fatal(err)
		}
		addr, accept = ln.Addr().String(), ln.Accept
		dial = func(ctx context.Context) (session.Session, error) {
			return session.DialQUIC(ctx, addr, clientConf, session.QUICConfig{})
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	accepted := make(chan session.Session, 1)
	go func() {
		s, _ := accept(ctx)
		accepted <- s
	}()
	client, err = dial(ctx)
	if err != nil {
		cancel()
		<-accepted
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close(session.CodeNormal, "test over") })
	server = <-accepted
	if server == nil {
		t.Fatal("the listener accepted no session")
	}
	t.Cleanup(func() { _ = server.Close(session.CodeNormal, "test over") })
	return client, server
}

type serverResult struct {
	err error
}

// serve runs ServeHello on sess in the background.
func serve(sess session.Session, conf ServerConfig, admit Admit) <-chan serverResult {
	out := make(chan serverResult, 1)
	go func() {
		ctrl, err := ServeHello(sess, conf, admit)
		if ctrl != nil {
			// The welcome is written; a notice follows on the same stream.
			err = errors.Join(err, WriteMsg(ctrl, NewGoAway("bye")))
		}
		out <- serverResult{err}
	}()
	return out
}

func dialCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	t.Cleanup(cancel)
	return ctx
}

var testConf = ServerConfig{Timeout: bound, MaxHelloSize: DefaultMaxMessageSize}

func TestHandshakeWelcomesUnderTheAdmittedID(t *testing.T) {
	client, server := sessionPair(t)
	var seen metadata.MD
	done := serve(server, testConf, func(_ context.Context, md metadata.MD) (string, func(), error) {
		seen = md
		return "id-1", nil, nil
	})

	ctrl, id, err := SendHello(dialCtx(t), client, metadata.Pairs("name", "alice"))
	if err != nil {
		t.Fatalf("SendHello: %v", err)
	}
	if id != "id-1" {
		t.Fatalf("the client was welcomed as %q, want id-1", id)
	}
	var n handshakepb.Notice
	if err := ReadMsg(ctrl, &n, MaxWelcomeSize); err != nil || n.GetGoAway().GetReason() != "bye" {
		t.Fatalf("the control stream after the welcome carried %v (err %v), want the server's notice", &n, err)
	}
	if r := <-done; r.err != nil {
		t.Fatalf("ServeHello: %v", r.err)
	}
	if got := seen.Get("name"); len(got) != 1 || got[0] != "alice" {
		t.Fatalf("Admit saw metadata %v, want the hello's", seen)
	}
}

func TestHandshakeRejectionReachesTheClientAsItsStatus(t *testing.T) {
	client, server := sessionPair(t)
	refusal := status.Error(codes.PermissionDenied, "not you")
	done := serve(server, testConf, func(context.Context, metadata.MD) (string, func(), error) {
		return "", nil, refusal
	})

	_, _, err := SendHello(dialCtx(t), client, nil)
	if status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != "not you" {
		t.Fatalf("a rejected client's SendHello: %v, want the server's status", err)
	}
	// The client closes the session on its side after reading the refusal,
	// which ends the server's linger.
	client.Close(session.CodeNormal, "rejected")
	if r := <-done; !errors.Is(r.err, refusal) {
		t.Fatalf("ServeHello: %v, want the refusal", r.err)
	}
}

func TestRefusalWithoutWelcomeIsDecodedByDialError(t *testing.T) {
	client, server := sessionPair(t)
	Refuse(server, status.Error(codes.ResourceExhausted, "brpc: too many handshakes in progress"))

	_, _, err := SendHello(dialCtx(t), client, nil)
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("SendHello to a server that refused the session: %v, want codes.ResourceExhausted", err)
	}
	// The close code carries the status's code; the reason is the message
	// as it was, with no code encoded in it.
	if want := "brpc: handshake: server closed the session: brpc: too many handshakes in progress"; status.Convert(err).Message() != want {
		t.Errorf("SendHello's error message = %q, want %q", status.Convert(err).Message(), want)
	}
	e, _ := server.Ending()
	if e.Code != RefusedCode(codes.ResourceExhausted) || e.Reason != "brpc: too many handshakes in progress" {
		t.Errorf("the refused session's Ending = %v, want RefusedCode(ResourceExhausted) with the bare message", e)
	}
}

func TestDialErrorMapsCloseCodes(t *testing.T) {
	for _, tc := range []struct {
		code session.CloseCode
		want codes.Code
	}{
		{session.CodeShutdown, codes.Unavailable},
		{session.CodeHandshakeTimeout, codes.DeadlineExceeded},
		{session.CodeProtocol, codes.Internal},
	} {
		client, server := sessionPair(t)
		server.Close(tc.code, "closing")
		_, _, err := SendHello(dialCtx(t), client, nil)
		if status.Code(err) != tc.want {
			t.Errorf("SendHello on a session closed with code %d: %v, want %v", tc.code, err, tc.want)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := DialError(ctx, "dial", errors.New("x")); status.Code(err) != codes.Canceled {
		t.Errorf("DialError after ctx was canceled: %v, want codes.Canceled", err)
	}
	if err := DialError(context.Background(), "dial", errors.New("refused")); status.Code(err) != codes.Unavailable {
		t.Errorf("DialError of a plain error: %v, want codes.Unavailable", err)
	}
}

func TestServeHelloRevokesAnAdmissionWhoseWelcomeFails(t *testing.T) {
	client, server := sessionPair(t)
	revoked := make(chan struct{})
	done := serve(server, testConf, func(context.Context, metadata.MD) (string, func(), error) {
		// The session ends between the admission and the welcome.
		server.Close(session.CodeNormal, "gone")
		<-server.Closed()
		return "id-1", func() { close(revoked) }, nil
	})
	_, _, _ = SendHello(dialCtx(t), client, nil)
	r := <-done
	if status.Code(r.err) != codes.Unavailable {
		t.Fatalf("ServeHello whose welcome could not be written: %v, want codes.Unavailable", r.err)
	}
	select {
	case <-revoked:
	default:
		t.Fatal("the admission was not revoked when the welcome failed")
	}
}

func TestServeHelloTimesOutWithoutAControlStream(t *testing.T) {
	_, server := sessionPair(t)
	conf := testConf
	conf.Timeout = 200 * time.Millisecond
	start := time.Now()
	r := <-serve(server, conf, func(context.Context, metadata.MD) (string, func(), error) {
		t.Error("Admit ran for a client that sent no hello")
		return "", nil, nil
	})
	if status.Code(r.err) != codes.DeadlineExceeded {
		t.Fatalf("ServeHello for a silent client: %v, want codes.DeadlineExceeded", r.err)
	}
	if d := time.Since(start); d > bound {
		t.Fatalf("ServeHello took %v for a %v timeout", d, conf.Timeout)
	}
}

// A client that opens a second stream before its welcome breaks brpc's
// protocol: the session layer closes the session with CodeProtocol, and
// ServeHello refuses the client with the status the client itself makes of
// that close, naming what it did, rather than as a connection that merely
// ended.
func TestServeHelloReportsAProtocolBreak(t *testing.T) {
	for _, tr := range []string{session.TransportQUIC, session.TransportTCP} {
		t.Run(tr, func(t *testing.T) {
			client, server := sessionPairOn(t, tr)
			done := serve(server, testConf, func(context.Context, metadata.MD) (string, func(), error) {
				t.Error("Admit ran for a client that sent no whole hello")
				return "", nil, nil
			})
			ctrl, err := client.OpenStream(dialCtx(t))
			if err != nil {
				t.Fatal(err)
			}
			defer ctrl.Close()
			// A hello's length prefix, and no hello.
			if _, err := ctrl.Write([]byte{0, 0, 0, 100}); err != nil {
				t.Fatal(err)
			}
			// The server may end the session before the open returns.
			if second, err := client.OpenStream(dialCtx(t)); err == nil {
				defer second.Close()
				_, _ = second.Write([]byte("early"))
			}
			var r serverResult
			select {
			case r = <-done:
			case <-time.After(bound):
				t.Fatalf("ServeHello still waits %v after the second stream", bound)
			}
			st := status.Convert(r.err)
			if st.Code() != codes.Internal || !strings.Contains(st.Message(), "a stream was opened before the welcome") {
				t.Fatalf("ServeHello: %v, want codes.Internal naming the early stream", r.err)
			}
			if e, ok := server.Ending(); !ok || e.Kind != session.EndClosed || e.ByPeer || e.Code != session.CodeProtocol {
				t.Fatalf("server session's Ending: %v (ended %v), want closed by this side with CodeProtocol", e, ok)
			}
		})
	}
}
