package grpcglue

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/test/bufconn"

	"github.com/brpc-go/brpc/internal/testpb"
)

// readyReader is grpc-go's ready reader (internal/transport/readyreader): a
// connection with this method is read by grpc-go's HTTP/2 framer through it
// instead of through a bufio.Reader of the framer's own.
type readyReader interface {
	ReadOnReady(bufSize int, pool mem.BufferPool) (*[]byte, int, error)
}

var _ readyReader = (*streamConn)(nil)

// countingPool hands out plain buffers and counts them.
type countingPool struct{ gets, puts atomic.Int64 }

func (p *countingPool) Get(n int) *[]byte {
	p.gets.Add(1)
	b := make([]byte, n)
	return &b
}

func (p *countingPool) Put(*[]byte) { p.puts.Add(1) }

// gatedConn is a stream whose WaitReadable returns when open is closed.
type gatedConn struct {
	net.Conn
	open  chan struct{}
	waits atomic.Int64
}

func (c *gatedConn) WaitReadable() error {
	c.waits.Add(1)
	<-c.open
	return nil
}

// TestReadOnReadyTakesNoBufferWhileWaiting: the buffer is taken from the
// pool only once the stream has data, and returned when nothing was read.
func TestReadOnReadyTakesNoBufferWhileWaiting(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	g := &gatedConn{Conn: a, open: make(chan struct{})}
	c := NewStreamConn(g, NewSessionInfo(Peer{}, newFakeConn("127.0.0.1:1", "127.0.0.1:2"), nil)).(readyReader)
	pool := &countingPool{}
	type result struct {
		buf *[]byte
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		buf, n, err := c.ReadOnReady(32<<10, pool)
		done <- result{buf, n, err}
	}()
	// The pipe delivers the write only to a Read, which ReadOnReady makes
	// once the stream says it is readable.
	wrote := make(chan error, 1)
	go func() {
		_, err := b.Write([]byte("frame"))
		wrote <- err
	}()
	select {
	case r := <-done:
		t.Fatalf("ReadOnReady returned (%d, %v) before the stream was readable", r.n, r.err)
	case <-time.After(100 * time.Millisecond):
	}
	if n := pool.gets.Load(); n != 0 {
		t.Fatalf("%d buffers taken from the pool while waiting for data, want none", n)
	}
	close(g.open)
	r := <-done
	if r.err != nil || r.n != 5 || string((*r.buf)[:r.n]) != "frame" {
		t.Fatalf("ReadOnReady = %d, %v, want the 5 bytes written", r.n, r.err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if pool.gets.Load() != 1 || pool.puts.Load() != 0 {
		t.Fatalf("pool: %d gets, %d puts; want one buffer handed to the caller", pool.gets.Load(), pool.puts.Load())
	}

	// A read that fails returns its buffer and hands none out.
	b.Close()
	buf, n, err := c.ReadOnReady(32<<10, pool)
	if buf != nil || n != 0 || err == nil {
		t.Fatalf("ReadOnReady on a closed pipe = %v, %d, %v; want no buffer and an error", buf, n, err)
	}
	if pool.gets.Load() != 2 || pool.puts.Load() != 1 {
		t.Fatalf("pool after a failed read: %d gets, %d puts; want the second buffer returned", pool.gets.Load(), pool.puts.Load())
	}
}

// TestGRPCFramersReadOnReady: grpc-go's server and client transports both
// read a stream conn through ReadOnReady, so neither keeps a read buffer
// while its peer is quiet. It fails if grpc-go stops looking for the
// method, or its signature changes.
func TestGRPCFramersReadOnReady(t *testing.T) {
	pipe := bufconn.Listen(1 << 16)
	defer pipe.Close()
	info := NewSessionInfo(Peer{}, newFakeConn("127.0.0.1:1", "127.0.0.1:2"), nil)
	open := make(chan struct{})
	close(open)
	var mu sync.Mutex
	var served, dialed []*gatedConn

	lis := NewListener(&net.UnixAddr{Name: "test", Net: "brpc"})
	fed := make(chan struct{})
	go func() {
		defer close(fed)
		for {
			c, err := pipe.Accept()
			if err != nil {
				return
			}
			g := &gatedConn{Conn: c, open: open}
			mu.Lock()
			served = append(served, g)
			mu.Unlock()
			lis.Push(context.Background(), NewStreamConn(g, info))
		}
	}()
	stop := serveEcho(lis, &peerEcho{seen: make(chan context.Context, 1)})
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
			g := &gatedConn{Conn: c, open: open}
			mu.Lock()
			dialed = append(dialed, g)
			mu.Unlock()
			return NewStreamConn(g, info), nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if _, err := testpb.NewEchoClient(cc).Unary(context.Background(), &testpb.EchoRequest{Message: "hi"}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(served) != 1 || len(dialed) != 1 {
		t.Fatalf("%d streams served, %d dialed; want one each", len(served), len(dialed))
	}
	if served[0].waits.Load() == 0 || dialed[0].waits.Load() == 0 {
		t.Fatalf("grpc-go waited for data %d times on the server's stream and %d times on the client's: want both read through ReadOnReady",
			served[0].waits.Load(), dialed[0].waits.Load())
	}
}
