package brpc_test

import (
	"context"
	"fmt"
	"slices"
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

// fleet is a server with n clients named c00, c01, ..., admitted under
// their names, each serving the echo service as its name.
type fleet struct {
	e       *testenv.Env
	clients map[string]*testenv.Client
	names   []string
}

func newFleet(t *testing.T, tr string, n int) *fleet {
	t.Helper()
	e := testenv.New(t, testenv.Config{Transport: tr, ServerOpts: []brpc.ServerOption{brpc.WithAuthenticator(byName)}})
	f := &fleet{e: e, clients: map[string]*testenv.Client{}}
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		errs []error
	)
	for i := range n {
		name := fmt.Sprintf("c%02d", i)
		f.names = append(f.names, name)
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := e.Dial(testenv.ClientConfig{Name: name, MD: metadata.Pairs("name", name, "group", fmt.Sprint(i%3))})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
				return
			}
			f.clients[name] = c
		}()
	}
	wg.Wait()
	for _, c := range f.clients {
		t.Cleanup(c.Shutdown)
	}
	if len(errs) > 0 {
		t.Fatalf("connecting the fleet: %v", errs)
	}
	testenv.WaitFor(t, 10*time.Second, "every client in Peers", func() bool { return len(e.Srv.Peers()) == n })
	return f
}

// sleeping is the number of the fleet's client handlers waiting out a
// request's SleepMs.
func (f *fleet) sleeping() int64 {
	var n int64
	for _, c := range f.clients {
		n += c.Service.Sleeping()
	}
	return n
}

// byID indexes results by client ID.
func byID(t *testing.T, res []brpc.FanOutResult) map[string]brpc.FanOutResult {
	t.Helper()
	m := map[string]brpc.FanOutResult{}
	for _, r := range res {
		if _, dup := m[r.Peer.ID]; dup {
			t.Fatalf("client %q has two results", r.Peer.ID)
		}
		m[r.Peer.ID] = r
	}
	return m
}

func TestFanOutCallsEveryClientAndKeepsEachResult(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		const n, concurrency = 50, 8
		f := newFleet(t, tr, n)
		failing := map[string]bool{"c03": true, "c17": true, "c42": true}
		const slow = "c08"

		var (
			inflight, maxInflight atomic.Int64
			progress              []int
			inProgress            atomic.Bool
			overlap               atomic.Bool
		)
		opts := brpc.FanOutOptions{
			Concurrency:      concurrency,
			PerClientTimeout: time.Second,
			Progress: func(done, total int) {
				if inProgress.Swap(true) {
					overlap.Store(true)
				}
				defer inProgress.Store(false)
				if total != n {
					t.Errorf("Progress total %d, want %d", total, n)
				}
				progress = append(progress, done)
			},
		}
		start := time.Now()
		res, err := f.e.Srv.FanOut(testenv.Ctx(t), opts, func(ctx context.Context, c testpb.EchoClient, p brpc.Peer) error {
			cur := inflight.Add(1)
			defer inflight.Add(-1)
			for {
				m := maxInflight.Load()
				if cur <= m || maxInflight.CompareAndSwap(m, cur) {
					break
				}
			}
			req := &testpb.EchoRequest{Message: "fan", SleepMs: 20}
			switch {
			case failing[p.ID]:
				req.FailCode = int32(codes.FailedPrecondition)
			case p.ID == slow:
				req.SleepMs = 60_000 // far past the per-client deadline
			}
			r, err := c.Unary(ctx, req)
			if err != nil {
				return err
			}
			if want := p.ID + ":fan"; r.GetMessage() != want {
				return fmt.Errorf("answered %q, want %q", r.GetMessage(), want)
			}
			return nil
		})
		took := time.Since(start)
		if err != nil {
			t.Fatalf("FanOut: %v", err)
		}
		if len(res) != n {
			t.Fatalf("%d results, want %d", len(res), n)
		}
		if !slices.IsSortedFunc(res, func(a, b brpc.FanOutResult) int { return compareIDs(a.Peer.ID, b.Peer.ID) }) {
			t.Errorf("results are not in Peers order (by ID)")
		}
		got := byID(t, res)
		for _, name := range f.names {
			r, ok := got[name]
			switch {
			case !ok:
				t.Errorf("%s: no result", name)
			case failing[name]:
				if status.Code(r.Err) != codes.FailedPrecondition {
					t.Errorf("%s: error %v, want its own FailedPrecondition", name, r.Err)
				}
			case name == slow:
				if status.Code(r.Err) != codes.DeadlineExceeded {
					t.Errorf("%s (slow): error %v, want DeadlineExceeded from the per-client deadline", name, r.Err)
				}
				if r.Duration < time.Second || r.Duration > 10*time.Second {
					t.Errorf("%s (slow): took %v, want about the 1s per-client deadline", name, r.Duration)
				}
			default:
				if r.Err != nil {
					t.Errorf("%s: %v", name, r.Err)
				}
				if r.Duration <= 0 {
					t.Errorf("%s: duration %v", name, r.Duration)
				}
			}
		}
		if m := maxInflight.Load(); m > concurrency || m < 2 {
			t.Errorf("at most %d calls were in flight at once, want 2..%d", m, concurrency)
		}
		if overlap.Load() {
			t.Errorf("Progress was called concurrently")
		}
		if want := seq(n); !slices.Equal(progress, want) {
			t.Errorf("Progress saw done = %v, want 1..%d in order", progress, n)
		}
		if took > 15*time.Second {
			t.Errorf("the fan-out took %v: the slow client held up more than its own call", took)
		}
	})
}

