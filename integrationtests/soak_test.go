package integrationtests

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/testenv"
	"github.com/brpc-go/brpc/internal/testpb"
)

// Soak parameters. BRPC_SOAK sets the duration (a Go duration such as
// "60s"); without it the soak runs soakDefault, so that the default test
// run stays short.
const (
	soakDefault          = 3 * time.Second
	soakClients          = 20 // client slots, each connecting and disconnecting again and again
	soakReverseCallers   = 6  // server-side goroutines calling random connected clients
	soakKeepalive        = 100 * time.Millisecond
	soakKeepaliveTimeout = time.Second
	// soakSlack is added to every call's bound (its deadline or expected
	// duration plus the dead-peer detection time): hundreds of goroutines
	// under the race detector on a small, possibly busy machine, and on
	// QUIC a detection time of at least 3 PTO (see docs/reliability.md).
	soakSlack = 10 * time.Second
	// After Close and a settle wait, the process may have at most this many
	// goroutines more than before the clients came (runtime and pool
	// workers that come and go).
	soakMaxGoroutineGrowth = 10
	// Live heap growth allowed over the whole soak, whatever its length:
	// nothing may accumulate per call or per session.
	soakMaxHeapGrowth = 8 << 20
)

// A call kind of the soak's mix. Every kind runs in both directions.
type soakKind int

const (
	soakUnary          soakKind = iota // succeeds
	soakUnaryFail                      // fails on purpose with fail_code
	soakUnaryDeadline                  // the handler sleeps past the call's deadline
	soakServerStream                   // 1-20 responses
	soakStreamFail                     // server stream failing on purpose
	soakStreamDeadline                 // server stream outliving its deadline
	soakClientStream                   // 1-10 requests
	soakBidi                           // 1-10 request/response exchanges
	soakNumKinds
)

var soakKindNames = [...]string{"unary", "unary-fail", "unary-deadline", "server-stream", "stream-fail", "stream-deadline", "client-stream", "bidi"}

func (k soakKind) String() string { return soakKindNames[k] }

// The codes calls are asked to fail with.
var soakFailCodes = []codes.Code{codes.FailedPrecondition, codes.Aborted, codes.PermissionDenied, codes.OutOfRange}

// soakSite is where a call goes: a direction and the client session at
// the other end (forward: the caller; reverse: the callee).
type soakSite struct {
	dir     string // "forward" or "reverse"
	session string // the client session's name; its echo service answers as that
	tr      string // its transport
	stub    testpb.EchoClient
	// closing, for forward calls, is set before the client closes itself
	// with calls in flight: only then may a call end with codes.Canceled.
	// Calls cut off by the end of a session otherwise report
	// codes.Unavailable.
	closing *atomic.Bool
}

// soakLedger records every call the soak issues, from the moment it is
// issued until it ends, and what it ended with.
type soakLedger struct {
	start time.Time

	mu      sync.Mutex
	pending map[*soakPending]struct{}
	issued  int64
	ok      int64
	errs    map[string]map[codes.Code]int64 // direction -> code -> count
	calls   map[string]int64                // direction/kind -> count
	// overdue calls were still pending past their bound; the watchdog
	// canceled them so that the test ends.
	overdue []string
	// wrong outcomes: a success that should have failed, a failure with a
	// code the call cannot have, or a response that is not the echo.
	wrong []string
	// longest is the longest any call took past its deadline or expected
	// duration; late counts those more than 1s, 2s and 4s late, slow
	// groups those more than 2s late by direction, kind, transport and
	// code.
	longest time.Duration
	late    [3]int64
	slow    map[string]int
	// notes are what happened to each client session, for the report of
	// an overdue call; stacks names the goroutine dumps taken at the first
	// overdue calls.
	notes  map[string][]string
	stacks []string
}

type soakPending struct {
	site   soakSite
	kind   soakKind
	what   string
	ctx    context.Context
	start  time.Time
	expect time.Duration // its deadline, or how long it takes when nothing goes wrong
	bound  time.Time     // the call must have ended by then
	cancel context.CancelFunc
}

