//go:build linux

package integrationtests

import (
	"bytes"
	"context"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/brpc-go/brpc/internal/testenv"
	"github.com/brpc-go/brpc/internal/testpb"
)

// blockedSendLoops counts the yamux sessions whose send loop is blocked
// writing to its socket: the server's sessions to clients that stopped
// reading (the other sessions of the test write to sockets that are read).
func blockedSendLoops() int {
	buf := make([]byte, 8<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		s := string(g)
		if strings.Contains(s, "yamux.(*Session).sendLoop") && strings.Contains(s, "waitWrite") {
			n++
		}
	}
	return n
}

// TestGracefulStopIsBoundedWithStuckPeers: 50 TCP clients stopped reading
// their connection while the server was streaming to them, so that the
// server's writes to them block (for yamux's write timeout, 20 s with the
// default keepalive). GracefulStop still returns within the bound its doc
// gives (2 s for the going-away notices, however many clients are stuck,
// plus what the other clients' calls take), and an ordinary client's call
// in flight still drains.
func TestGracefulStopIsBoundedWithStuckPeers(t *testing.T) {
	const stuck = 50
	const callTime = time.Second
	e := testenv.New(t, testenv.Config{Transport: "tcp", Call: func(*testenv.Env) func(context.Context) (string, error) { return nil }})
	relay := testenv.NewTCPRelay(t, e.Addr, testenv.TCPRelayOptions{SmallServerSockets: true})

	// The stuck clients serve with windows far above what the relay's
	// buffers hold: the server's calls to them write until its socket is
	// full. They make no calls of their own: a forward call cannot end while
	// its client does not read, and GracefulStop rightly waits for it.
	ctx := testenv.Ctx(t)
	var backs []testpb.EchoClient
	for range stuck {
		c := e.Connect(testenv.ClientConfig{Name: "stuck", Target: "tcp://" + relay.Addr(),
			GRPCOpts: []grpc.ServerOption{grpc.InitialWindowSize(1 << 30), grpc.InitialConnWindowSize(1 << 30)}})
		back, err := e.Srv.Client(c.ID())
		if err != nil {
			t.Fatal(err)
		}
		testenv.Warm(t, back)
		backs = append(backs, back)
	}
	ordinary := e.Connect(testenv.ClientConfig{Name: "ordinary"})
	testenv.Warm(t, ordinary.Echo)

	// The clients stop reading while the server streams to them, up to
	// the session's stream window each, far more than the relay's small
	// buffers and the server's socket hold.
	relay.StallTowardClients()
	payload := bytes.Repeat([]byte("x"), 16<<10)
	sendCtx, stopSending := context.WithCancel(ctx)
	defer stopSending()
	var senders sync.WaitGroup
	defer senders.Wait()
	for _, back := range backs {
		st, err := back.ClientStream(sendCtx)
		if err != nil {
			t.Fatalf("a reverse ClientStream: %v", err)
		}
		senders.Add(1)
		go func() {
			defer senders.Done()
			for st.Send(&testpb.EchoRequest{Payload: payload}) == nil {
			}
		}()
	}
	testenv.WaitFor(t, 30*time.Second, "the server's writes to every stuck client to block", func() bool {
		return blockedSendLoops() >= stuck
	})
	// The calls end; what they wrote stays stuck in the sessions.
	stopSending()
	senders.Wait()

	call := testenv.Inflight(ordinary.Echo, callTime)
	testenv.WaitFor(t, 10*time.Second, "the ordinary call to reach its handler", func() bool { return e.Echo.Sleeping() > 0 })
	bound := 2*time.Second + callTime + 3*time.Second // the documented bound, generously
	begin := time.Now()
	stopped := make(chan struct{})
	go func() {
		e.Srv.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
		t.Logf("GracefulStop with %d stuck clients took %v", stuck, time.Since(begin))
	case <-time.After(bound):
		t.Errorf("GracefulStop with %d stuck clients has not returned after %v", stuck, bound)
		e.Srv.Stop()
		<-stopped
	}
	if err := <-call; err != nil {
		t.Errorf("the ordinary client's call in flight during GracefulStop: %v, want success", err)
	}
}
