package integrationtests

import (
	"testing"
	"time"

	"github.com/brpc-go/brpc/internal/testenv"
)

// Bounds for what one idle connected client costs the server. The
// performance targets are 4 goroutines and 48 KiB (QUIC) or 32 KiB (TCP)
// per idle client; the byte bound leaves room for the race detector's
// overhead. QUIC needs 3 goroutines: two of quic-go's and brpc's accept
// loop; TCP 2: yamux's receive and send loops (the client's streams are
// handed over as yamux sees them open, and keepalive pings run from a
// timer).
// Measured here without the race detector: QUIC about 46 KiB, TCP about
// 25 KiB; with it, about 52 and 33 KiB.
const (
	idleClients = 100
)

var maxIdleGoroutinesPerPeer = map[string]int{"quic": 3, "tcp": 2}

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
	testenv.SettleGoroutines(t, 10*time.Second)
	f0 := testenv.MeasureFootprint()

	clients := testenv.StartClientsChild(t, e, idleClients)
	testenv.WaitFor(t, 10*time.Second, "every client to be listed", func() bool { return len(e.Srv.Peers()) == idleClients })
	// The handshakes' goroutines end after the clients are listed.
	testenv.SettleGoroutines(t, 10*time.Second)

	f1 := testenv.MeasureFootprint()
	perG := float64(f1.Goroutines-f0.Goroutines) / idleClients
	perB := (float64(f1.HeapAlloc+f1.StackInuse) - float64(f0.HeapAlloc+f0.StackInuse)) / idleClients
	t.Logf("per idle %s client on the server: %.2f goroutines, %.1f KiB (heap+stacks)", tr, perG, perB/1024)
	maxG, maxB := maxIdleGoroutinesPerPeer[tr], maxIdleBytesPerPeer[tr]
	// A goroutine or two of the process may come and go between the two
	// readings (timers, the runtime's workers): allow for that, not more.
	if perG > float64(maxG)+2.0/idleClients {
		t.Errorf("an idle client costs %.2f goroutines, want at most %d", perG, maxG)
	}
	if perB > float64(maxB) {
		t.Errorf("an idle client costs %.1f KiB, want at most %d KiB", perB/1024, maxB>>10)
	}

	clients.Stop(t)
	testenv.WaitFor(t, 20*time.Second, "the clients to leave Peers()", func() bool { return len(e.Srv.Peers()) == 0 })
}