func newSoakLedger() *soakLedger {
	return &soakLedger{start: time.Now(), pending: map[*soakPending]struct{}{}, errs: map[string]map[codes.Code]int64{},
		calls: map[string]int64{}, slow: map[string]int{}, notes: map[string][]string{}}
}

// note records an event of a client session.
func (l *soakLedger) note(session, event string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.notes == nil {
		return // the soak is over
	}
	l.notes[session] = append(l.notes[session], fmt.Sprintf("%v %s", time.Since(l.start).Round(time.Millisecond), event))
}

// begin records a call as issued and returns it with its context: with
// timeout when timeout > 0, and cancelable by the watchdog. work is how
// long the call takes when nothing goes wrong. The call must end within its
// deadline (or work) plus the dead-peer detection time plus slack.
func (l *soakLedger) begin(site soakSite, kind soakKind, timeout, work time.Duration) *soakPending {
	ctx, cancel := context.WithCancel(context.Background())
	expect := work
	if timeout > 0 {
		ctx, cancel = context.WithTimeout(context.Background(), timeout)
		expect = min(timeout, work)
	}
	now := time.Now()
	p := &soakPending{
		site:   site,
		kind:   kind,
		what:   fmt.Sprintf("%s %s with %s over %s (timeout %v, work %v)", site.dir, kind, site.session, site.tr, timeout, work),
		ctx:    ctx,
		start:  now,
		expect: expect,
		bound:  now.Add(expect + soakKeepaliveTimeout + soakSlack),
		cancel: cancel,
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.issued++
	l.calls[site.dir+"/"+kind.String()]++
	l.pending[p] = struct{}{}
	return p
}

// end records the call's outcome; wrong, if not empty, says why the
// outcome is not one the call may have.
func (l *soakLedger) end(p *soakPending, err error, wrong string) {
	code := status.Code(err)
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.pending[p]; !ok {
		l.wrong = append(l.wrong, p.what+": ended twice")
		return
	}
	delete(l.pending, p)
	p.cancel()
	late := time.Since(p.start) - p.expect
	l.longest = max(l.longest, late)
	for i, d := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second} {
		if late > d {
			l.late[i]++
		}
	}
	if late > 2*time.Second {
		l.slow[fmt.Sprintf("%s %s over %s ending with %v", p.site.dir, p.kind, p.site.tr, code)]++
	}
	if err == nil {
		l.ok++
	} else {
		if l.errs[p.site.dir] == nil {
			l.errs[p.site.dir] = map[codes.Code]int64{}
		}
		l.errs[p.site.dir][code]++
	}
	if wrong != "" {
		l.wrong = append(l.wrong, p.what+": "+wrong)
	}
}

// watch cancels, and records as overdue, calls pending past their bound.
func (l *soakLedger) watch(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for p := range l.pending {
		if !now.After(p.bound) {
			continue
		}
		if len(l.stacks) < 3 {
			l.stacks = append(l.stacks, soakDumpStacks())
		}
		l.overdue = append(l.overdue, fmt.Sprintf("%s: pending %v since %v; its session: %s", p.what,
			now.Sub(p.start).Round(time.Millisecond), p.start.Sub(l.start).Round(time.Millisecond),
			strings.Join(l.notes[p.site.session], "; ")))
		p.cancel()
		p.bound = now.Add(time.Hour) // report it once
	}
}

// failed returns the number of failed calls.
func (l *soakLedger) failed() (n int64) {
	for _, m := range l.errs {
		for _, c := range m {
			n += c
		}
	}
	return n
}

