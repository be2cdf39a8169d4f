package testenv_test

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/testenv"
	"github.com/brpc-go/brpc/internal/testpb"
)

func TestMain(m *testing.M) {
	testenv.RunChild(map[string]testenv.Role{"server-one-client": testenv.ServerRoleWith(brpc.WithMaxClients(1))})
	goleak.VerifyTestMain(m)
}

// udpEcho answers every datagram with the address it came from.
func udpEcho(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			_, from, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			c.WriteToUDP([]byte(from.String()), from)
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return c
}

// ask sends a datagram through conn and returns the answer: the source
// address the echo server saw.
func ask(t *testing.T, conn *net.UDPConn) string {
	t.Helper()
	buf := make([]byte, 2048)
	// A datagram may be lost to a rebinding in flight: ask again.
	for range 10 {
		if _, err := conn.Write([]byte("who am i")); err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(time.Second))
		n, err := conn.Read(buf)
		if err == nil {
			return string(buf[:n])
		}
	}
	t.Fatal("no answer through the relay")
	return ""
}

// TestUDPRelayRebind: after Rebind, the server sees the client's
// datagrams from the new address, and its answers still reach the client.
func TestUDPRelayRebind(t *testing.T) {
	srv := udpEcho(t)
	r := testenv.NewUDPRelay(t, srv.LocalAddr().String(), testenv.Faults{}, 1)
	ra, err := net.ResolveUDPAddr("udp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialUDP("udp", nil, ra)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	before := ask(t, conn)
	if before != r.UpstreamAddr() {
		t.Fatalf("the server saw %s, the relay reports %s", before, r.UpstreamAddr())
	}
	moved, err := r.Rebind()
	if err != nil {
		t.Fatal(err)
	}
	after := ask(t, conn)
	if after == before || after != moved {
		t.Fatalf("after Rebind the server saw %s (before %s, Rebind reported %s)", after, before, moved)
	}
}

// TestUDPRelayFaults: every kind of fault happens at the configured rates,
// and Blackhole drops everything.
func TestUDPRelayFaults(t *testing.T) {
	srv := udpEcho(t)
	r := testenv.NewUDPRelay(t, srv.LocalAddr().String(), testenv.Faults{Drop: 0.2, Reorder: 0.2, Duplicate: 0.2}, 7)
	ra, _ := net.ResolveUDPAddr("udp", r.Addr())
	conn, err := net.DialUDP("udp", nil, ra)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	const n = 200
	for i := range n {
		conn.Write([]byte(strconv.Itoa(i)))
	}
	testenv.WaitFor(t, 5*time.Second, "the relay to see every datagram", func() bool { return r.Up.Received.Load() == n })
	if r.Up.Dropped.Load() == 0 || r.Up.Delayed.Load() == 0 || r.Up.Duplicated.Load() == 0 {
		t.Fatalf("client to server: %v; want some of each fault", &r.Up)
	}
	r.Blackhole()
	conn.Write([]byte("lost"))
	testenv.WaitFor(t, 5*time.Second, "the relay to see the last datagram", func() bool { return r.Up.Received.Load() == n+1 })
	if d := r.Up.Dropped.Load(); d < 1 {
		t.Fatalf("a blackholed relay forwarded a datagram: %v", &r.Up)
	}
}

// TestServerChild: a server in a child process serves a client of this
// process both ways and reports its own footprint, which does not include
// what this process allocates.
func TestServerChild(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		s := testenv.StartServerChild(t, tr)
		gs := grpc.NewServer()
		testpb.RegisterEchoServer(gs, &testenv.Echo{Name: "here"})
		defer gs.Stop()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cc, err := brpc.Dial(ctx, s.Target, brpc.WithTLSConfig(s.ClientTLS()), brpc.WithServer(gs))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		r, err := testpb.NewEchoClient(cc).Unary(ctx, &testpb.EchoRequest{Message: "hi"})
		if err != nil || r.GetMessage() != "server:hi" {
			t.Fatalf("forward call to the child: %q, %v", r.GetMessage(), err)
		}
		if got := s.Do(t, "call", cc.ID()); got != "here:from-child" {
			t.Fatalf("reverse call from the child: %q", got)
		}
		if got := s.Do(t, "peers"); got != "1" {
			t.Fatalf("the child lists %s peers, want 1", got)
		}
		f0 := s.Footprint(t)
		hog := make([]byte, 64<<20)
		for i := range hog {
			hog[i] = 1
		}
		f1 := s.Footprint(t)
		if f1.HeapAlloc > f0.HeapAlloc+32<<20 {
			t.Fatalf("the child's heap grew from %d to %d bytes with this process's allocation", f0.HeapAlloc, f1.HeapAlloc)
		}
		if f1.Goroutines == 0 || f1.HeapInuse == 0 {
			t.Fatalf("implausible child footprint %v", f1)
		}
		_ = hog[len(hog)-1]
		cc.Close()
		s.Stop(t)
	})
}

// TestServerChildWithOptions: a server child registered with options is
// built with them: with WithMaxClients(1), a second client is refused.
func TestServerChildWithOptions(t *testing.T) {
	s := testenv.StartServerChildAs(t, "server-one-client", "quic")
	dial := func() (*brpc.ClientConn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		return brpc.Dial(ctx, s.Target, brpc.WithTLSConfig(s.ClientTLS()))
	}
	first, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	second, err := dial()
	if err == nil {
		second.Close()
		t.Fatal("a second client was admitted by a server with WithMaxClients(1)")
	}
	testenv.WantCode(t, err, codes.ResourceExhausted, "the second client's Dial")
}
