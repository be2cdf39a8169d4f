package integrationtests

// Attacks on what a connection can make the server hold. The server runs in
// a child process, so that its footprint (heap and goroutine stacks after
// GC) leaves out the attackers' own memory; each test measures it before
// and once the attack has fully landed, checks the cost per attacker
// connection against its bound, and has an ordinary client connect and call
// both ways while the attack holds.

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/testenv"
)

// Bounds on what one attacker connection may make the server hold (heap and
// goroutine stacks after GC), whatever it sends. docs/security.md quotes
// them.
const (
	// maxPendingQUICBytes bounds a QUIC connection that finished TLS but
	// not brpc's handshake. What it can park is unread data, at most the
	// server's initial connection receive window (which grows only once
	// the session is admitted), and unread data in the costliest frames
	// (smallFrame) costs about 13 times its size; a second stream before
	// the welcome ends the session.
	maxPendingQUICBytes = 256 << 10
	// maxPendingTCPBytes bounds a TCP session that finished TLS but not
	// brpc's handshake. yamux's protocol gives every stream a 256 KiB
	// window at its start, which no server setting lowers, and yamux's
	// receive buffer may grow to twice what it holds (it doubles); 1 MiB is
	// two such streams: the control stream, and one more, which ends the
	// session.
	maxPendingTCPBytes = 1 << 20
)

// maxWelcomedBytes bounds a welcomed session (no Authenticator: anyone who
// reaches the port is welcomed) whatever it writes on its control stream:
// no more than an idle one. Measured here with the race detector, an idle
// welcomed raw session costs the server about 55 KiB (QUIC) and 43 KiB
// (TCP), heap and stacks; the bounds leave room for the noise of two
// footprints.
var maxWelcomedBytes = map[string]int{"quic": 96 << 10, "tcp": 64 << 10}

const (
	// attackConns is how many connections each attack on pending sessions
	// uses: enough that the cost of one stands out from the noise of the
	// server's own heap.
	attackConns = 20
	// welcomedConns is how many welcomed sessions stuff their control
	// stream: more, since their bound is close to what they cost anyway.
	welcomedConns = 40
	// attackRole is the server child the attacks run against: brpc's
	// defaults, except a handshake timeout long enough that no pending
	// connection is cut off, and its memory freed, before the footprint is
	// taken.
	attackRole = "attack-server"
)

var attackServerRole = testenv.ServerRoleWith(brpc.WithHandshakeTimeout(time.Minute))

// yamuxBacklog is how many streams a brpc TCP session lets wait to be
// accepted (internal/session's acceptBacklog); yamux resets the others.
const yamuxBacklog = 32

// underAttack starts a server child playing role on transport, takes its
// footprint once an ordinary client has come and gone, runs attack n times
// at once (each returns once its connection's attack has fully landed),
// takes the footprint again, checks that an ordinary client connects and
// calls both ways, and returns what each attacker connection costs the
// server.
func underAttack(t *testing.T, role, transport string, n int, attack func(ep testenv.Endpoint)) float64 {
	t.Helper()
	srv := testenv.StartServerChildAs(t, role, transport)
	// The first client starts the listener's own goroutines and buffers,
	// so that the baseline holds them.
	srv.WantServes(t, "before")
	waitPeers(t, srv, 0)
	f0 := srv.Footprint(t)

	start := time.Now()
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() { attack(srv.Endpoint()) })
	}
	wg.Wait()
	landed := time.Since(start)
	f1 := srv.Footprint(t)
	srv.WantServes(t, "during")

	per := (float64(f1.Held()) - float64(f0.Held())) / float64(n)
	t.Logf("%s: %d attacker connections landed in %v; the server holds %.1f KiB more per connection (%d -> %d goroutines, %.1f -> %.1f MiB)",
		transport, n, landed.Round(time.Millisecond), per/1024, f0.Goroutines, f1.Goroutines, float64(f0.Held())/(1<<20), float64(f1.Held())/(1<<20))
	return per
}

// waitPeers waits until the server child lists n clients.
func waitPeers(t *testing.T, srv *testenv.RemoteServer, n int) {
	t.Helper()
	testenv.WaitFor(t, 10*time.Second, fmt.Sprintf("the server child to list %d clients", n), func() bool {
		return srv.Do(t, "peers") == strconv.Itoa(n)
	})
}

// endedBy describes how a raw QUIC attacker's connection stands: still
// open, or closed by the server (with which code).
func endedBy(conn *quic.Conn) string {
	if conn.Context().Err() == nil {
		return "open"
	}
	err := context.Cause(conn.Context())
	var appErr *quic.ApplicationError
	if errors.As(err, &appErr) && appErr.Remote {
		return fmt.Sprintf("closed by the server with code %d", appErr.ErrorCode)
	}
	return fmt.Sprintf("ended: %v", err)
}