func (l *soakLedger) codeSummary(dir string) string {
	var parts []string
	for c, n := range l.errs[dir] {
		parts = append(parts, fmt.Sprintf("%v %d", c, n))
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}

// soakCall issues one call of kind at site and checks its outcome.
func soakCall(l *soakLedger, rng *rand.Rand, kind soakKind, site soakSite) {
	msg := fmt.Sprint(rng.Uint32())
	var payload []byte
	if rng.IntN(10) == 0 {
		payload = faultBytes(rng, 32<<10+rng.IntN(32<<10))
	} else {
		payload = faultBytes(rng, rng.IntN(2<<10))
	}
	failCode := soakFailCodes[rng.IntN(len(soakFailCodes))]
	// Half the calls have a deadline they should meet, half have none.
	var timeout time.Duration
	if rng.IntN(2) == 0 {
		timeout = 5 * time.Second
	}
	answerer := site.session
	if site.dir == "forward" {
		answerer = "server"
	}
	wantMsg := answerer + ":" + msg
	if site.dir == "forward" && kind == soakUnary {
		// The server's Unary calls its caller back (newEnv's default).
		wantMsg += "|" + site.session + ":back"
	}
	// allowed says why err may not end this call, if it may not: it may
	// end with the code it was asked to end with, or with what a session
	// cut short by a disconnect reports.
	allowed := func(err error, want codes.Code) string {
		switch c := status.Code(err); {
		case c == want, c == codes.Unavailable:
			return ""
		case c == codes.Canceled && site.closing != nil && site.closing.Load():
			return ""
		case c == codes.DeadlineExceeded && timeout > 0:
			return ""
		default:
			return fmt.Sprintf("ended with %v, want %v (or Unavailable after a disconnect)", err, want)
		}
	}

	switch kind {
	case soakUnary, soakUnaryFail, soakUnaryDeadline:
		req := &testpb.EchoRequest{Message: msg, Payload: payload}
		want := codes.OK
		work := 100 * time.Millisecond
		switch kind {
		case soakUnaryFail:
			req.FailCode, want = int32(failCode), failCode
		case soakUnaryDeadline:
			timeout, want = time.Duration(20+rng.IntN(80))*time.Millisecond, codes.DeadlineExceeded
			req.SleepMs = int32(timeout/time.Millisecond) + 200
			work = time.Duration(req.SleepMs) * time.Millisecond
		default:
			req.SleepMs = int32(rng.IntN(20))
		}
		p := l.begin(site, kind, timeout, work)
		r, err := site.stub.Unary(p.ctx, req)
		wrong := allowed(err, want)
		if err == nil && want == codes.OK && (r.GetMessage() != wantMsg || !bytes.Equal(r.GetPayload(), payload)) {
			wrong = fmt.Sprintf("response %q with %d bytes, want %q with the %d sent", r.GetMessage(), len(r.GetPayload()), wantMsg, len(payload))
		}
		l.end(p, err, wrong)

	case soakServerStream, soakStreamFail, soakStreamDeadline:
		req := &testpb.EchoRequest{Message: msg, Payload: payload, Count: int32(1 + rng.IntN(20)), SleepMs: int32(rng.IntN(10))}
		want := codes.OK
		switch kind {
		case soakStreamFail:
			req.FailCode, want = int32(failCode), failCode
		case soakStreamDeadline:
			req.Count, req.SleepMs = 1000, 10
			timeout, want = time.Duration(50+rng.IntN(100))*time.Millisecond, codes.DeadlineExceeded
		}
		work := time.Duration(req.Count)*time.Duration(req.SleepMs)*time.Millisecond + 100*time.Millisecond
		p := l.begin(site, kind, timeout, work)
		wrong := ""
		st, err := site.stub.ServerStream(p.ctx, req)
		if err == nil {
			for i := int32(0); ; i++ {
				var r *testpb.EchoResponse
				r, err = st.Recv()
				if errors.Is(err, io.EOF) {
					err = nil
					if i != req.Count {
						wrong = fmt.Sprintf("stream ended after %d of %d responses", i, req.Count)
					}
					break
				}
				if err != nil {
					break
				}
				if r.GetIndex() != i || r.GetMessage() != wantMsg || !bytes.Equal(r.GetPayload(), payload) {
					wrong = fmt.Sprintf("response %d: index %d, %q", i, r.GetIndex(), r.GetMessage())
				}
			}
		}
		if w := allowed(err, want); w != "" {
			wrong = w
		}
		l.end(p, err, wrong)

	case soakClientStream:
		n := 1 + rng.IntN(10)
		p := l.begin(site, kind, timeout, 100*time.Millisecond)
		wrong := ""
		st, err := site.stub.ClientStream(p.ctx)
		if err == nil {
			for i := 0; i < n && err == nil; i++ {
				err = st.Send(&testpb.EchoRequest{Message: msg, Payload: payload})
			}
			// After a failed Send, CloseAndRecv has the stream's status.
			var r *testpb.EchoResponse
			r, err = st.CloseAndRecv()
			if err == nil && (r.GetIndex() != int32(n) || r.GetMessage() != wantMsg) {
				wrong = fmt.Sprintf("response index %d, %q; want %d, %q", r.GetIndex(), r.GetMessage(), n, wantMsg)
			}
		}
		if w := allowed(err, codes.OK); w != "" {
			wrong = w
		}
		l.end(p, err, wrong)

	case soakBidi:
		n := 1 + rng.IntN(10)
		p := l.begin(site, kind, timeout, 100*time.Millisecond)
		wrong := ""
		st, err := site.stub.BidiStream(p.ctx)
		for i := 0; i < n && err == nil; i++ {
			if err = st.Send(&testpb.EchoRequest{Message: msg, Payload: payload}); err != nil {
				break
			}
			var r *testpb.EchoResponse
			if r, err = st.Recv(); err == nil && (r.GetIndex() != int32(i) || r.GetMessage() != wantMsg || !bytes.Equal(r.GetPayload(), payload)) {
				wrong = fmt.Sprintf("response %d: index %d, %q", i, r.GetIndex(), r.GetMessage())
			}
		}
		if err == nil {
			st.CloseSend()
			if _, err = st.Recv(); errors.Is(err, io.EOF) {
				err = nil
			} else if err == nil {
				wrong = "a response after CloseSend"
			}
		}
		if errors.Is(err, io.EOF) {
			// Send returns io.EOF when the stream is over: Recv has its
			// status (and io.EOF again if it ended early with OK).
			_, err = st.Recv()
		}
		if w := allowed(err, codes.OK); w != "" {
			wrong = w
		}
		l.end(p, err, wrong)
	}
}

// soak is the state the soak's goroutines share.
type soak struct {
	e       *testenv.Env
	l       *soakLedger
	targets map[string]string // transport -> the server's target

	sessions                  atomic.Int64
	closes, cleanCloses, cuts atomic.Int64
	vanishes                  atomic.Int64

	dialMu   sync.Mutex
	dialErrs map[codes.Code]int64
}

func soakDuration(t *testing.T) time.Duration {
	v := os.Getenv("BRPC_SOAK")
	if v == "" {
		return soakDefault
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("BRPC_SOAK=%q: want a positive Go duration such as 60s", v)
	}
	return d
}

// dial connects a client session named name that serves its echo
// service.
func (s *soak) dial(target, name string) (*testenv.Client, error) {
	return s.e.Dial(testenv.ClientConfig{Target: target, Name: name, MD: metadata.Pairs("name", name),
		Opts: []brpc.DialOption{brpc.WithKeepalive(soakKeepalive, soakKeepaliveTimeout), brpc.WithConnectBackoff(fastBackoff)}})
}

// TestSoak runs many clients over both transports that connect, call in
// both directions (every RPC kind, some with deadlines, some failing on
// purpose) and disconnect at random: cleanly, while calls are in flight,
// by a cut connection or by vanishing without a word. A soakLedger accounts for
// every call. BRPC_SOAK sets the duration, BRPC_SOAK_SEED the seed.
func TestSoak(t *testing.T) {
	dur := soakDuration(t)
	seed := faultSeed(t, "BRPC_SOAK_SEED")
	e := testenv.New(t, testenv.Config{Transport: "quic", ServerOpts: []brpc.ServerOption{
		brpc.WithKeepalive(soakKeepalive, soakKeepaliveTimeout),
		// Reverse connections are released between calls all the time,
		// so that building and closing them races with calls.
		brpc.WithReverseIdleTimeout(20 * time.Millisecond),
		brpc.WithAuthenticator(func(_ context.Context, info brpc.AuthInfo) (string, error) {
			// Unique per session: a slot's next session never replaces its last.
			return fmt.Sprintf("%s/%016x", info.Metadata.Get("name")[0], rand.Uint64()), nil
		}),
	}})
	// The same server on QUIC and TCP on one port number.
	quicAddr, tcpAddr := e.ServeOnOnePort()
	s := &soak{e: e, l: newSoakLedger(), dialErrs: map[codes.Code]int64{},
		targets: map[string]string{"quic": "quic://" + quicAddr, "tcp": "tcp://" + tcpAddr}}

	// Warm up: one client per transport, so that the listeners' and the
	// server's own goroutines and pools exist before the baseline.
	for _, tr := range testenv.Transports {
		c, err := s.dial(s.targets[tr], "warm-"+tr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Echo.Unary(testenv.Ctx(t), &testpb.EchoRequest{}); err != nil {
			t.Fatal(err)
		}
		c.Shutdown()
	}
	testenv.WaitFor(t, 5*time.Second, "the warm-up clients to leave", func() bool { return len(e.Srv.Peers()) == 0 })
	testenv.SettleGoroutines(t, 10*time.Second)
	f0 := testenv.MeasureFootprint()
	g0, h0 := f0.Goroutines, f0.HeapAlloc

	start := time.Now()
	ctx, stop := context.WithTimeout(context.Background(), dur)
	defer stop()
	// The watchdog.
	watchDone := make(chan struct{})
	var watching sync.WaitGroup
	watching.Add(1)
	go func() {
		defer watching.Done()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case now := <-tick.C:
				s.l.watch(now)
			case <-watchDone:
				return
			}
		}
	}()

	var wg sync.WaitGroup
	// Client slots: connect, call, disconnect, again until the end.
	for slot := range soakClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(100+slot)))
			for n := 0; ctx.Err() == nil; n++ {
				s.session(ctx, rng, fmt.Sprintf("slot%d-%d", slot, n))
			}
		}()
	}
	// The server side: call random connected clients.
	for i := range soakReverseCallers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(1000+i)))
			for ctx.Err() == nil {
				peers := e.Srv.Peers()
				if len(peers) == 0 {
					time.Sleep(5 * time.Millisecond)
					continue
				}
				p := peers[rng.IntN(len(peers))]
				stub, err := e.Srv.Client(p.ID)
				if err != nil {
					continue // gone meanwhile: no call issued
				}
				site := soakSite{dir: "reverse", session: p.Metadata.Get("name")[0], tr: p.Transport, stub: stub}
				soakCall(s.l, rng, soakKind(rng.IntN(int(soakNumKinds))), site)
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	close(watchDone)
	watching.Wait()
	s.l.watch(time.Now())
	// The session notes served the reports of overdue calls, made by now:
	// they must not count as heap growth.
	s.l.mu.Lock()
	s.l.notes = nil
	s.l.mu.Unlock()

	// Every client is closed: the server must forget them all, and the
	// process must come back to where it started.
	testenv.WaitFor(t, soakKeepaliveTimeout+soakSlack, "every client to leave Peers()", func() bool { return len(e.Srv.Peers()) == 0 })
	// Goroutines of closed sessions may take a moment to return: wait
	// until the count is back at the start (give or take two), for at most
	// 10s, then hold it to the bound.
	settle := time.Now()
	for runtime.NumGoroutine() > g0+2 && time.Since(settle) < 10*time.Second {
		time.Sleep(20 * time.Millisecond)
	}
	settled := time.Since(settle)
	f1 := testenv.MeasureFootprint()
	g1, h1 := f1.Goroutines, f1.HeapAlloc
	s.report(t, took, dur, seed, g0, g1, h0, h1, settled)
}

