package integrationtests

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/brpc-go/brpc"

	"github.com/brpc-go/brpc/internal/testenv"
)

// Bounds for what one idle connected client costs the server. The
// performance targets are 4 goroutines and 48 KiB (QUIC) or 32 KiB (TCP)
// per idle client; the byte bound leaves room for the race detector's
// overhead. Both transports need 3 goroutines: QUIC two of quic-go's and
// brpc's accept loop, TCP yamux's receive and send loops and brpc's accept
// loop (keepalive pings run from a timer).
// Measured here without the race detector: QUIC about 46 KiB, TCP about
// 25 KiB; with it, about 52 and 33 KiB.
const (
	idleClients              = 100
	maxIdleGoroutinesPerPeer = 3
)

var maxIdleBytesPerPeer = map[string]int{"quic": 64 << 10, "tcp": 48 << 10}

// TestIdleClientCost connects idle clients from a child process and
// measures what they cost this (server) process: goroutines and live heap
// plus goroutine stacks.
func TestIdleClientCost(t *testing.T) {
	testenv.EachTransport(t, testIdleClientCost)
}

func testIdleClientCost(t *testing.T, tr string) {
	e := testenv.NewPlainOn(t, tr)
	// One client first, so that the listener's own goroutines are running
	// before the baseline is taken.
	first, err := e.Dial(testenv.ClientConfig{Name: "first", NoServe: true})
	if err != nil {
		t.Fatal(err)
	}
	first.Shutdown()
	testenv.WaitFor(t, 5*time.Second, "the first client to leave", func() bool { return len(e.Srv.Peers()) == 0 })
	time.Sleep(100 * time.Millisecond)
	g0, m0 := serverFootprint()

	cmd := exec.Command(os.Args[0], "-test.run=^TestIdleClientsHelperProcess$", "-test.v")
	cmd.Env = append(os.Environ(),
		"BRPC_IDLE_TARGET="+e.Target,
		"BRPC_IDLE_CA="+string(e.CA.CertPEM()),
		"BRPC_IDLE_N="+strconv.Itoa(idleClients))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		cmd.Wait()
	}()
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "ready") {
				ready <- nil
				io.Copy(io.Discard, stdout)
				return
			}
		}
		ready <- fmt.Errorf("the client process ended before it was ready: %v", sc.Err())
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the client process did not connect its clients within 60s")
	}
	testenv.WaitFor(t, 10*time.Second, "every client to be listed", func() bool { return len(e.Srv.Peers()) == idleClients })
	time.Sleep(200 * time.Millisecond) // let handshake goroutines finish

	g1, m1 := serverFootprint()
	perG := float64(g1-g0) / idleClients
	perB := float64(m1-m0) / idleClients
	t.Logf("per idle %s client on the server: %.2f goroutines, %.1f KiB (heap+stacks)", tr, perG, perB/1024)
	maxG, maxB := maxIdleGoroutinesPerPeer, maxIdleBytesPerPeer[tr]
	// A goroutine or two of the process may come and go between the two
	// readings (timers, the runtime's workers): allow for that, not more.
	if perG > float64(maxG)+2.0/idleClients {
		t.Errorf("an idle client costs %.2f goroutines, want at most %d", perG, maxG)
	}
	if perB > float64(maxB) {
		t.Errorf("an idle client costs %.1f KiB, want at most %d KiB", perB/1024, maxB>>10)
	}

	stdin.Close()
	testenv.WaitFor(t, 20*time.Second, "the clients to leave Peers()", func() bool { return len(e.Srv.Peers()) == 0 })
}

func serverFootprint() (goroutines int, bytes uint64) {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return runtime.NumGoroutine(), ms.HeapAlloc + ms.StackInuse
}

// TestIdleClientsHelperProcess is the child process of TestIdleClientCost:
// it connects the clients, reports "ready" and holds them until its stdin
// closes.
func TestIdleClientsHelperProcess(t *testing.T) {
	target := os.Getenv("BRPC_IDLE_TARGET")
	if target == "" {
		t.Skip("runs only as the child process of TestIdleClientCost")
	}
	n, _ := strconv.Atoi(os.Getenv("BRPC_IDLE_N"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(os.Getenv("BRPC_IDLE_CA")))
	var conns []*brpc.ClientConn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < n; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		c, err := brpc.Dial(ctx, target, brpc.WithTLSConfig(&tls.Config{RootCAs: pool}))
		cancel()
		if err != nil {
			t.Fatalf("Dial %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
}
