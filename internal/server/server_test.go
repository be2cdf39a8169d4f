package server

import (
	"context"
	"crypto/tls"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc/internal/certs"
	"github.com/brpc-go/brpc/internal/client"
	"github.com/brpc-go/brpc/internal/session"
	"github.com/brpc-go/brpc/internal/testpb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// bound is the generous upper limit for anything that should happen
// promptly on loopback.
const bound = 10 * time.Second

const alpn = "brpc/1"

// tlsPair returns a server tls.Config with a fresh certificate and a client
// one that trusts it, both speaking brpc's ALPN.
func tlsPair(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	ca, err := certs.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	server, err = ca.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	server.NextProtos = []string{alpn}
	client = &tls.Config{RootCAs: ca.Pool, NextProtos: []string{alpn}, ServerName: "localhost", MinVersion: tls.VersionTLS13}
	return server, client
}

// quicListener shows a session listener to the core as the public
// listeners do.
type quicListener struct {
	l   *session.QUICListener
	tls *tls.Config
}

func (q *quicListener) Start(cfg ListenConfig) (Acceptor, error) {
	return q, q.l.Start(q.tls, cfg.QUIC)
}
func (q *quicListener) Accept() (session.Session, error) { return q.l.Accept(context.Background()) }
func (q *quicListener) StopAccepting()                   { _ = q.l.StopAccepting() }
func (q *quicListener) Close() error                     { return q.l.Close() }

// echo answers with the message and the ID of the session the call came
// in on, as far as the side serving it can tell (the server core's
// SessionFromContext; empty on the client).
type echo struct {
	testpb.UnimplementedEchoServer
	core *Server
}

func (e *echo) Unary(ctx context.Context, req *testpb.EchoRequest) (*testpb.EchoResponse, error) {
	res := &testpb.EchoResponse{Message: req.GetMessage()}
	if e.core != nil {
		ss, err := e.core.SessionFromContext(ctx)
		if err != nil {
			return nil, err
		}
		res.PeerId = ss.ID()
	}
	return res, nil
}

func settings() session.Settings {
	return session.Settings{KeepAlive: 10 * time.Second, IdleTimeout: 30 * time.Second, MaxIncomingStreams: 100}
}

// TestCoreRelaysUntypedCalls runs the core without a typed layer: a client
// is admitted under the ID its authenticator picks, its forward calls are
// attributed to its session, and the server reaches it through the untyped
// Client(id).Conn() that a relay would use.
func TestCoreRelaysUntypedCalls(t *testing.T) {
	serverTLS, clientTLS := tlsPair(t)
	ul, err := session.ListenUDP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}

	events := make(chan Event, 8)
	gs := grpc.NewServer()
	core := New(gs, Config{
		Session:          settings(),
		HandshakeTimeout: bound,
		MaxHelloSize:     64 << 10,
		Authenticate: func(_ context.Context, info AuthInfo) (string, error) {
			if ids := info.Metadata.Get("id"); len(ids) == 1 {
				return ids[0], nil
			}
			return "", status.Error(codes.PermissionDenied, "no id")
		},
		OnEvent: func(ev Event) { events <- ev },
	})
	testpb.RegisterEchoServer(gs, &echo{core: core})
	served := make(chan error, 1)
	go func() { served <- core.Serve(&quicListener{l: ul, tls: serverTLS}) }()

	clientGS := grpc.NewServer()
	testpb.RegisterEchoServer(clientGS, &echo{})
	defer clientGS.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	conf := client.Config{
		Target:        "quic://" + ul.Addr().String(),
		Scheme:        session.TransportQUIC,
		Endpoints:     []client.Endpoint{{HostPort: ul.Addr().String(), TLS: clientTLS}},
		Session:       settings(),
		Server:        clientGS,
		Metadata:      metadata.Pairs("id", "c1"),
		Backoff:       backoff.DefaultConfig,
		FallbackDelay: time.Second,
	}
	cc, err := client.Dial(ctx, conf)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer cc.Close()
	if ev := <-events; ev.Type != Connected || ev.Peer.ID != "c1" {
		t.Fatalf("first event %+v, want c1 connected", ev)
	}

	res, err := testpb.NewEchoClient(cc).Unary(ctx, &testpb.EchoRequest{Message: "forward"})
	if err != nil {
		t.Fatalf("forward call: %v", err)
	}
	if res.GetPeerId() != "c1" {
		t.Fatalf("the forward call was attributed to %q, want c1", res.GetPeerId())
	}

	ss, err := core.Client("c1")
	if err != nil {
		t.Fatalf("Client(c1): %v", err)
	}
	if ss.Stub() != nil {
		t.Fatalf("a core without NewStub built a stub %v", ss.Stub())
	}
	res, err = testpb.NewEchoClient(ss.Conn()).Unary(ctx, &testpb.EchoRequest{Message: "reverse"})
	if err != nil || res.GetMessage() != "reverse" {
		t.Fatalf("reverse call through Client(c1).Conn(): %v, %v", res, err)
	}
	if _, err := core.Client("nobody"); status.Code(err) != codes.NotFound {
		t.Fatalf("Client(nobody): %v, want codes.NotFound", err)
	}
	if _, err := core.SessionFromContext(ctx); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("SessionFromContext outside a call: %v, want codes.FailedPrecondition", err)
	}
	if peers := core.Peers(); len(peers) != 1 || peers[0].ID != "c1" {
		t.Fatalf("Peers() = %+v, want c1 alone", peers)
	}

	cc.Close()
	if ev := <-events; ev.Type != Disconnected || ev.Kind != ClientClosed {
		t.Fatalf("event after the client closed: %+v, want a client_closed disconnect", ev)
	}
	if _, err := testpb.NewEchoClient(ss.Conn()).Unary(ctx, &testpb.EchoRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("reverse call after the client left: %v, want codes.Unavailable", err)
	}

	core.Stop()
	if err := <-served; err != nil {
		t.Fatalf("Serve after Stop: %v, want nil", err)
	}
	if err := core.Serve(&quicListener{l: ul, tls: serverTLS}); !errors.Is(err, ErrStopped) {
		t.Fatalf("Serve after Stop: %v, want ErrStopped", err)
	}
}
