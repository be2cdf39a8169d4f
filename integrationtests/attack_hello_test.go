package integrationtests

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/handshake"
	"github.com/brpc-go/brpc/internal/testenv"
	"github.com/brpc-go/brpc/internal/testpb"
)

// Bounds on what a client's hello metadata costs the server, quoted by
// docs/security.md.
const (
	// maxRefusedHelloBytes bounds what a client refused for its hello's
	// metadata leaves the server holding. Nothing of the hello is kept: a
	// refused hello of 32,762 values leaves as much (measured 3-13 KiB per
	// client, over 20) as one of 257, whatever the transports keep of a
	// connection that just closed.
	maxRefusedHelloBytes = 32 << 10
	// maxCappedHelloBytes bounds what a welcomed, idle client whose hello
	// metadata is at the default caps (256 values, as large as
	// DefaultMaxHelloSize lets them be) costs the server: the metadata once
	// (its 64 KiB and map and string headers), and the idle session
	// (maxIdleBytesPerPeer). Kept twice, as it once was, it would cost some
	// 70 KiB more. Measured: 128-133 KiB on either transport; over TCP 250
	// KiB while the control stream kept the buffer yamux grew for the hello.
	maxCappedHelloBytes = 160 << 10
	// maxMetadataBytesPerCall bounds what a call from a client with a
	// hello of 32,762 metadata values costs the server beyond a call from
	// one without metadata: PeerFromContext hands out the session's
	// metadata, never a copy of it (a copy of its map and slices would be
	// some 512 KiB a call).
	maxMetadataBytesPerCall = 16 << 10
)

// helloSize is the size of the hello that carries md.
func helloSize(md metadata.MD) int { return proto.Size(handshake.NewHello(md)) }

// manyValuesMetadata is the attacker's metadata: as many empty values under
// one key as a hello of DefaultMaxHelloSize holds (each costs 2 bytes
// there, and a string header and more once decoded).
func manyValuesMetadata() metadata.MD {
	n := brpc.DefaultMaxHelloSize / 2
	for helloSize(metadata.MD{"k": make([]string, n)}) > brpc.DefaultMaxHelloSize {
		n--
	}
	return metadata.MD{"k": make([]string, n)}
}

// cappedMetadata is metadata at the default caps: DefaultMaxHelloMetadataValues
// values under one key, each as long as a hello of DefaultMaxHelloSize lets
// them be.
func cappedMetadata() metadata.MD {
	md := func(size int) metadata.MD {
		v := make([]string, brpc.DefaultMaxHelloMetadataValues)
		for i := range v {
			v[i] = strings.Repeat("v", size)
		}
		return metadata.MD{"k": v}
	}
	size := brpc.DefaultMaxHelloSize / brpc.DefaultMaxHelloMetadataValues
	for helloSize(md(size)) > brpc.DefaultMaxHelloSize {
		size--
	}
	return md(size)
}

// dialTo connects a client that serves nothing to ep over transport tr
// with md as its hello metadata.
func dialTo(ep testenv.Endpoint, tr string, md metadata.MD) (*brpc.ClientConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return brpc.Dial(ctx, tr+"://"+ep.Addr, brpc.WithTLSConfig(&tls.Config{RootCAs: ep.Roots}), brpc.WithMetadata(md))
}

// A hello that packs tens of thousands of metadata values into the size
// cap is refused before it is decoded and leaves nothing behind; a client
// at the default caps is welcomed and costs the server its metadata once.
func TestAttackHelloMetadata(t *testing.T) {
	many, capped := manyValuesMetadata(), cappedMetadata()
	t.Logf("refused hello: %d values in %d bytes; capped hello: %d values of %d bytes in %d bytes",
		len(many["k"]), helloSize(many), len(capped["k"]), len(capped["k"][0]), helloSize(capped))
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		t.Run("refused", func(t *testing.T) {
			per := underAttack(t, "server", tr, attackConns, func(ep testenv.Endpoint) {
				_, err := dialTo(ep, tr, many)
				if status.Code(err) != codes.ResourceExhausted {
					t.Errorf("a hello of %d metadata values: Dial returned %v, want ResourceExhausted", len(many["k"]), err)
				}
			})
			wantAtMost(t, per, maxRefusedHelloBytes, "a client refused for its hello's metadata")
		})
		t.Run("capped", func(t *testing.T) {
			per := underAttack(t, "server", tr, attackConns, func(ep testenv.Endpoint) {
				cc, err := dialTo(ep, tr, capped)
				if err != nil {
					t.Errorf("a hello at the metadata caps: %v", err)
					return
				}
				t.Cleanup(func() { cc.Close() })
			})
			wantAtMost(t, per, maxCappedHelloBytes, "a welcomed client with its hello metadata at the caps")
		})
	})
}

// raisedHelloRole is a server child that admits the attacker's hello of
// tens of thousands of metadata values (its caps raised past them).
const raisedHelloRole = "raised-hello-server"

var raisedHelloServerRole = testenv.ServerRoleWith(brpc.WithMaxHelloMetadata(1<<16, 0))

// PeerFromContext, which the server child's echo handler calls on every
// call, allocates nothing in proportion to the caller's hello metadata:
// checked with the largest number of values a hello can carry, on a
// server whose caps admit them.
func TestAttackHelloMetadataPerCall(t *testing.T) {
	srv := testenv.StartServerChildAs(t, raisedHelloRole, "quic")
	stub := func(md metadata.MD) testpb.EchoClient {
		cc, err := dialTo(srv.Endpoint(), "quic", md)
		if err != nil {
			t.Fatalf("Dial: %v", err)
		}
		t.Cleanup(func() { cc.Close() })
		return testpb.NewEchoClient(cc)
	}
	perCall := func(stub testpb.EchoClient) float64 {
		const calls = 200
		b0, _ := srv.Allocated(t)
		for range calls {
			if _, err := stub.Unary(testenv.Ctx(t), &testpb.EchoRequest{Message: "m"}); err != nil {
				t.Fatalf("Unary: %v", err)
			}
		}
		b1, _ := srv.Allocated(t)
		return float64(b1-b0) / calls
	}
	plain, many := stub(nil), stub(manyValuesMetadata())
	perCall(plain)
	perCall(many)
	// The least of a few rounds: other work of the child's (keepalives,
	// the race detector's) only ever adds.
	small, large := perCall(plain), perCall(many)
	for range 2 {
		small, large = min(small, perCall(plain)), min(large, perCall(many))
	}
	t.Logf("the server allocates %.1f KiB per call from a client without metadata, %.1f KiB from one with %d values", small/1024, large/1024, len(manyValuesMetadata()["k"]))
	if large-small > maxMetadataBytesPerCall {
		t.Errorf("a call from a client with %d hello metadata values costs the server %.1f KiB more than one without, want at most %d KiB", len(manyValuesMetadata()["k"]), (large-small)/1024, maxMetadataBytesPerCall>>10)
	}
}
