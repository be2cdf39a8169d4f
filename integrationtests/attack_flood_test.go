package integrationtests

import (
	"context"
	"errors"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/brpc-go/brpc/internal/session"
	"github.com/brpc-go/brpc/internal/testenv"
	"github.com/brpc-go/brpc/internal/testpb"
)

// The settings of the application's *grpc.Server that docs/security.md
// recommends for a brpc server. grpc-go's defaults allow unlimited
// concurrent calls per HTTP/2 connection and let its BDP estimation grow a
// call's receive window as data arrives, whether the handler reads or not:
// one welcomed client's calls could make the server hold gigabytes.
const (
	// recommendedMaxConcurrentStreams is grpc.MaxConcurrentStreams: calls
	// at once on one HTTP/2 connection. A client beyond it waits for a
	// call to end; it fails nothing.
	recommendedMaxConcurrentStreams = 16
	// recommendedWindow is grpc.InitialWindowSize: the data a call may
	// have received and its handler not yet read. A static window switches
	// off grpc-go's BDP estimation; with 256 KiB the bench's bulk figures on
	// loopback stayed within the noise of the BDP-sized windows', and a
	// call still gets 256 KiB per round trip on a long path.
	recommendedWindow = 256 << 10
	// recommendedConnWindow is grpc.InitialConnWindowSize: enough for every
	// call of a connection to have its window in flight at once. grpc-go
	// credits the connection window as data arrives, not as handlers read,
	// so it bounds no memory; it only must not throttle the calls.
	recommendedConnWindow = recommendedMaxConcurrentStreams * recommendedWindow
)

// recommendedGRPCServerOptions are those settings as options.
func recommendedGRPCServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxConcurrentStreams(recommendedMaxConcurrentStreams),
		grpc.InitialWindowSize(recommendedWindow),
		grpc.InitialConnWindowSize(recommendedConnWindow),
	}
}

// maxFloodedSessionBytes bounds what one welcomed session can make a server
// hold (heap and goroutine stacks after GC) with calls whose handlers do
// not read, under brpc's default stream cap (DefaultMaxStreamsPerSession,
// 8) and the recommended *grpc.Server settings: 7 HTTP/2 connections (the
// control stream takes the eighth stream) x recommendedMaxConcurrentStreams
// calls x recommendedWindow of unread data is 28 MiB; the bound is twice
// that, for each call's own state (a handler goroutine, grpc-go's stream,
// buffers that hold a frame's data in a larger pooled buffer). Measured:
// 30-31 MiB on either transport (up to 43 MiB over TCP without the race
// detector). With the former stream cap of 100 the same attack held 424 MiB
// (QUIC) and 433 MiB (TCP); with the cap of 8 and grpc-go's default
// settings, more than 199 MiB and 2.7 GiB.
const maxFloodedSessionBytes = 56 << 20

// grpcFloodRole is the server child of the flood: brpc's defaults and the
// recommended *grpc.Server settings.
const grpcFloodRole = "grpc-flood-server"

var grpcFloodServerRole = testenv.ServerRoleWithGRPC(recommendedGRPCServerOptions())

// One welcomed client opens as many HTTP/2 connections as its session
// lets it (it tries 99) and 50 bidi-streaming calls on each, whose handler
// reads the first request and then sleeps, and sends payload on every
// call until flow control stops it. What the server holds is bounded by
// the stream cap and its *grpc.Server's settings, and an ordinary client
// calls both ways meanwhile.
func TestAttackGRPCFlood(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		srv := testenv.StartServerChildAs(t, grpcFloodRole, tr)
		srv.WantServes(t, "before")
		waitPeers(t, srv, 0)
		f0 := srv.Footprint(t)

		start := time.Now()
		s := rawSessionTo(t, srv.Endpoint(), tr)
		welcomed(t, s)
		flood := startGRPCFlood(t, s, 99, 50)
		f1 := flood.landed(t, srv, f0, recommendedWindow, maxFloodedSessionBytes, 45*time.Second)
		srv.WantServes(t, "during")

		held := float64(f1.Held()) - float64(f0.Held())
		t.Logf("%s: %d calls started on %d HTTP/2 connections, %.1f MiB written, landed in %v; the server holds %.1f MiB more (%d -> %d goroutines)",
			tr, flood.started.Load(), flood.conns, float64(flood.written.Load())/(1<<20), time.Since(start).Round(time.Millisecond),
			held/(1<<20), f0.Goroutines, f1.Goroutines)
		wantAtMost(t, held, maxFloodedSessionBytes, "one welcomed session's calls that are not read")
	})
}

