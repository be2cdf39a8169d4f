package integrationtests

import (
	"bytes"
	"context"
	"encoding/base64"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/certs"
	"github.com/brpc-go/brpc/internal/testenv"
	"github.com/brpc-go/brpc/internal/testpb"
)

// The windows of the gateway server child: its gateway *grpc.Server's, for
// what a caller sends, and its reverse connections', for what a client
// sends; both static, as docs/security.md recommends.
const (
	stallWindow     = 256 << 10
	stallConnWindow = 4 << 20
	// stallMsg is the payload of every message of the stalled calls.
	stallMsg = 128 << 10
	// grpcWriteQuota is what grpc-go queues per stream for sending before
	// a send blocks (its defaultWriteQuota).
	grpcWriteQuota = 64 << 10
	// stallCallOverhead is a relayed call's own state: two streams, the
	// relay's two goroutines and grpc-go's for each stream.
	stallCallOverhead = 64 << 10
)

// pooled is the size of the buffer grpc-go marshals a message of n bytes
// into: the next of its default pool's sizes (256 B, 4, 16 and 32 KiB,
// 1 MiB), or n itself beyond them. A 128 KiB message takes 1 MiB.
func pooled(n int) int {
	for _, size := range []int{256, 4 << 10, 16 << 10, 32 << 10, 1 << 20} {
		if n <= size {
			return size
		}
	}
	return n
}

// maxStalledDirection bounds what one direction of a relayed call whose
// receiver does not read makes the server hold, its sender sending as fast
// as it can: the sender's unread data, up to the receiving stream's
// window; the message the relay holds; and, on the stalled side, what
// grpc-go queues: the message it is part way through writing when the
// window closed, those the write quota let in behind it, and the one
// marshaled by the send that now waits for quota, each in a buffer of buf
// bytes.
func maxStalledDirection(window, msg, buf int) int {
	queued := (grpcWriteQuota+msg-1)/msg + 2
	return window + msg + queued*buf + stallCallOverhead
}

// stallWire is a stalled call's message as encoded: the payload and its
// field's tag and length.
const stallWire = stallMsg + 16

// maxSessionBuffer is what the reverse connection's session stream may
// keep allocated, whatever it holds: yamux grows a stream's receive buffer
// up to its window (4 MiB) and keeps it; quic-go's stream buffers hold
// frames until grpc-go reads them, which it does at once.
var maxSessionBuffer = map[string]int{"quic": 1 << 20, "tcp": 4 << 20}

// gatewayRole is the server child of the stalled-caller tests: a brpc
// server whose reverse connections have static windows, and a gateway
// *grpc.Server (admitting every call) on a loopback port of its own, with
// static windows too. Its ready words are those of a server child and
// gateway=ADDR.
const gatewayRole = "gateway-server"

// gatewayDescribedRole is gatewayRole with the echo service described to
// the gateway (WithGatewayServices): its server-streaming calls take the
// relay's path for methods with one request, its bidi ones the general
// relay.
const gatewayDescribedRole = "gateway-server-described"

func gatewayServerRole(c *testenv.ChildEnv) ([]string, error) { return serveGatewayChild(c) }

func gatewayDescribedServerRole(c *testenv.ChildEnv) ([]string, error) {
	return serveGatewayChild(c, brpc.WithGatewayServices(&testpb.Echo_ServiceDesc))
}

func serveGatewayChild(c *testenv.ChildEnv, opts ...brpc.ServerOption) ([]string, error) {
	transport := c.Arg("transport")
	ca, err := certs.NewCA()
	if err != nil {
		return nil, err
	}
	stls, err := ca.ServerTLS()
	if err != nil {
		return nil, err
	}
	s, err := testenv.StartServing(transport, "127.0.0.1:0", stls, &testenv.Echo{Name: "server"}, nil, append([]brpc.ServerOption{
		brpc.WithGRPCDialOptions(grpc.WithInitialWindowSize(stallWindow), grpc.WithInitialConnWindowSize(stallConnWindow)),
	}, opts...))
	if err != nil {
		return nil, err
	}
	c.Cleanup(func() { s.Stop() })
	gw := grpc.NewServer(
		grpc.InitialWindowSize(stallWindow), grpc.InitialConnWindowSize(stallConnWindow),
		grpc.UnknownServiceHandler(s.Srv.Gateway(func(context.Context, string, string) error { return nil })),
	)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go gw.Serve(lis)
	c.Cleanup(gw.Stop)
	// "call ID": a reverse Unary to that client, as a server child answers.
	c.Handle("call", testenv.ReverseCall(s.Srv))
	return []string{
		"target=" + transport + "://" + s.Lis.Addr().String(),
		"ca=" + base64.StdEncoding.EncodeToString(ca.CertPEM()),
		"gateway=" + lis.Addr().String(),
	}, nil
}

// firehose is a client's echo service whose streaming handlers send as
// fast as flow control lets them and never read more than the first
// request.
type firehose struct {
	testpb.UnimplementedEchoServer
	sends   atomic.Int64
	running atomic.Int64
}

func (f *firehose) Unary(_ context.Context, r *testpb.EchoRequest) (*testpb.EchoResponse, error) {
	return &testpb.EchoResponse{Message: "firehose:" + r.GetMessage()}, nil
}

func (f *firehose) pour(send func(*testpb.EchoResponse) error, payload []byte) error {
	f.running.Add(1)
	defer f.running.Add(-1)
	for {
		if err := send(&testpb.EchoResponse{Payload: payload}); err != nil {
			return err
		}
		f.sends.Add(1)
	}
}

func (f *firehose) ServerStream(r *testpb.EchoRequest, st testpb.Echo_ServerStreamServer) error {
	return f.pour(st.Send, r.GetPayload())
}

