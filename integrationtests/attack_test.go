package integrationtests

// Attacks on what a connection can make the server hold. The server runs in
// a child process, so that its footprint (heap and goroutine stacks after
// GC) leaves out the attackers' own memory; each test measures it before
// and once the attack has fully landed, checks the cost per attacker
// connection against its bound, and has an ordinary client connect and call
// both ways while the attack holds.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/session"
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
	// attackRole is the server child the session attacks run against:
	// brpc's defaults, except a handshake timeout long enough that no pending
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

// wantAtMost fails the test if what made the server hold more than bound
// bytes.
func wantAtMost(t *testing.T, held float64, bound int, what string) {
	t.Helper()
	if held > float64(bound) {
		t.Errorf("%s makes the server hold %.1f KiB, want at most %d KiB", what, held/1024, bound>>10)
	}
}

// sessionAttack is an attack by n connections at once on an attackRole
// server child of transport, each run by run: it returns once its
// connection's attack has fully landed, with a word on how the connection
// stands for the log.
type sessionAttack struct {
	what      string // for the messages
	transport string
	n         int
	bound     int // bytes each connection may make the server hold
	run       func(ep testenv.Endpoint) (outcome string, err error)
}

// check runs the attack under underAttack and fails the test if a
// connection made the server hold more than a.bound.
func (a sessionAttack) check(t *testing.T) {
	t.Helper()
	var mu sync.Mutex
	outcomes := map[string]int{}
	per := underAttack(t, attackRole, a.transport, a.n, func(ep testenv.Endpoint) {
		outcome, err := a.run(ep)
		if err != nil {
			t.Errorf("%s: %v", a.what, err)
			return
		}
		mu.Lock()
		outcomes[outcome]++
		mu.Unlock()
	})
	t.Logf("%s: %v", a.what, outcomes)
	wantAtMost(t, per, a.bound, a.what+" (per connection)")
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

// A QUIC connection that finished TLS and never says hello opens every
// stream it is allowed and fills all but the control stream with
// smallFrame-sized STREAM frames.
func TestAttackPendingQUICStreams(t *testing.T) {
	sessionAttack{what: "a pending QUIC connection filling its streams", transport: "quic", n: attackConns, bound: maxPendingQUICBytes,
		run: func(ep testenv.Endpoint) (string, error) {
			// The control stream stays silent; the others are all the
			// server allows.
			conn, watch, _, err := dialControl(t, ep)
			if err != nil {
				return "", err
			}
			var streams []*quic.Stream
			for {
				st, err := conn.OpenStream()
				if err != nil {
					break
				}
				streams = append(streams, st)
			}
			n, err := fillQUIC(conn, streams, watch, maxPendingQUICBytes, false)
			return fmt.Sprintf("%d streams, %s after %d KiB", len(streams), endedBy(conn), n>>10), err
		}}.check(t)
}

// A TLS-over-TCP session with yamux that never says hello opens the control
// stream, then fills the streams yamux lets wait to be accepted, a window
// each.
func TestAttackPendingTCPStreams(t *testing.T) {
	sessionAttack{what: "a pending TCP session filling its streams", transport: "tcp", n: attackConns, bound: maxPendingTCPBytes,
		run: func(ep testenv.Endpoint) (string, error) {
			mux, _, err := yamuxControl(t, ep)
			if err != nil {
				return "", err
			}
			written := 0
			for range yamuxBacklog {
				st, err := mux.OpenStream()
				if err != nil {
					break
				}
				written += fillYamux(st, yamuxWindow)
			}
			return fmt.Sprintf("open %v after %d KiB", landedYamux(mux), written>>10), nil
		}}.check(t)
}

// A connection that never completes its hello: it announces one of the
// largest size allowed and sends all of it but the last smallFrame bytes,
// in smallFrame-sized pieces, so that the server holds the hello's buffer
// as well as whatever the transport keeps.
func TestAttackPendingPartialHello(t *testing.T) {
	prefix := binary.BigEndian.AppendUint32(nil, brpc.DefaultMaxHelloSize)
	body := brpc.DefaultMaxHelloSize - smallFrame
	t.Run("quic", func(t *testing.T) {
		sessionAttack{what: "a pending QUIC connection with a partial hello", transport: "quic", n: attackConns, bound: maxPendingQUICBytes,
			run: func(ep testenv.Endpoint) (string, error) {
				conn, watch, ctrl, err := dialControl(t, ep)
				if err != nil {
					return "", err
				}
				if _, err := ctrl.Write(prefix); err != nil {
					return "", fmt.Errorf("writing the hello's length: %w", err)
				}
				n, err := fillQUIC(conn, []*quic.Stream{ctrl}, watch, body, true)
				return fmt.Sprintf("%s after %d KiB", endedBy(conn), n>>10), err
			}}.check(t)
	})
	t.Run("tcp", func(t *testing.T) {
		sessionAttack{what: "a pending TCP session with a partial hello", transport: "tcp", n: attackConns, bound: maxPendingTCPBytes,
			run: func(ep testenv.Endpoint) (string, error) {
				mux, ctrl, err := yamuxControl(t, ep)
				if err != nil {
					return "", err
				}
				if _, err := ctrl.Write(prefix); err != nil {
					return "", fmt.Errorf("writing the hello's length: %w", err)
				}
				// Many small writes, each a yamux frame of its own.
				n := 0
				for n < body {
					w := fillYamux(ctrl, smallFrame)
					if w == 0 {
						break
					}
					n += w
				}
				return fmt.Sprintf("open %v after %d KiB", landedYamux(mux), n>>10), nil
			}}.check(t)
	})
}

// A welcomed session writes on its control stream as much as the server
// lets it.
func TestAttackWelcomedControlStream(t *testing.T) {
	t.Run("quic", func(t *testing.T) {
		sessionAttack{what: "a welcomed QUIC session stuffing its control stream", transport: "quic", n: welcomedConns, bound: maxWelcomedBytes["quic"],
			run: func(ep testenv.Endpoint) (string, error) {
				conn, watch, ctrl, err := dialControl(t, ep)
				if err != nil {
					return "", err
				}
				if err := helloOn(ctrl); err != nil {
					return "", err
				}
				n, err := fillQUIC(conn, []*quic.Stream{ctrl}, watch, maxWelcomedBytes["quic"], false)
				return fmt.Sprintf("%s after %d KiB", endedBy(conn), n>>10), err
			}}.check(t)
	})
	t.Run("tcp", func(t *testing.T) {
		sessionAttack{what: "a welcomed TCP session stuffing its control stream", transport: "tcp", n: welcomedConns, bound: maxWelcomedBytes["tcp"],
			run: func(ep testenv.Endpoint) (string, error) {
				mux, ctrl, err := yamuxControl(t, ep)
				if err != nil {
					return "", err
				}
				if err := helloOn(ctrl); err != nil {
					return "", err
				}
				n := fillYamux(ctrl, 64<<20)
				return fmt.Sprintf("open %v after %d KiB", landedYamux(mux), n>>10), nil
			}}.check(t)
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
	// listener before it validates new clients' addresses with a Retry:
	// beyond it an Initial costs the server a Retry packet and no
	// connection state.
	floodHandshakes = session.DefaultRetryThreshold
	// maxHandshakeGoroutines and maxHandshakeBytes bound what one QUIC
	// handshake in progress holds on the server, heap and stacks after GC.
	// Measured with the race detector: about 2.5 goroutines and 29 KiB
	// each; with the TLS phase counted and the Retry threshold, 4
	// goroutines and 47 KiB.
	maxHandshakeGoroutines = 5
	maxHandshakeBytes      = 64 << 10
)