// outcomes counts how attacker connections ended, for the test's log.
type outcomes struct {
	mu sync.Mutex
	n  map[string]int
}

func (o *outcomes) add(s string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.n == nil {
		o.n = map[string]int{}
	}
	o.n[s]++
}

func (o *outcomes) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return fmt.Sprint(o.n)
}

func wantAtMost(t *testing.T, per float64, bound int, what string) {
	t.Helper()
	if per > float64(bound) {
		t.Errorf("%s makes the server hold %.1f KiB, want at most %d KiB", what, per/1024, bound>>10)
	}
}

// A QUIC connection that finished TLS and never says hello opens every
// stream it is allowed and fills all but the control stream with
// smallFrame-sized STREAM frames.
func TestAttackPendingQUICStreams(t *testing.T) {
	var how outcomes
	per := underAttack(t, attackRole, "quic", attackConns, func(ep testenv.Endpoint) {
		watch := newFlowWatch()
		conn, err := dialRawTo(t, ep, brpc.ALPN, watch)
		if err != nil {
			t.Errorf("raw QUIC dial: %v", err)
			return
		}
		// The first stream is the one the server takes for the control
		// stream; it stays silent. The others are all the server allows.
		if _, err := conn.OpenStream(); err != nil {
			t.Errorf("opening the control stream: %v", err)
			return
		}
		var streams []*quic.Stream
		for {
			st, err := conn.OpenStream()
			if err != nil {
				break
			}
			streams = append(streams, st)
		}
		watch.fills(len(streams))
		n, err := fillQUIC(conn, streams, watch, maxPendingQUICBytes)
		if err != nil {
			t.Error(err)
		}
		how.add(fmt.Sprintf("%d streams, %s after %d KiB", len(streams), endedBy(conn), n>>10))
	})
	t.Logf("attacker connections: %v", &how)
	wantAtMost(t, per, maxPendingQUICBytes, "a pending QUIC connection filling its streams")
}

// A TLS-over-TCP session with yamux that never says hello opens the control
// stream, then fills the streams yamux lets wait to be accepted, a window
// each.
func TestAttackPendingTCPStreams(t *testing.T) {
	var how outcomes
	per := underAttack(t, attackRole, "tcp", attackConns, func(ep testenv.Endpoint) {
		mux, err := rawYamux(t, ep)
		if err != nil {
			t.Error(err)
			return
		}
		if _, err := mux.OpenStream(); err != nil {
			t.Errorf("opening the control stream: %v", err)
			return
		}
		written := 0
		for range yamuxBacklog {
			st, err := mux.OpenStream()
			if err != nil {
				break
			}
			written += fillYamux(st, yamuxWindow)
		}
		open := landedYamux(mux)
		how.add(fmt.Sprintf("%d KiB written, open %v", written>>10, open))
	})
	t.Logf("attacker sessions: %v", &how)
	wantAtMost(t, per, maxPendingTCPBytes, "a pending TCP session filling its streams")
}

// A welcomed session writes on its control stream as much as the server
// lets it.
func TestAttackWelcomedControlStream(t *testing.T) {
	t.Run("quic", func(t *testing.T) {
		var how outcomes
		per := underAttack(t, attackRole, "quic", welcomedConns, func(ep testenv.Endpoint) {
			watch := newFlowWatch()
			conn, err := dialRawTo(t, ep, brpc.ALPN, watch)
			if err != nil {
				t.Errorf("raw QUIC dial: %v", err)
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), hostileBound)
			defer cancel()
			ctrl, err := conn.OpenStreamSync(ctx)
			if err != nil {
				t.Errorf("opening the control stream: %v", err)
				return
			}
			if _, err := helloOn(ctrl); err != nil {
				t.Error(err)
				return
			}
			watch.fills(1)
			n, err := fillQUIC(conn, []*quic.Stream{ctrl}, watch, 4*maxWelcomedBytes["quic"])
			if err != nil {
				t.Error(err)
			}
			how.add(fmt.Sprintf("%s after %d KiB", endedBy(conn), n>>10))
		})
		t.Logf("attacker connections: %v", &how)
		wantAtMost(t, per, maxWelcomedBytes["quic"], "a welcomed QUIC session stuffing its control stream")
	})
	t.Run("tcp", func(t *testing.T) {
		var how outcomes
		per := underAttack(t, attackRole, "tcp", welcomedConns, func(ep testenv.Endpoint) {
			mux, err := rawYamux(t, ep)
			if err != nil {
				t.Error(err)
				return
			}
			ctrl, err := mux.OpenStream()
			if err != nil {
				t.Errorf("opening the control stream: %v", err)
				return
			}
			if _, err := helloOn(ctrl); err != nil {
				t.Error(err)
				return
			}
			n := fillYamux(ctrl, 64<<20)
			open := landedYamux(mux)
			how.add(fmt.Sprintf("open %v after %d KiB", open, n>>10))
		})
		t.Logf("attacker sessions: %v", &how)
		wantAtMost(t, per, maxWelcomedBytes["tcp"], "a welcomed TCP session stuffing its control stream")
	})
}