func (f *firehose) BidiStream(st testpb.Echo_BidiStreamServer) error {
	r, err := st.Recv()
	if err != nil {
		return err
	}
	return f.pour(st.Send, r.GetPayload())
}

// A caller that opens streaming calls through the gateway and never reads
// their responses, to a client whose handlers send as fast as they can,
// makes the server hold no more than flow control allows, and other calls
// keep working meanwhile.
func TestGatewayCallerThatStopsReading(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		t.Run("general", func(t *testing.T) { testGatewayCallerThatStopsReading(t, tr, gatewayRole) })
		t.Run("described", func(t *testing.T) { testGatewayCallerThatStopsReading(t, tr, gatewayDescribedRole) })
	})
}

func testGatewayCallerThatStopsReading(t *testing.T, tr, role string) {
	const streams, bidis = 8, 8
	srv := testenv.StartServerChildAs(t, role, tr)
	var gwAddr string
	for _, w := range srv.Ready {
		if v, ok := strings.CutPrefix(w, "gateway="); ok {
			gwAddr = v
		}
	}

	fh := &firehose{}
	fhGS := grpc.NewServer(grpc.InitialWindowSize(stallWindow), grpc.InitialConnWindowSize(stallConnWindow))
	testpb.RegisterEchoServer(fhGS, fh)
	defer fhGS.Stop()
	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer dcancel()
	fhConn, err := brpc.Dial(dctx, srv.Target, brpc.WithTLSConfig(srv.ClientTLS()), brpc.WithServer(fhGS))
	if err != nil {
		t.Fatal(err)
	}
	defer fhConn.Close()
	politeGS := grpc.NewServer()
	testpb.RegisterEchoServer(politeGS, &testenv.Echo{Name: "polite"})
	defer politeGS.Stop()
	politeConn, err := brpc.Dial(dctx, srv.Target, brpc.WithTLSConfig(srv.ClientTLS()), brpc.WithServer(politeGS))
	if err != nil {
		t.Fatal(err)
	}
	defer politeConn.Close()

	// The caller's own windows are small and static, so that it stops
	// taking data soon; what it holds is its own business.
	cc, err := grpc.NewClient(gwAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(1<<20))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	caller := testpb.NewEchoClient(cc)
	callTo := func(ctx context.Context, id string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, brpc.GatewayTargetHeader, id)
	}
	politeCallOK := func(what string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r, err := caller.Unary(callTo(ctx, politeConn.ID()), &testpb.EchoRequest{Message: "hi"})
		if err != nil || r.GetMessage() != "polite:hi" {
			t.Fatalf("a call through the gateway to another client %s: %v, %q", what, err, r.GetMessage())
		}
	}
	// Both clients' reverse connections and the caller's connection are
	// up before the baseline is taken.
	wctx, wcancel := context.WithTimeout(context.Background(), 5*time.Second)
	if _, err := caller.Unary(callTo(wctx, fhConn.ID()), &testpb.EchoRequest{}); err != nil {
		t.Fatalf("warm-up call to the firehose: %v", err)
	}
	wcancel()
	politeCallOK("before")
	f0 := srv.Footprint(t)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	payload := bytes.Repeat([]byte("f"), stallMsg)
	for range streams {
		if _, err := caller.ServerStream(callTo(ctx, fhConn.ID()), &testpb.EchoRequest{Payload: payload}); err != nil {
			t.Fatalf("ServerStream: %v", err)
		}
	}
	var callerSends atomic.Int64
	for range bidis {
		bs, err := caller.BidiStream(callTo(ctx, fhConn.ID()))
		if err != nil {
			t.Fatalf("BidiStream: %v", err)
		}
		// The caller sends as fast as it can too, and reads nothing.
		wg.Go(func() {
			for bs.Send(&testpb.EchoRequest{Payload: payload}) == nil {
				callerSends.Add(1)
			}
		})
	}
	testenv.WaitFor(t, 10*time.Second, "every firehose handler to run", func() bool { return fh.running.Load() == streams+bidis })
	testenv.WaitFor(t, 20*time.Second, "flow control to stop the firehose and the caller", func() bool {
		return stuck(&fh.sends) && stuck(&callerSends)
	})
	f1 := srv.Footprint(t)
	politeCallOK("while one caller does not read")
	srv.WantServes(t, "during")

	grown := float64(f1.Held()) - float64(f0.Held())
	// A server-streaming call stalls one way; a bidi call both ways,
	// since the caller sends as fast as it can too and the client's
	// handler reads nothing. Toward the caller the gateway's
	// *grpc.Server marshals each message into a pooled buffer; toward
	// the client the relay hands grpc-go the message's own bytes.
	down := maxStalledDirection(stallWindow, stallMsg, pooled(stallWire))
	up := maxStalledDirection(stallWindow, stallMsg, stallWire)
	bound := streams*down + bidis*(down+up) + maxSessionBuffer[tr]
	t.Logf("%s: the firehose sent %d messages of %d KiB and the caller %d before flow control stopped them; the server holds %.1f MiB more (%d -> %d goroutines), bound %.1f MiB",
		tr, fh.sends.Load(), stallMsg>>10, callerSends.Load(), grown/(1<<20), f0.Goroutines, f1.Goroutines, float64(bound)/(1<<20))
	if grown > float64(bound) {
		t.Errorf("%d stalled relayed calls make the server hold %.1f MiB, more than flow control allows (%.1f MiB)", streams+bidis, grown/(1<<20), float64(bound)/(1<<20))
	}

	// Ending the caller's calls ends the client's handlers.
	cancel()
	wg.Wait()
	testenv.WaitFor(t, 10*time.Second, "the firehose handlers to end", func() bool { return fh.running.Load() == 0 })
}