// report logs the soak's figures and fails the test on any unaccounted,
// overdue or wrong call and on growth beyond the bounds.
func (s *soak) report(t *testing.T, took, dur time.Duration, seed uint64, g0, g1 int, h0, h1 uint64, settled time.Duration) {
	l := s.l
	l.mu.Lock()
	defer l.mu.Unlock()
	failed := l.failed()
	t.Logf("soak: %v (BRPC_SOAK %v, seed %d), %d client slots over quic and tcp, %d server-side callers",
		took.Round(time.Millisecond), dur, seed, soakClients, soakReverseCallers)
	s.dialMu.Lock()
	var dialErrs []string
	for c, n := range s.dialErrs {
		dialErrs = append(dialErrs, fmt.Sprintf("%v %d", c, n))
	}
	s.dialMu.Unlock()
	slices.Sort(dialErrs)
	t.Logf("sessions: %d connected (dial errors: [%s]); ended by %d closes with calls in flight, %d clean closes, %d cut connections, %d vanished peers",
		s.sessions.Load(), strings.Join(dialErrs, ", "), s.closes.Load(), s.cleanCloses.Load(), s.cuts.Load(), s.vanishes.Load())
	t.Logf("calls: %d issued = %d ok + %d failed; %d unaccounted, %d pending, %d overdue, %d wrong",
		l.issued, l.ok, failed, l.issued-l.ok-failed, len(l.pending), len(l.overdue), len(l.wrong))
	for _, dir := range []string{"forward", "reverse"} {
		var n int64
		var kinds []string
		for k := range soakNumKinds {
			c := l.calls[dir+"/"+k.String()]
			n += c
			kinds = append(kinds, fmt.Sprintf("%s %d", k, c))
		}
		t.Logf("%s: %d calls (%s); errors: %s", dir, n, strings.Join(kinds, ", "), l.codeSummary(dir))
	}
	t.Logf("lateness past a call's deadline or expected duration: at most %v (bound %v); %d calls over 1s, %d over 2s, %d over 4s",
		l.longest.Round(time.Millisecond), soakKeepaliveTimeout+soakSlack, l.late[0], l.late[1], l.late[2])
	type group struct {
		what string
		n    int
	}
	var slow []group
	for k, n := range l.slow {
		slow = append(slow, group{k, n})
	}
	slices.SortFunc(slow, func(a, b group) int { return cmp.Or(b.n-a.n, strings.Compare(a.what, b.what)) })
	for i, g := range slow {
		if i == 8 {
			t.Logf("  ... and %d more groups", len(slow)-i)
			break
		}
		t.Logf("  more than 2s late: %d %s", g.n, g.what)
	}
	t.Logf("goroutines: %d before, %d after (settled in %v); heap: %.2f MiB before, %.2f MiB after",
		g0, g1, settled.Round(time.Millisecond), float64(h0)/(1<<20), float64(h1)/(1<<20))

	if l.issued != l.ok+failed {
		t.Errorf("unaccounted calls: %d issued, %d ok, %d failed", l.issued, l.ok, failed)
	}
	if len(l.pending) != 0 {
		t.Errorf("%d calls still pending at the end", len(l.pending))
	}
	for _, o := range l.overdue {
		t.Errorf("overdue: %s", o)
	}
	if len(l.stacks) > 0 {
		t.Logf("goroutine dumps at the first overdue calls: %s", strings.Join(l.stacks, " "))
	}
	for i, w := range l.wrong {
		if i == 20 {
			t.Errorf("... and %d more wrong outcomes", len(l.wrong)-i)
			break
		}
		t.Errorf("wrong outcome: %s", w)
	}
	if l.ok == 0 || failed == 0 {
		t.Errorf("%d calls succeeded and %d failed: the mix should have both", l.ok, failed)
	}
	if g1 > g0+soakMaxGoroutineGrowth {
		buf := make([]byte, 1<<20)
		t.Errorf("goroutines: %d after the soak, %d before (bound +%d)\n%s", g1, g0, soakMaxGoroutineGrowth, buf[:runtime.Stack(buf, true)])
	}
	if h1 > h0+soakMaxHeapGrowth {
		t.Errorf("heap grew from %d to %d bytes (bound +%d)", h0, h1, soakMaxHeapGrowth)
	}
}

