package grpcglue

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/test/bufconn"

	"github.com/brpc-go/brpc/internal/testpb"
)

// peerEcho reports, for each call, what the handler's context says of the
// connection the call arrived on.
type peerEcho struct {
	testpb.UnimplementedEchoServer
	seen chan context.Context
}

func (e *peerEcho) Unary(ctx context.Context, req *testpb.EchoRequest) (*testpb.EchoResponse, error) {
	e.seen <- ctx
	return &testpb.EchoResponse{Message: req.GetMessage()}, nil
}

// TestStreamConnCarriesItsSession runs a call over a stream handed to a
// *grpc.Server through Listener: the handler finds the session's info from
// its context, the credentials report the session's TLS state, and both
// ends' addresses are the session connection's, following it when it moves.
func TestStreamConnCarriesItsSession(t *testing.T) {
	pipe := bufconn.Listen(1 << 16)
	defer pipe.Close()
	serverConn := newFakeConn("127.0.0.1:4000", "127.0.0.1:5000")
	serverInfo := NewSessionInfo(Peer{ID: "client-1", Metadata: metadata.Pairs("k", "v"), Transport: "quic"}, serverConn, nil)
	clientInfo := NewSessionInfo(Peer{Transport: "quic"}, newFakeConn("127.0.0.1:5000", "127.0.0.1:4000"), nil)

	lis := NewListener(&net.UnixAddr{Name: "test", Net: "brpc"})
	fed := make(chan struct{})
	go func() {
		defer close(fed)
		for {
			c, err := pipe.Accept()
			if err != nil {
				return
			}
			lis.Push(context.Background(), NewStreamConn(c, serverInfo))
		}
	}()
	srv := &peerEcho{seen: make(chan context.Context, 1)}
	stop := serveEcho(lis, srv)
	defer func() {
		stop()
		pipe.Close()
		<-fed
	}()

	cc, err := grpc.NewClient("passthrough:///test",
		grpc.WithTransportCredentials(Credentials{}),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			c, err := pipe.DialContext(ctx)
			if err != nil {
				return nil, err
			}
			return NewStreamConn(c, clientInfo), nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	var clientPeer peer.Peer
	if _, err := testpb.NewEchoClient(cc).Unary(context.Background(), &testpb.EchoRequest{Message: "hi"}, grpc.Peer(&clientPeer)); err != nil {
		t.Fatal(err)
	}

	ctx := <-srv.seen
	if got := InfoFromContext(ctx); got != serverInfo {
		t.Fatalf("the handler's context names session %+v, want the one its stream belongs to", got)
	}
	p, _ := peer.FromContext(ctx)
	tlsInfo, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		t.Fatalf("the handler's peer AuthInfo is %T, want credentials.TLSInfo", p.AuthInfo)
	}
	if tlsInfo.SecurityLevel != credentials.PrivacyAndIntegrity || tlsInfo.State.ServerName != "brpc.test" {
		t.Fatalf("the handler's TLS info is %+v, want the session's state at PrivacyAndIntegrity", tlsInfo)
	}
	if got := InfoFromContext(peer.NewContext(context.Background(), &clientPeer)); got != clientInfo {
		t.Fatalf("the caller's peer names session %+v, want its own stream's", got)
	}
	if p.Addr.String() != "127.0.0.1:5000" || p.Addr.Network() != "udp" || p.LocalAddr.String() != "127.0.0.1:4000" {
		t.Fatalf("the handler's peer is at %v/%v from %v, want the session's udp 127.0.0.1:5000 from 127.0.0.1:4000", p.Addr.Network(), p.Addr, p.LocalAddr)
	}
	if got := clientPeer.Addr.String(); got != "127.0.0.1:4000" {
		t.Fatalf("the caller's peer is at %v, want the session's 127.0.0.1:4000", got)
	}
	// The session's connection migrates: what was handed to grpc-go follows.
	serverConn.moveRemote("127.0.0.1:6000")
	if p.Addr.String() != "127.0.0.1:6000" || serverInfo.Snapshot().RemoteAddr.String() != "127.0.0.1:6000" {
		t.Fatalf("after the connection moved, peer.Addr is %v and the snapshot's %v; want 127.0.0.1:6000", p.Addr, serverInfo.Snapshot().RemoteAddr)
	}
	if got := serverInfo.Snapshot().Metadata.Get("k"); len(got) != 1 || got[0] != "v" {
		t.Fatalf("the session's peer metadata is %q, want [v]", got)
	}
}

func TestInfoFromContextOutsideASession(t *testing.T) {
	if InfoFromContext(context.Background()) != nil {
		t.Fatal("a context without a peer names a session")
	}
	p := &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}}
	if InfoFromContext(peer.NewContext(context.Background(), p)) != nil {
		t.Fatal("a plain TCP peer names a session")
	}
}

func TestListenerPushAfterClose(t *testing.T) {
	lis := NewListener(&net.UnixAddr{Name: "test", Net: "brpc"})
	lis.Close()
	a, b := net.Pipe()
	defer b.Close()
	if lis.Push(context.Background(), a) {
		t.Fatal("a closed listener took a stream")
	}
	if _, err := a.Write([]byte{0}); !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("the refused stream is still open (write: %v)", err)
	}
	if _, err := lis.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept on a closed listener: %v, want net.ErrClosed", err)
	}
}

// fakeConn stands for a session's connection: its addresses can move, as a
// migrating QUIC connection's do.
type fakeConn struct {
	mu            sync.Mutex
	local, remote net.Addr
}

func newFakeConn(local, remote string) *fakeConn {
	return &fakeConn{local: udpAddr(local), remote: udpAddr(remote)}
}

func udpAddr(s string) net.Addr {
	a, err := net.ResolveUDPAddr("udp", s)
	if err != nil {
		panic(err)
	}
	return a
}

func (c *fakeConn) LocalAddr() net.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.local
}

func (c *fakeConn) RemoteAddr() net.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.remote
}

func (c *fakeConn) moveRemote(to string) {
	c.mu.Lock()
	c.remote = udpAddr(to)
	c.mu.Unlock()
}

func (c *fakeConn) TLS() (s tls.ConnectionState) {
	s.ServerName = "brpc.test"
	return s
}

// Asking for a session's peer copies nothing: handlers may ask on every call,
// and a session's metadata may be kilobytes.
func TestSnapshotSharesMetadata(t *testing.T) {
	md := metadata.MD{}
	for i := range 200 {
		md.Append("k", string(rune('a'+i%26)))
	}
	info := NewSessionInfo(Peer{ID: "x", Metadata: md}, newFakeConn("127.0.0.1:4000", "127.0.0.1:5000"), nil)
	if n := testing.AllocsPerRun(100, func() { _ = info.Snapshot() }); n != 0 {
		t.Fatalf("Snapshot allocates %.0f times per call, want none", n)
	}
	if got := info.Snapshot().Metadata; len(got["k"]) != 200 {
		t.Fatalf("Snapshot's metadata has %d values, want 200", len(got["k"]))
	}
}

// serveEcho serves srv on lis with the glue's credentials; stop stops the
// server and waits for Serve to return.
func serveEcho(lis net.Listener, srv testpb.EchoServer) (stop func()) {
	gs := grpc.NewServer(grpc.Creds(Credentials{}))
	testpb.RegisterEchoServer(gs, srv)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = gs.Serve(lis)
	}()
	return func() {
		gs.Stop()
		<-served
	}
}