func compareIDs(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func seq(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i + 1
	}
	return s
}

func TestFanOutFilterPicksClients(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		f := newFleet(t, tr, 12)
		var called sync.Map
		res, err := f.e.Srv.FanOut(testenv.Ctx(t), brpc.FanOutOptions{
			Filter: func(p brpc.Peer) bool { return p.Metadata.Get("group")[0] == "1" },
		}, func(ctx context.Context, c testpb.EchoClient, p brpc.Peer) error {
			called.Store(p.ID, true)
			_, err := c.Unary(ctx, &testpb.EchoRequest{})
			return err
		})
		if err != nil {
			t.Fatalf("FanOut: %v", err)
		}
		var want []string
		for i, name := range f.names {
			if i%3 == 1 {
				want = append(want, name)
			}
		}
		var gotIDs []string
		for _, r := range res {
			gotIDs = append(gotIDs, r.Peer.ID)
			if r.Err != nil {
				t.Errorf("%s: %v", r.Peer.ID, r.Err)
			}
		}
		if !slices.Equal(gotIDs, want) {
			t.Errorf("results for %v, want %v", gotIDs, want)
		}
		called.Range(func(k, _ any) bool {
			if !slices.Contains(want, k.(string)) {
				t.Errorf("%s was called although the filter left it out", k)
			}
			return true
		})
	})
}

func TestFanOutCancellationStopsLaunchingAndReportsTheRest(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		const n, concurrency = 20, 3
		f := newFleet(t, tr, n)
		ctx, cancel := context.WithCancel(testenv.Ctx(t))
		defer cancel()
		var calls atomic.Int64
		var lastProgress atomic.Int64
		type outcome struct {
			res []brpc.FanOutResult
			err error
		}
		out := make(chan outcome, 1)
		go func() {
			res, err := f.e.Srv.FanOut(ctx, brpc.FanOutOptions{
				Concurrency: concurrency,
				Progress:    func(done, _ int) { lastProgress.Store(int64(done)) },
			}, func(ctx context.Context, c testpb.EchoClient, p brpc.Peer) error {
				calls.Add(1)
				_, err := c.Unary(ctx, &testpb.EchoRequest{SleepMs: 60_000})
				return err
			})
			out <- outcome{res, err}
		}()
		testenv.WaitFor(t, 10*time.Second, "the first calls to reach their handlers", func() bool { return f.sleeping() == concurrency })
		cancel()
		var o outcome
		select {
		case o = <-out:
		case <-time.After(10 * time.Second):
			t.Fatal("FanOut did not return within 10s of its ctx ending")
		}
		if o.err != nil {
			t.Fatalf("FanOut: %v", o.err)
		}
		if got := calls.Load(); got != concurrency {
			t.Errorf("%d calls started, want %d (none after the cancel)", got, concurrency)
		}
		if len(o.res) != n {
			t.Fatalf("%d results, want %d", len(o.res), n)
		}
		uncalled := 0
		for _, r := range o.res {
			if status.Code(r.Err) != codes.Canceled {
				t.Errorf("%s: error %v, want Canceled", r.Peer.ID, r.Err)
			}
			if r.Duration == 0 {
				uncalled++
			}
		}
		if uncalled != n-concurrency {
			t.Errorf("%d clients left uncalled, want %d", uncalled, n-concurrency)
		}
		if got := lastProgress.Load(); got != n {
			t.Errorf("the last Progress said %d done, want %d", got, n)
		}
	})
}