// session is one session of a client slot: it connects (directly or
// through a relay it may cut or silence), runs 1-3 forward callers for a
// random time and disconnects in a random way.
func (s *soak) session(ctx context.Context, rng *rand.Rand, name string) {
	tr := testenv.Transports[rng.IntN(len(testenv.Transports))]
	target := s.targets[tr]
	// A quarter of the sessions go through a relay, so that they can vanish
	// or be cut: a UDP one that also drops, delays and duplicates 1% of
	// the datagrams, or a TCP one.
	var cut, vanish func()
	via := "direct"
	var err error
	if rng.IntN(4) == 0 {
		via = "through a relay"
		if tr == "quic" {
			var r *testenv.UDPRelay
			if r, err = testenv.StartUDPRelay(strings.TrimPrefix(s.targets["quic"], "quic://"), testenv.Faults{Drop: 0.01, Reorder: 0.01, Duplicate: 0.01}, rng.Uint64()); err == nil {
				defer r.Close()
				target, vanish = "quic://"+r.Addr(), r.Blackhole
			}
		} else {
			var r *testenv.TCPRelay
			if r, err = testenv.StartTCPRelay("127.0.0.1:0", strings.TrimPrefix(s.targets["tcp"], "tcp://")); err == nil {
				defer r.Close()
				target, vanish, cut = "tcp://"+r.Addr(), r.Blackhole, r.Cut
			}
		}
	}
	var c *testenv.Client
	if err == nil {
		// Not cut short when the soak ends: an abandoned QUIC handshake
		// holds a few goroutines on the server until quic-go's handshake
		// timeout, which would only lengthen the settle wait.
		c, err = s.dial(target, name)
	}
	if err != nil {
		s.dialMu.Lock()
		s.dialErrs[status.Code(err)]++
		s.dialMu.Unlock()
		time.Sleep(20 * time.Millisecond)
		return
	}
	s.sessions.Add(1)
	s.l.note(name, fmt.Sprintf("connected over %s %s as %s", tr, via, c.ID()))

	life, endLife := context.WithTimeout(ctx, time.Duration(50+rng.IntN(1450))*time.Millisecond)
	defer endLife()
	var callers sync.WaitGroup
	site := soakSite{dir: "forward", session: name, tr: tr, stub: c.Echo, closing: new(atomic.Bool)}
	for i := range 1 + rng.IntN(3) {
		crng := rand.New(rand.NewPCG(rng.Uint64(), uint64(i)))
		callers.Add(1)
		go func() {
			defer callers.Done()
			for life.Err() == nil {
				soakCall(s.l, crng, soakKind(crng.IntN(int(soakNumKinds))), site)
			}
		}()
	}
	<-life.Done()
	defer s.l.note(name, "closed")

	switch mode := rng.IntN(10); {
	case mode < 2 && vanish != nil:
		// The peer vanishes: calls in flight end by dead-peer detection on
		// both sides, which the ledger's bound holds them to.
		s.vanishes.Add(1)
		s.l.note(name, "vanishes")
		vanish()
		callers.Wait()
		s.l.note(name, "calls done")
		c.Shutdown()
	case mode < 4 && cut != nil:
		s.cuts.Add(1)
		s.l.note(name, "cut")
		cut()
		callers.Wait()
		s.l.note(name, "calls done")
		c.Shutdown()
	case mode < 6:
		s.cleanCloses.Add(1)
		s.l.note(name, "calls stop")
		callers.Wait()
		s.l.note(name, "calls done")
		c.Shutdown()
	default:
		// Close with calls in flight: they end with Canceled.
		s.closes.Add(1)
		s.l.note(name, "closing with calls in flight")
		site.closing.Store(true)
		c.Shutdown()
		callers.Wait()
	}
}

// soakDumpStacks writes every goroutine's stack to a file and returns its name.
func soakDumpStacks() string {
	buf := make([]byte, 16<<20)
	buf = buf[:runtime.Stack(buf, true)]
	f, err := os.CreateTemp("", "brpc-soak-stacks-*.txt")
	if err != nil {
		return "(no stack dump: " + err.Error() + ")"
	}
	defer f.Close()
	f.Write(buf)
	return f.Name()
}