// countingConn counts the bytes grpc-go writes to a stream: what the
// server's HTTP/2 flow control has let through.
type countingConn struct {
	net.Conn
	written *atomic.Int64
}

func (c countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.written.Add(int64(n))
	return n, err
}

// grpcFlood is one welcomed session's attack on the application's
// *grpc.Server: HTTP/2 connections, each a stream of the session, each
// with BidiStream calls whose handler reads the first request and then
// sleeps, while the caller goes on sending payload it never reads back.
type grpcFlood struct {
	conns   int          // HTTP/2 connections started (the session may reset some)
	started atomic.Int64 // calls whose stream grpc-go opened
	written atomic.Int64 // bytes written on the streams
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// startGRPCFlood runs the flood on s: up to conns connections (as many as
// s opens within half a second each) of calls calls each. t.Cleanup ends
// it.
func startGRPCFlood(t *testing.T, s session.Session, conns, calls int) *grpcFlood {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f := &grpcFlood{cancel: cancel}
	t.Cleanup(f.stop)
	payload := make([]byte, 16<<10)
	for range conns {
		octx, ocancel := context.WithTimeout(ctx, 500*time.Millisecond)
		st, err := s.OpenStream(octx)
		ocancel()
		if err != nil {
			break // QUIC's stream limit holds the opener back
		}
		var dialed atomic.Bool
		cc, err := grpc.NewClient("passthrough:///flood",
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) {
				if dialed.Swap(true) {
					return nil, errors.New("the flood opens one stream per connection")
				}
				return countingConn{Conn: st, written: &f.written}, nil
			}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		f.conns++
		stub := testpb.NewEchoClient(cc)
		for range calls {
			f.wg.Go(func() {
				bs, err := stub.BidiStream(ctx)
				if err != nil {
					return
				}
				f.started.Add(1)
				if bs.Send(&testpb.EchoRequest{SleepMs: 60_000}) != nil {
					return
				}
				for bs.Send(&testpb.EchoRequest{Payload: payload}) == nil {
				}
			})
		}
	}
	return f
}

func (f *grpcFlood) stop() {
	f.cancel()
	f.wg.Wait()
}

// landed waits until every call the flood started has reached its handler
// in the server child, has written the window the server gave it (window
// bytes, at least), and the server's flow control has stopped the flood:
// its writes have not moved while the child's heap held still between two
// footprints. It returns the later footprint, or the first that shows the
// server holding more than limit over base.
func (f *grpcFlood) landed(t *testing.T, srv *testenv.RemoteServer, base testenv.Footprint, window, limit int, within time.Duration) testenv.Footprint {
	t.Helper()
	deadline := time.Now().Add(within)
	testenv.WaitFor(t, within, "the flood's calls to reach their handlers", func() bool {
		n, err := strconv.ParseInt(srv.Do(t, "sleeping"), 10, 64)
		return err == nil && n > 0 && n >= f.started.Load()
	})
	for polls := 1; f.written.Load() < f.started.Load()*int64(window); polls++ {
		// A server without the bound fails as soon as it shows.
		if polls%50 == 0 {
			if fp := srv.Footprint(t); fp.Held() > base.Held()+uint64(limit) {
				return fp
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the flood's calls did not fill their windows within %v (%d bytes written)", within, f.written.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	written, fp := f.written.Load(), srv.Footprint(t)
	for {
		if fp.Held() > base.Held()+uint64(limit) {
			return fp
		}
		next := srv.Footprint(t)
		w := f.written.Load()
		if w == written && next.Held() <= fp.Held()+fp.Held()/100 {
			return next
		}
		if time.Now().After(deadline) {
			t.Fatalf("the flood's writes did not stop within %v (%d bytes written)", within, w)
		}
		written, fp = w, next
	}
}
