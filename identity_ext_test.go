package brpc_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/certs"
	"github.com/brpc-go/brpc/internal/testenv"
	"github.com/brpc-go/brpc/internal/testpb"
)

// byName admits clients under the "name" they send in their hello.
func byName(ctx context.Context, info brpc.AuthInfo) (string, error) {
	names := info.Metadata.Get("name")
	if len(names) != 1 || names[0] == "" {
		return "", status.Error(codes.Unauthenticated, "no name")
	}
	if names[0] == "mallory" {
		return "", status.Error(codes.PermissionDenied, "mallory is not welcome")
	}
	return names[0], nil
}

func TestIdentityComesFromTheConnection(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		e := testenv.New(t, testenv.Config{Transport: tr, ServerOpts: []brpc.ServerOption{brpc.WithAuthenticator(byName)}})
		alice := e.Connect(testenv.ClientConfig{Name: "alice", MD: metadata.Pairs("name", "alice")})
		bob := e.Connect(testenv.ClientConfig{Name: "bob", MD: metadata.Pairs("name", "bob")})
		if alice.ID() != "alice" || bob.ID() != "bob" {
			t.Fatalf("IDs %q and %q, want alice and bob", alice.ID(), bob.ID())
		}

		// Bob names Alice in every header a prototype or a proxy might trust.
		spoof := metadata.Pairs(
			"name", "alice", "id", "alice", "client-id", "alice", "x-client-id", "alice",
			"brpc-id", "alice", "brpc-client-id", "alice", "x-brpc-peer", "alice",
			"authorization", "Bearer alice", ":authority", "alice", "user-agent", "alice",
		)
		ctx := metadata.NewOutgoingContext(testenv.Ctx(t), spoof)
		for i := 0; i < 5; i++ {
			r, err := bob.Echo.Unary(ctx, &testpb.EchoRequest{Message: "who"})
			if err != nil {
				t.Fatalf("Unary: %v", err)
			}
			if r.GetPeerId() != "bob" {
				t.Fatalf("server saw caller %q for bob's call", r.GetPeerId())
			}
			if want := "server:who|bob:back"; r.GetMessage() != want {
				t.Fatalf("bob's call reached %q, want %q: ClientFromContext reached the wrong client", r.GetMessage(), want)
			}
		}
		// Streams carry the same identity.
		st, err := bob.Echo.BidiStream(ctx)
		if err != nil {
			t.Fatalf("BidiStream: %v", err)
		}
		st.Send(&testpb.EchoRequest{Message: "who"})
		r, err := st.Recv()
		if err != nil || r.GetPeerId() != "bob" {
			t.Fatalf("stream: caller %q (err %v), want bob", r.GetPeerId(), err)
		}
		st.CloseSend()
	})
}

func TestAuthenticatorSeesMetadataAndRejects(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		var mu sync.Mutex
		var seen []brpc.AuthInfo
		auth := func(ctx context.Context, info brpc.AuthInfo) (string, error) {
			mu.Lock()
			seen = append(seen, info)
			mu.Unlock()
			return byName(ctx, info)
		}
		e := testenv.New(t, testenv.Config{Transport: tr, ServerOpts: []brpc.ServerOption{brpc.WithAuthenticator(auth)}})

		c := e.Connect(testenv.ClientConfig{Name: "carol", MD: metadata.Pairs("name", "carol", "zone", "eu-west", "token-bin", "\xff\x00\xfe")})
		mu.Lock()
		info := seen[0]
		mu.Unlock()
		if got := info.Metadata.Get("zone"); len(got) != 1 || got[0] != "eu-west" {
			t.Errorf("authenticator saw zone %q, want eu-west", got)
		}
		if got := info.Metadata.Get("token-bin"); len(got) != 1 || got[0] != "\xff\x00\xfe" {
			t.Errorf("authenticator saw token-bin %q, want the binary value", got)
		}
		if info.RemoteAddr == nil || !strings.HasPrefix(info.RemoteAddr.String(), "127.0.0.1:") {
			t.Errorf("authenticator saw remote address %v", info.RemoteAddr)
		}
		if info.TLS.Version != tls.VersionTLS13 || info.TLS.NegotiatedProtocol != brpc.ALPN {
			t.Errorf("authenticator saw TLS version %x, ALPN %q; want TLS 1.3 and %q", info.TLS.Version, info.TLS.NegotiatedProtocol, brpc.ALPN)
		}
		peers := e.Srv.Peers()
		if len(peers) != 1 || peers[0].ID != "carol" || peers[0].Transport != tr || peers[0].Metadata.Get("zone")[0] != "eu-west" {
			t.Fatalf("Peers() = %+v, want carol over quic with her metadata", peers)
		}
		if peers[0].ConnectedAt.IsZero() || peers[0].RemoteAddr.String() != info.RemoteAddr.String() {
			t.Errorf("Peer %+v lacks its connection time or address", peers[0])
		}
		_ = c

		for _, tc := range []struct {
			name string
			md   metadata.MD
			want codes.Code
		}{
			{"no metadata", nil, codes.Unauthenticated},
			{"forbidden", metadata.Pairs("name", "mallory"), codes.PermissionDenied},
		} {
			_, err := e.Dial(testenv.ClientConfig{Name: tc.name, MD: tc.md})
			testenv.WantCode(t, err, tc.want, "Dial "+tc.name)
		}
		if n := len(e.Srv.Peers()); n != 1 {
			t.Fatalf("after rejections, %d peers are listed, want 1", n)
		}
	})
}

