package integrationtests

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/testenv"
	"github.com/brpc-go/brpc/internal/testpb"
)

// What one used client costs the server in goroutines: one that made a
// forward call and served a reverse call, both gRPC connections still open.
// The session's (as idle: 3 on QUIC, 2 on TCP), the HTTP/2 server transport of the forward
// connection (its reader, writer and keepalive loops: the application's
// *grpc.Server's), and the reverse connection's HTTP/2 client transport
// (reader and writer), a subchannel of the server's one shared
// grpc.ClientConn. A grpc.ClientConn per client would add its three callback
// serializers.
const (
	usedClients = 50
	// Both directions' idle timeouts: short, so that the test waits little
	// for the release, yet long enough for the 50 clients' calls to be made
	// and counted before the first connection is released.
	usedIdleTimeout = 4 * time.Second
)

var maxUsedGoroutinesPerPeer = map[string]int{"quic": 8, "tcp": 7}

const usedClientsRole = "used-clients"

// usedClientsRoleFn is the child role "used-clients": "n" brpc clients of
// "target" (trusting the PEM certificate "ca") that serve the echo service
// and release their forward connection after "forward-idle". Its command
// "call" makes one forward call on every client at once.
func usedClientsRoleFn(c *testenv.ChildEnv) ([]string, error) {
	n, err := strconv.Atoi(c.Arg("n"))
	if err != nil {
		return nil, fmt.Errorf("n=%q: %v", c.Arg("n"), err)
	}
	idle, err := time.ParseDuration(c.Arg("forward-idle"))
	if err != nil {
		return nil, fmt.Errorf("forward-idle=%q: %v", c.Arg("forward-idle"), err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(c.Arg("ca"))) {
		return nil, fmt.Errorf("no CA certificate in the arguments")
	}
	gs := grpc.NewServer()
	testpb.RegisterEchoServer(gs, &testenv.Echo{Name: "child"})
	c.Cleanup(gs.Stop)
	stubs := make([]testpb.EchoClient, 0, n)
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		cc, err := brpc.Dial(ctx, c.Arg("target"), brpc.WithTLSConfig(&tls.Config{RootCAs: pool}),
			brpc.WithServer(gs), brpc.WithForwardIdleTimeout(idle))
		cancel()
		if err != nil {
			return nil, fmt.Errorf("Dial %d: %v", i, err)
		}
		c.Cleanup(func() { cc.Close() })
		stubs = append(stubs, testpb.NewEchoClient(cc))
	}
	c.Handle("call", func([]string) (string, error) {
		return "", callAll(len(stubs), func(i int) error {
			_, err := stubs[i].Unary(context.Background(), &testpb.EchoRequest{Message: "forward"})
			return err
		})
	})
	return nil, nil
}

// callAll runs call(0) to call(n-1) at once and returns the first error.
func callAll(n int, call func(i int) error) error {
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := call(i); err != nil {
				once.Do(func() { first = fmt.Errorf("call %d: %w", i, err) })
			}
		}()
	}
	wg.Wait()
	return first
}

// TestUsedClientCost connects clients from a child process, has each make
// a forward call and serve a reverse call, and counts the goroutines they
// cost this (server) process while both connections are open, and again
// once both directions' idle timeouts have passed: then each costs its
// session alone, as an idle client.
func TestUsedClientCost(t *testing.T) {
	testenv.EachTransport(t, testUsedClientCost)
}

func testUsedClientCost(t *testing.T, tr string) {
	e := testenv.New(t, testenv.Config{Transport: tr, ServerOpts: []brpc.ServerOption{brpc.WithReverseIdleTimeout(usedIdleTimeout)}})
	first, err := e.Dial(testenv.ClientConfig{Name: "first", NoServe: true})
	if err != nil {
		t.Fatal(err)
	}
	first.Shutdown()
	testenv.WaitFor(t, 5*time.Second, "the first client to leave", func() bool { return len(e.Srv.Peers()) == 0 })
	testenv.SettleGoroutines(t, 10*time.Second)
	g0 := runtime.NumGoroutine()

	child := testenv.StartChild(t, usedClientsRole, map[string]string{
		"target": e.Target, "ca": string(e.CA.CertPEM()), "n": strconv.Itoa(usedClients),
		"forward-idle": usedIdleTimeout.String(),
	})
	testenv.WaitFor(t, 10*time.Second, "every client to be listed", func() bool { return len(e.Srv.Peers()) == usedClients })
	testenv.SettleGoroutines(t, 10*time.Second)
	idle := float64(runtime.NumGoroutine()-g0) / usedClients

	start := time.Now()
	child.Do(t, "call")
	peers := e.Srv.Peers()
	ctx := testenv.Ctx(t)
	if err := callAll(len(peers), func(i int) error {
		stub, err := e.Srv.Client(peers[i].ID)
		if err == nil {
			_, err = stub.Unary(ctx, &testpb.EchoRequest{Message: "reverse"})
		}
		return err
	}); err != nil {
		t.Fatalf("reverse calls: %v", err)
	}
	testenv.SettleGoroutines(t, 10*time.Second)
	used := float64(runtime.NumGoroutine()-g0) / usedClients
	t.Logf("goroutines per %s client on the server: %.2f idle, %.2f used (counted %v after the first forward call)", tr, idle, used, time.Since(start).Round(time.Millisecond))
	// Half a goroutine per client of slack for the runtime's and the test's
	// own that come and go; a regression costs at least one per client.
	if max := maxUsedGoroutinesPerPeer[tr]; used > float64(max)+0.5 {
		t.Errorf("a used client costs %.2f goroutines, want at most %d", used, max)
	}
	if elapsed := time.Since(start); elapsed >= usedIdleTimeout {
		t.Logf("counting took %v, longer than the idle timeouts: some connections may have been released already", elapsed)
	} else if used < idle+2 {
		t.Errorf("a used client costs %.2f goroutines against %.2f idle: the connections were not counted open", used, idle)
	}

	// Both directions release their connections: back to the session.
	var after float64
	testenv.WaitFor(t, 4*usedIdleTimeout+10*time.Second, "the idle connections to be released", func() bool {
		after = float64(runtime.NumGoroutine()-g0) / usedClients
		return after <= float64(maxIdleGoroutinesPerPeer[tr])+0.5
	})
	testenv.SettleGoroutines(t, 10*time.Second)
	after = float64(runtime.NumGoroutine()-g0) / usedClients
	t.Logf("goroutines per %s client on the server after the idle timeouts: %.2f", tr, after)
	if max := maxIdleGoroutinesPerPeer[tr]; after > float64(max)+0.5 {
		t.Errorf("after both idle timeouts a client costs %.2f goroutines, want its session's %d", after, max)
	}

	child.Stop(t)
	testenv.WaitFor(t, 20*time.Second, "the clients to leave Peers()", func() bool { return len(e.Srv.Peers()) == 0 })
}
