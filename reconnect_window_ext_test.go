package brpc_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/certs"
	"github.com/brpc-go/brpc/internal/testenv"
)

// welcomeClock records when each client (by its "n" metadata, which is
// also its ID) was admitted by a server.
type welcomeClock struct {
	mu sync.Mutex
	at map[string]time.Time
}

func (w *welcomeClock) authenticate(_ context.Context, info brpc.AuthInfo) (string, error) {
	id := info.Metadata.Get("n")[0]
	w.mu.Lock()
	if w.at == nil {
		w.at = make(map[string]time.Time)
	}
	w.at[id] = time.Now()
	w.mu.Unlock()
	return id, nil
}

func (w *welcomeClock) times() map[string]time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return maps.Clone(w.at)
}

// TestStopSpreadsReconnectsOverTheAnnouncedWindow stops a server holding
// 24 clients whose reconnect window comes to 4 s, and starts a new one on
// the same address. The 20 clients that accept the window come back spread
// over it, not all at once; the 4 that set WithMaxReconnectWindow(0) come
// back at once, before most of the others; every client is back.
func TestStopSpreadsReconnectsOverTheAnnouncedWindow(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		const spread, atOnce = 20, 4
		const window = 4 * time.Second
		perClient := window / (spread + atOnce)
		if tr == "tcp" {
			perClient *= 2 // a TCP client counts half
		}
		ca, err := certs.NewCA()
		if err != nil {
			t.Fatal(err)
		}
		start := func(addr string, clock *welcomeClock) *testenv.Serving {
			t.Helper()
			stls, err := ca.ServerTLS()
			if err != nil {
				t.Fatal(err)
			}
			s, err := testenv.StartServing(tr, addr, stls, &testenv.Echo{Name: "server"}, nil,
				[]brpc.ServerOption{brpc.WithAuthenticator(clock.authenticate), brpc.WithReconnectWindow(perClient, time.Minute)})
			if err != nil {
				t.Fatalf("serving on %s: %v", addr, err)
			}
			t.Cleanup(func() { _ = s.Stop() })
			return s
		}
		var before welcomeClock
		first := start("127.0.0.1:0", &before)
		addr := first.Lis.Addr().String()

		var clients []*brpc.ClientConn
		for i := range spread + atOnce {
			opts := []brpc.DialOption{brpc.WithTLSConfig(ca.ClientTLS()), brpc.WithMetadata(metadata.Pairs("n", fmt.Sprint(i)))}
			if i >= spread {
				opts = append(opts, brpc.WithMaxReconnectWindow(0))
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			cc, err := brpc.Dial(ctx, tr+"://"+addr, opts...)
			cancel()
			if err != nil {
				t.Fatalf("client %d: %v", i, err)
			}
			defer cc.Close()
			clients = append(clients, cc)
		}

		stopped := time.Now()
		if err := first.Stop(); err != nil {
			t.Fatal(err)
		}
		var after welcomeClock
		restarted := time.Now()
		start(addr, &after)
		testenv.WaitFor(t, window+20*time.Second, "every client to be back", func() bool {
			if len(after.times()) < len(clients) {
				return false
			}
			for _, cc := range clients {
				if cc.GetState() != connectivity.Ready {
					return false
				}
			}
			return true
		})

		at := after.times()
		var spreadAt []time.Duration
		for i := range spread {
			spreadAt = append(spreadAt, at[fmt.Sprint(i)].Sub(stopped))
		}
		slices.Sort(spreadAt)
		t.Logf("restarted %v after Stop began; the window's clients back after %v", restarted.Sub(stopped).Round(time.Millisecond), roundAll(spreadAt))
		for id, when := range at {
			if when.Before(restarted) {
				t.Errorf("client %s was welcomed by the new server %v before it started", id, restarted.Sub(when))
			}
		}
		// 20 points drawn uniformly over 4 s span less than 1 s with a
		// probability of about 20 * 0.25^19; at once, they span the time
		// 20 handshakes take.
		if span := spreadAt[len(spreadAt)-1] - spreadAt[0]; span < window/4 {
			t.Errorf("the clients that accept the window came back within %v of each other, want them spread over about %v", span, window)
		}
		// Three quarters of the window's clients are back after about
		// 3 s; the others try at once (over TCP, a try that finds the
		// port closed backs off 1 s first).
		late := spreadAt[spread*3/4]
		for i := spread; i < spread+atOnce; i++ {
			if d := at[fmt.Sprint(i)].Sub(stopped); d > late {
				t.Errorf("client %d, which ignores the window, came back after %v, later than three quarters of those that accept it (%v)", i, d.Round(time.Millisecond), late.Round(time.Millisecond))
			}
		}
	})
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}