func TestFanOutPanicIsThatClientsError(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		f := newFleet(t, tr, 5)
		res, err := f.e.Srv.FanOut(testenv.Ctx(t), brpc.FanOutOptions{Concurrency: 1}, func(ctx context.Context, c testpb.EchoClient, p brpc.Peer) error {
			if p.ID == "c02" {
				panic("handler bug")
			}
			_, err := c.Unary(ctx, &testpb.EchoRequest{})
			return err
		})
		if err != nil {
			t.Fatalf("FanOut: %v", err)
		}
		for _, r := range res {
			want := codes.OK
			if r.Peer.ID == "c02" {
				want = codes.Internal
			}
			if got := status.Code(r.Err); got != want {
				t.Errorf("%s: %v, want %v", r.Peer.ID, r.Err, want)
			}
		}
	})
}

func TestFanOutClientGoneBeforeItsTurn(t *testing.T) {
	f := newFleet(t, "tcp", 3)
	res, err := f.e.Srv.FanOut(testenv.Ctx(t), brpc.FanOutOptions{Concurrency: 1}, func(ctx context.Context, c testpb.EchoClient, p brpc.Peer) error {
		if p.ID == "c00" {
			f.clients["c01"].Shutdown()
			testenv.WaitFor(t, 10*time.Second, "c01 to leave", func() bool {
				_, err := f.e.Srv.Client("c01")
				return err != nil
			})
		}
		_, err := c.Unary(ctx, &testpb.EchoRequest{})
		return err
	})
	if err != nil {
		t.Fatalf("FanOut: %v", err)
	}
	got := byID(t, res)
	if got["c00"].Err != nil || got["c02"].Err != nil {
		t.Errorf("c00: %v, c02: %v; want both answered", got["c00"].Err, got["c02"].Err)
	}
	testenv.WantCode(t, got["c01"].Err, codes.NotFound, "c01, gone before its turn")
}

func TestFanOutRefusesInvalidOptions(t *testing.T) {
	e := testenv.NewPlainOn(t, "tcp")
	ok := func(context.Context, testpb.EchoClient, brpc.Peer) error { return nil }
	for _, tc := range []struct {
		name string
		opts brpc.FanOutOptions
		call func(context.Context, testpb.EchoClient, brpc.Peer) error
	}{
		{"negative concurrency", brpc.FanOutOptions{Concurrency: -1}, ok},
		{"negative timeout", brpc.FanOutOptions{PerClientTimeout: -time.Second}, ok},
		{"nil call", brpc.FanOutOptions{}, nil},
	} {
		_, err := e.Srv.FanOut(testenv.Ctx(t), tc.opts, tc.call)
		testenv.WantCode(t, err, codes.InvalidArgument, tc.name)
	}
	res, err := e.Srv.FanOut(testenv.Ctx(t), brpc.FanOutOptions{}, ok)
	if err != nil || len(res) != 0 {
		t.Errorf("FanOut with no clients: %d results, %v; want none and no error", len(res), err)
	}
}