// An Initial flood: one real Initial packet, captured from a quic-go client,
// replayed at floodRate datagrams a second for floodTime, from one socket
// and from many (as spoofed sources would come), as it is and renamed (see
// replayer). The server's goroutines and heap stay within what
// floodHandshakes handshakes in progress cost, it answers a renamed flood
// with Retry packets instead of TLS handshakes, and an ordinary client
// connects within floodConnectBound meanwhile.
func TestAttackReplayedInitials(t *testing.T) {
	for _, tc := range []struct {
		sources int
		rename  bool
	}{{1, false}, {16, false}, {1, true}, {16, true}} {
		name := map[bool]string{false: "copies", true: "renamed"}[tc.rename]
		t.Run(fmt.Sprintf("%s from %d sources", name, tc.sources), func(t *testing.T) {
			srv := testenv.StartServerChild(t, "quic")
			srv.WantServes(t, "before")
			waitPeers(t, srv, 0)
			f0 := srv.Footprint(t)
			pkt := captureInitial(t, srv.Endpoint())
			r := startReplay(t, srv.Endpoint().Addr, pkt, tc.sources, floodRate, tc.rename)
			testenv.WaitFor(t, floodTime, "a third of the flood", func() bool { return r.sent.Load() >= floodRate*int64(floodTime/time.Second)/3 })
			took := srv.WantServes(t, "during")
			testenv.WaitFor(t, 2*floodTime, "the whole flood", func() bool { return r.sent.Load() >= floodRate*int64(floodTime/time.Second) })
			f1 := srv.Footprint(t)
			r.Stop()
			t.Logf("%v; an ordinary client connected in %v; the server went from %d to %d goroutines, %.1f to %.1f MiB",
				r, took.Round(time.Millisecond), f0.Goroutines, f1.Goroutines, float64(f0.Held())/(1<<20), float64(f1.Held())/(1<<20))
			if took > floodConnectBound {
				t.Errorf("an ordinary client took %v to connect during the flood, want at most %v", took, floodConnectBound)
			}
			if g := f1.Goroutines - f0.Goroutines; g > floodHandshakes*maxHandshakeGoroutines {
				t.Errorf("the flood left the server with %d more goroutines, want at most %d (%d handshakes in progress)", g, floodHandshakes*maxHandshakeGoroutines, floodHandshakes)
			}
			if b := float64(f1.Held()) - float64(f0.Held()); b > floodHandshakes*maxHandshakeBytes {
				t.Errorf("the flood made the server hold %.1f MiB more, want at most %.1f MiB (%d handshakes in progress)", b/(1<<20), float64(floodHandshakes*maxHandshakeBytes)/(1<<20), floodHandshakes)
			}
			if tc.rename && r.retries.Load() == 0 {
				t.Errorf("the server answered a flood of new connections without a single Retry packet")
			}
		})
	}
}

// The Initial flood and its bounds.
const (
	floodRate = 3000 // datagrams a second
	floodTime = 3 * time.Second
	// floodConnectBound is how long an ordinary client may take to connect
	// during the flood: generous for a loopback handshake (about 10 ms),
	// with the race detector on a loaded machine.
	floodConnectBound = 2 * time.Second
	// floodHandshakes is how many QUIC handshakes may be in progress on a
	// listener before it validates new clients' addresses with a Retry
	// (internal/session's retry threshold): beyond it an Initial costs the
	// server a Retry packet and no connection state.
	floodHandshakes = 256
	// maxHandshakeGoroutines and maxHandshakeBytes bound what one QUIC
	// handshake in progress holds on the server, heap and stacks after GC.
	// Measured with the race detector: about 2.5 goroutines and 29 KiB
	// each; with the TLS phase counted and the Retry threshold, 4
	// goroutines and 47 KiB.
	maxHandshakeGoroutines = 5
	maxHandshakeBytes      = 64 << 10
)