func TestMutualTLSReachesTheAuthenticator(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		auth := func(ctx context.Context, info brpc.AuthInfo) (string, error) {
			if len(info.TLS.VerifiedChains) == 0 {
				return "", status.Error(codes.Unauthenticated, "no verified client certificate")
			}
			return "cn:" + info.TLS.VerifiedChains[0][0].Subject.CommonName, nil
		}
		e := testenv.New(t, testenv.Config{
			Transport:  tr,
			ServerOpts: []brpc.ServerOption{brpc.WithAuthenticator(auth)},
			ServerTLS: func(ca *certs.CA, c *tls.Config) {
				c.ClientAuth = tls.VerifyClientCertIfGiven
				c.ClientCAs = ca.Pool
			},
		})
		cert, err := e.CA.Client("device-42")
		if err != nil {
			t.Fatal(err)
		}
		withCert := e.CA.ClientTLS()
		withCert.Certificates = []tls.Certificate{cert}
		c := e.Connect(testenv.ClientConfig{Name: "device", TLS: withCert})
		if c.ID() != "cn:device-42" {
			t.Fatalf("ID = %q, want the certificate's name cn:device-42", c.ID())
		}
		r, err := c.Echo.Unary(testenv.Ctx(t), &testpb.EchoRequest{Message: "m"})
		if err != nil || r.GetPeerId() != "cn:device-42" {
			t.Fatalf("Unary: caller %q, err %v", r.GetPeerId(), err)
		}
		_, err = e.Dial(testenv.ClientConfig{Name: "anonymous"})
		testenv.WantCode(t, err, codes.Unauthenticated, "Dial without a client certificate")
	})
}

func TestClientLookups(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		e := testenv.NewPlainOn(t, tr)
		var clients []*testenv.Client
		for i := 0; i < 4; i++ {
			clients = append(clients, e.Connect(testenv.ClientConfig{Name: fmt.Sprint("c", i)}))
		}
		peers := e.Srv.Peers()
		var got, want []string
		for _, p := range peers {
			got = append(got, p.ID)
		}
		for _, c := range clients {
			want = append(want, c.ID())
		}
		sort.Strings(want)
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Fatalf("Peers() IDs = %v, want %v", got, want)
		}
		for i, c := range clients {
			stub, err := e.Srv.Client(c.ID())
			if err != nil {
				t.Fatalf("Client(%q): %v", c.ID(), err)
			}
			r, err := stub.Unary(testenv.Ctx(t), &testpb.EchoRequest{Message: "x"})
			if err != nil || r.GetMessage() != fmt.Sprint("c", i, ":x") {
				t.Fatalf("Client(%q).Unary = %q, %v; want c%d:x", c.ID(), r.GetMessage(), err, i)
			}
		}
		_, err := e.Srv.Client("nobody")
		testenv.WantCode(t, err, codes.NotFound, "Client of an unknown ID")
		_, err = e.Srv.ClientFromContext(context.Background())
		testenv.WantCode(t, err, codes.FailedPrecondition, "ClientFromContext outside a call")
		if _, ok := brpc.PeerFromContext(context.Background()); ok {
			t.Fatal("PeerFromContext reported a peer outside a call")
		}

		clients[0].Shutdown()
		testenv.WaitFor(t, 5*time.Second, "a closed client to leave Peers()", func() bool { return len(e.Srv.Peers()) == 3 })
		_, err = e.Srv.Client(clients[0].ID())
		testenv.WantCode(t, err, codes.NotFound, "Client of a closed client")
	})
}
