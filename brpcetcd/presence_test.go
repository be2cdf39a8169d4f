package brpcetcd

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/brpc-go/brpc"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestNewRejectsInvalidOptions(t *testing.T) {
	cli := &clientv3.Client{}
	for _, tc := range []struct {
		name string
		opt  Option
	}{
		{"empty prefix", WithPrefix("")},
		{"prefix ending in a slash", WithPrefix("/brpc/")},
		{"TTL under a second", WithTTL(500 * time.Millisecond)},
		{"TTL not whole seconds", WithTTL(1500 * time.Millisecond)},
		{"batch of zero", WithBatch(0)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(cli, tc.opt)
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("New with %s: got %v, want InvalidArgument", tc.name, err)
			}
		})
	}
	if _, err := New(nil); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("New without a client: got %v, want InvalidArgument", err)
	}
	if _, err := New(cli, WithPrefix("/a/b"), WithTTL(3*time.Second), WithBatch(1)); err != nil {
		t.Fatalf("New with valid options: %v", err)
	}
}

func TestClaimsAndReleasesReachEveryMemberNewestRevisionLast(t *testing.T) {
	te := startEtcd(t)
	cli := te.client()
	p := newPresence(t, cli)
	a, recA := join(t, p, "a")
	b, recB := join(t, p, "b")

	for _, rec := range []*recorder{recA, recB} {
		rec.waitFor(t, 5*time.Second, "both replica records", func(r *recorder) bool {
			return r.replicas["a"].Addr != "" && r.replicas["b"].Addr != ""
		})
	}

	a.Claim("x")
	recB.waitFor(t, 5*time.Second, "x held by a at b", func(r *recorder) bool { return r.holds("x", "a") })
	recB.mu.Lock()
	first := recB.clients["x"].Revision
	recB.mu.Unlock()
	if first <= 0 {
		t.Fatalf("a's claim of x has revision %d, want > 0", first)
	}

	b.Claim("x")
	recA.waitFor(t, 5*time.Second, "x held by b at a", func(r *recorder) bool { return r.holds("x", "b") })
	recA.mu.Lock()
	second := recA.clients["x"].Revision
	recA.mu.Unlock()
	if second <= first {
		t.Fatalf("b's later claim of x has revision %d, not above a's %d", second, first)
	}
	// a's session of x is replaced: a forgets it without being told.
	ma := a.(*membership)
	ma.mu.Lock()
	_, stillHeld := ma.held["x"]
	ma.mu.Unlock()
	if stillHeld {
		t.Fatal("a still counts x as held after b's newer claim")
	}

	// a no longer holds x: its release must leave b's record alone. The
	// claim of y after it shows the release was written.
	a.Release("x")
	a.Claim("y")
	recA.waitFor(t, 5*time.Second, "y held by a", func(r *recorder) bool { return r.holds("y", "a") })
	resp, err := cli.Get(context.Background(), "/t/clients/x")
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "b" {
		t.Fatalf("after a released x that b holds, etcd has %v, want x held by b", resp.Kvs)
	}

	b.Release("x")
	recA.waitFor(t, 5*time.Second, "x removed at a", func(r *recorder) bool { _, ok := r.clients["x"]; return !ok })
	recB.waitFor(t, 5*time.Second, "x removed at b", func(r *recorder) bool { _, ok := r.clients["x"]; return !ok })
}

func TestJoinRefusesANameTakenAtAnotherAddress(t *testing.T) {
	te := startEtcd(t)
	p := newPresence(t, te.client())
	join(t, p, "a")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := p.Join(ctx, brpc.Replica{Name: "a", Addr: "127.0.0.1:1"}, func(brpc.PresenceUpdate) {})
	if status.Code(err) != codes.AlreadyExists {
		t.Fatalf("Join with a's name at another address: got %v, want AlreadyExists", err)
	}
	if _, err := p.Join(ctx, brpc.Replica{Name: "", Addr: "127.0.0.1:1"}, func(brpc.PresenceUpdate) {}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("Join without a name: got %v, want InvalidArgument", err)
	}
	// The same name at the same address is that replica restarted before
	// its old lease expired: it takes the record over.
	_, rec := join(t, p, "a")
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.replicas) != 1 || rec.replicas["a"].Addr != "127.0.0.1:7001" {
		t.Fatalf("a restarted at its address sees replicas %v, want its own record", rec.replicas)
	}
}

func TestJoinWithEtcdStoppedFailsWithinItsContext(t *testing.T) {
	te := startEtcd(t)
	p := newPresence(t, te.client())
	te.stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	m, err := p.Join(ctx, brpc.Replica{Name: "a", Addr: "127.0.0.1:1"}, func(brpc.PresenceUpdate) {})
	if err == nil {
		m.Leave(ctx)
		t.Fatal("Join with etcd stopped succeeded")
	}
	if code := status.Code(err); code != codes.DeadlineExceeded && code != codes.Unavailable {
		t.Fatalf("Join with etcd stopped: %v, want DeadlineExceeded or Unavailable", err)
	}
	if elapsed := time.Since(start); elapsed > 3*time.Second {
		t.Fatalf("Join with a 1s context took %v", elapsed)
	}
}

const testTTL = 2 * time.Second

func clientIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("client-%04d", i)
	}
	return ids
}

// holdsAll reports whether every id is held by replica in the view.
func (r *recorder) holdsAll(ids []string, replica string) bool {
	for _, id := range ids {
		if !r.holds(id, replica) {
			return false
		}
	}
	return true
}

// heldBy counts the clients the view has held by replica.
func (r *recorder) heldBy(replica string) int {
	n := 0
	for _, c := range r.clients {
		if c.Replica == replica {
			n++
		}
	}
	return n
}

func TestLeaveRemovesEveryRecordInOneRevision(t *testing.T) {
	te := startEtcd(t)
	cli := te.client()
	p := newPresence(t, cli)
	a, _ := join(t, p, "a")
	_, recB := join(t, p, "b")
	ids := clientIDs(50)
	for _, id := range ids {
		a.Claim(id)
	}
	recB.waitFor(t, 5*time.Second, "a's 50 claims at b", func(r *recorder) bool { return r.holdsAll(ids, "a") })

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.Leave(ctx); err != nil {
		t.Fatalf("Leave: %v", err)
	}
	recB.waitFor(t, 5*time.Second, "a's records gone at b", func(r *recorder) bool {
		_, ok := r.replicas["a"]
		return !ok && r.heldBy("a") == 0
	})
	recB.mu.Lock()
	var removal brpc.PresenceUpdate
	for _, u := range recB.updates {
		for _, rr := range u.Replicas {
			if rr.Name == "a" && rr.Gone {
				removal = u
			}
		}
	}
	recB.mu.Unlock()
	if len(removal.Clients) != len(ids) {
		t.Fatalf("the update removing a's replica record removes %d clients, want all %d at once", len(removal.Clients), len(ids))
	}
	for _, c := range removal.Clients {
		if c.Replica != "" || c.Revision != removal.Clients[0].Revision {
			t.Fatalf("a's records were not removed in one revision: %+v", removal.Clients)
		}
	}
	resp, err := cli.Get(ctx, "/t/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		if string(kv.Value) == "a" {
			t.Fatalf("after a left etcd still has %s = a", kv.Key)
		}
	}
	a.Claim("late")
	if err := a.Leave(ctx); err != nil {
		t.Fatalf("second Leave: %v", err)
	}
	if n := p.Stats().Pending; n != 0 {
		t.Fatalf("a claim after Leave is pending (%d operations), want it ignored", n)
	}
}

func TestLeaseExpiryRemovesAStoppedMembersRecordsWithinTheTTL(t *testing.T) {
	te := startEtcd(t)
	cliA := te.client()
	a, recA := join(t, newPresence(t, cliA), "a")
	_, recB := join(t, newPresence(t, te.client()), "b")
	ids := clientIDs(20)
	for _, id := range ids {
		a.Claim(id)
	}
	recB.waitFor(t, 5*time.Second, "a's claims at b", func(r *recorder) bool { return r.holdsAll(ids, "a") })

	// Closing a's client stops its keepalives as a crash would.
	start := time.Now()
	cliA.Close()
	recB.waitFor(t, testTTL+5*time.Second, "a's records gone at b", func(r *recorder) bool {
		_, ok := r.replicas["a"]
		return !ok && r.heldBy("a") == 0
	})
	elapsed := time.Since(start)
	t.Logf("a's records went %v after its keepalives stopped (TTL %v)", elapsed, testTTL)
	// etcd checks expiry every 500 ms and the revoke goes through raft.
	if limit := testTTL + 2*time.Second; elapsed > limit {
		t.Fatalf("a's records went %v after its keepalives stopped, more than TTL + margin %v", elapsed, limit)
	}
	recA.waitFor(t, 5*time.Second, "Down at a, whose client is closed", func(r *recorder) bool { return r.down != nil })
	if status.Code(recA.down) != codes.Unavailable {
		t.Fatalf("Down is %v, want code Unavailable", recA.down)
	}
}

func TestEtcdRestartReportsDownThenResetWithEveryClaim(t *testing.T) {
	te := startEtcd(t)
	cli := te.client()
	p := newPresence(t, cli)
	a, recA := join(t, p, "a")
	ids := clientIDs(50)
	for _, id := range ids {
		a.Claim(id)
	}
	recA.waitFor(t, 5*time.Second, "a's claims", func(r *recorder) bool { return r.holdsAll(ids, "a") })

	te.stop() // returns once etcd's streams are closed: from then on nothing answers
	start := time.Now()
	recA.waitFor(t, testTTL+5*time.Second, "Down", func(r *recorder) bool { return r.down != nil })
	elapsed := time.Since(start)
	t.Logf("Down %v after etcd stopped (TTL %v)", elapsed, testTTL)
	// The keepalive gives up a TTL after its last answer, checked each second.
	if limit := testTTL + 2*time.Second; elapsed > limit {
		t.Fatalf("Down %v after etcd stopped, more than TTL + margin %v", elapsed, limit)
	}
	// Changes while etcd is away are kept and written when it is back.
	a.Release(ids[0])
	a.Claim("while-down")
	lease := a.(*membership).currentLease()
	te.start()
	start = time.Now()

	want := append([]string{"while-down"}, ids[1:]...)
	recA.waitFor(t, 20*time.Second, "a Reset after etcd came back", func(r *recorder) bool { return r.resets == 2 })
	t.Logf("Reset %v after etcd was ready again", time.Since(start))
	// etcd extends every lease when it restarts: a keeps its lease if it
	// is back before that runs out, else it takes a new one and re-claims.
	t.Logf("a kept its lease: %v", a.(*membership).currentLease() == lease)
	recA.mu.Lock()
	var reset brpc.PresenceUpdate
	for _, u := range recA.updates {
		if u.Reset {
			reset = u
		}
	}
	recA.mu.Unlock()
	got := map[string]string{}
	for _, c := range reset.Clients {
		got[c.ID] = c.Replica
	}
	for _, id := range want {
		if got[id] != "a" {
			t.Fatalf("the Reset after etcd came back has %s held by %q, want a (records %v)", id, got[id], got)
		}
	}
	if _, ok := got[ids[0]]; ok || len(got) != len(want) {
		t.Fatalf("the Reset after etcd came back has %d records (released %s: %v), want %d", len(got), ids[0], ok, len(want))
	}
	if reset.Down != nil || len(reset.Replicas) != 1 || reset.Replicas[0].Name != "a" {
		t.Fatalf("the Reset after etcd came back: Down %v, replicas %v; want no Down and a's record", reset.Down, reset.Replicas)
	}
}

func TestLostLeaseRestoresHeldClientsExceptThoseClaimedSince(t *testing.T) {
	te := startEtcd(t)
	cli := te.client()
	p := newPresence(t, cli)
	a, recA := join(t, p, "a")
	b, _ := join(t, newPresence(t, cli), "b")
	ids := clientIDs(10)
	for _, id := range ids {
		a.Claim(id)
	}
	recA.waitFor(t, 5*time.Second, "a's claims", func(r *recorder) bool { return r.holdsAll(ids, "a") })
	// A newer session of one client on b: a, which has not released it
	// yet, must not take its record back when it restores its claims.
	b.Claim(ids[3])
	recA.waitFor(t, 5*time.Second, "b's newer claim", func(r *recorder) bool { return r.holds(ids[3], "b") })
	// Another moved to b and left b: a closed its session as replaced,
	// which releases nothing, and must not restore it either.
	b.Claim(ids[4])
	recA.waitFor(t, 5*time.Second, "b's newer claim", func(r *recorder) bool { return r.holds(ids[4], "b") })
	b.Release(ids[4])
	recA.waitFor(t, 5*time.Second, "b's release", func(r *recorder) bool { _, ok := r.clients[ids[4]]; return !ok })

	lost := a.(*membership).currentLease()
	if _, err := cli.Revoke(context.Background(), lost); err != nil {
		t.Fatalf("revoking a's lease: %v", err)
	}
	recA.waitFor(t, testTTL+5*time.Second, "Down then a Reset", func(r *recorder) bool { return r.downs == 1 && r.resets == 2 })
	if now := a.(*membership).currentLease(); now == lost {
		t.Fatalf("a still uses the revoked lease %x", lost)
	}
	recA.mu.Lock()
	defer recA.mu.Unlock()
	for _, id := range ids {
		want := "a"
		switch id {
		case ids[3]:
			want = "b"
		case ids[4]:
			want = ""
		}
		if got := recA.clients[id].Replica; got != want {
			t.Fatalf("after a's lease was lost, %s is held by %q, want %q", id, got, want)
		}
	}
	if _, ok := recA.replicas["a"]; !ok {
		t.Fatalf("after a's lease was lost its replica record is missing: %v", recA.replicas)
	}
}

func TestClaimsAreWrittenInBatches(t *testing.T) {
	const n = 3000
	te := startEtcd(t)
	cli := te.client()
	p := newPresence(t, cli)
	a, recA := join(t, p, "a")
	_, recB := join(t, newPresence(t, cli), "b")

	// A reconnect storm queues claims while a transaction is in flight;
	// holding a's goroutine queues them the same way.
	resume := pause(t, a, recA)
	before := p.Stats()
	ids := clientIDs(n)
	for _, id := range ids {
		a.Claim(id)
	}
	start := time.Now()
	resume()
	recB.waitFor(t, 30*time.Second, "3,000 claims at b", func(r *recorder) bool { return r.holdsAll(ids, "a") })
	elapsed := time.Since(start)
	// a counts a transaction before it handles the transaction's events.
	recA.waitFor(t, 10*time.Second, "3,000 claims at a", func(r *recorder) bool { return r.holdsAll(ids, "a") })
	after := p.Stats()
	txns := after.Txns - before.Txns
	t.Logf("%d claims in %d transactions (largest %d operations) seen by another member in %v", n, txns, after.MaxTxnOps, elapsed)
	if limit := uint64((n + DefaultBatch - 1) / DefaultBatch); txns > limit {
		t.Fatalf("%d claims took %d transactions, want at most %d", n, txns, limit)
	}
	if after.MaxTxnOps > DefaultBatch {
		t.Fatalf("a transaction carried %d operations, more than the batch of %d", after.MaxTxnOps, DefaultBatch)
	}
	if after.Records != n+1 || after.Pending != 0 {
		t.Fatalf("stats after the claims: %d records, %d pending; want %d records, 0 pending", after.Records, after.Pending, n+1)
	}
}

func TestCompactedWatchIsFollowedByAResetNotDown(t *testing.T) {
	te := startEtcd(t)
	cli := te.client()
	p := newPresence(t, cli)
	var once sync.Once
	// Between the snapshot and the watch, another replica writes twice and
	// etcd compacts past the snapshot's revision.
	p.hooks.beforeWatch = func(rev int64) {
		once.Do(func() {
			ctx := context.Background()
			if _, err := cli.Put(ctx, "/t/clients/z", "o"); err != nil {
				t.Errorf("put: %v", err)
			}
			resp, err := cli.Put(ctx, "/t/replicas/o", "127.0.0.1:9")
			if err != nil {
				t.Errorf("put: %v", err)
				return
			}
			if _, err := cli.Compact(ctx, resp.Header.Revision); err != nil {
				t.Errorf("compact: %v", err)
			}
		})
	}
	_, rec := join(t, p, "a")
	rec.waitFor(t, 5*time.Second, "a second Reset with the records written meanwhile", func(r *recorder) bool {
		return r.resets == 2 && r.holds("z", "o")
	})
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.downs != 0 {
		t.Fatalf("a compacted watch reported Down %d times: %v", rec.downs, rec.down)
	}
	if s := p.Stats(); s.Snapshots != 2 {
		t.Fatalf("%d snapshots, want 2 (Join and the compacted watch)", s.Snapshots)
	}
}

func TestLeaveWhileEtcdIsDownEndsWithinItsContext(t *testing.T) {
	te := startEtcd(t)
	a, _ := join(t, newPresence(t, te.client()), "a")
	te.stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	err := a.Leave(ctx)
	if err == nil {
		t.Fatal("Leave with etcd stopped succeeded")
	}
	if code := status.Code(err); code != codes.DeadlineExceeded && code != codes.Unavailable {
		t.Fatalf("Leave with etcd stopped: %v, want DeadlineExceeded or Unavailable", err)
	}
	if elapsed := time.Since(start); elapsed > 3*time.Second {
		t.Fatalf("Leave with a 1s context took %v", elapsed)
	}
}

func TestCollectorReportsStats(t *testing.T) {
	te := startEtcd(t)
	p := newPresence(t, te.client())
	a, rec := join(t, p, "a")
	ids := clientIDs(5)
	for _, id := range ids {
		a.Claim(id)
	}
	rec.waitFor(t, 5*time.Second, "a's claims", func(r *recorder) bool { return r.holdsAll(ids, "a") })

	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(p.Collector())
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Fatalf("metrics lint: %v %v", err, problems)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		m := f.GetMetric()[0]
		got[f.GetName()] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
	}
	s := p.Stats()
	for name, want := range map[string]float64{
		"brpc_presence_client_records":    5,
		"brpc_presence_pending_ops":       0,
		"brpc_presence_etcd_errors_total": 0,
		"brpc_presence_txns_total":        float64(s.Txns),
		"brpc_presence_ops_total":         float64(s.Ops),
		"brpc_presence_snapshots_total":   1,
	} {
		if got[name] != want {
			t.Errorf("%s = %v, want %v", name, got[name], want)
		}
	}
	// The replica record and five claims, in at least two transactions.
	if s.Ops != 6 || s.Txns < 2 {
		t.Errorf("stats: %d operations in %d transactions, want 6 in at least 2", s.Ops, s.Txns)
	}
}

// Claims and releases of the same clients from several goroutines on two
// replicas end with each member's view equal to what etcd holds.
func TestConcurrentClaimsAndReleasesConverge(t *testing.T) {
	te := startEtcd(t)
	cli := te.client()
	a, recA := join(t, newPresence(t, cli, WithBatch(7)), "a")
	b, recB := join(t, newPresence(t, cli, WithBatch(7)), "b")
	ids := clientIDs(40)
	var wg sync.WaitGroup
	for g, m := range []brpc.Membership{a, b, a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 400 {
				id := ids[(i*7+g*13)%len(ids)]
				if (i+g)%3 == 0 {
					m.Release(id)
				} else {
					m.Claim(id)
				}
			}
		}()
	}
	wg.Wait()
	// A last claim on each member marks the end of its queue.
	a.Claim("end-a")
	b.Claim("end-b")
	for _, rec := range []*recorder{recA, recB} {
		rec.waitFor(t, 20*time.Second, "both end markers", func(r *recorder) bool { return r.holds("end-a", "a") && r.holds("end-b", "b") })
	}
	resp, err := cli.Get(context.Background(), "/t/clients/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]brpc.ClientRecord{}
	for _, kv := range resp.Kvs {
		id := strings.TrimPrefix(string(kv.Key), "/t/clients/")
		want[id] = brpc.ClientRecord{ID: id, Replica: string(kv.Value), Revision: kv.ModRevision}
	}
	for name, rec := range map[string]*recorder{"a": recA, "b": recB} {
		rec.mu.Lock()
		if !reflect.DeepEqual(rec.clients, want) {
			t.Errorf("%s's view differs from etcd:\n view %v\n etcd %v", name, rec.clients, want)
		}
		rec.mu.Unlock()
	}
}

// pause holds m's goroutine in its updates, so that what m is asked to do
// queues up, until the returned function is called. It claims a client of
// its own for that, and leaves it claimed.
func pause(t *testing.T, m brpc.Membership, rec *recorder) (resume func()) {
	t.Helper()
	trigger := fmt.Sprintf("pause-%p-%d", rec, time.Now().UnixNano())
	held, release := make(chan struct{}), make(chan struct{})
	rec.mu.Lock()
	rec.hold = func(u brpc.PresenceUpdate) {
		for _, c := range u.Clients {
			if c.ID == trigger && c.Replica != "" {
				close(held)
				<-release
			}
		}
	}
	rec.mu.Unlock()
	m.Claim(trigger)
	select {
	case <-held:
	case <-time.After(5 * time.Second):
		t.Fatal("the claim that pauses the membership was not reported within 5s")
	}
	return func() {
		rec.mu.Lock()
		rec.hold = nil
		rec.mu.Unlock()
		close(release)
	}
}

func TestBatchesFitEtcdsTransactionLimit(t *testing.T) {
	te := startEtcd(t)
	cli := te.client()
	ids := clientIDs(300)

	// Releases are nested transactions, which etcd allows only what their
	// parent leaves of --max-txn-ops (128 here): a batch of them carries
	// 127, and etcd refuses none.
	p := newPresence(t, cli)
	a, recA := join(t, p, "a")
	for _, id := range ids {
		a.Claim(id)
	}
	recA.waitFor(t, 10*time.Second, "a's claims", func(r *recorder) bool { return r.holdsAll(ids, "a") })
	resume := pause(t, a, recA)
	for _, id := range ids {
		a.Release(id)
	}
	resume()
	recA.waitFor(t, 10*time.Second, "a's releases", func(r *recorder) bool { return r.heldBy("a") == 1 })
	if s := p.Stats(); s.Errors != 0 {
		t.Fatalf("etcd refused %d of a's transactions of releases", s.Errors)
	}

	// A batch larger than etcd allows is refused and split.
	big := newPresence(t, cli, WithBatch(300))
	b, recB := join(t, big, "b")
	resume = pause(t, b, recB)
	for _, id := range ids {
		b.Claim(id)
	}
	resume()
	recB.waitFor(t, 10*time.Second, "b's claims", func(r *recorder) bool { return r.holdsAll(ids, "b") })
	s := big.Stats()
	if s.Errors == 0 || s.MaxTxnOps > 128 {
		t.Fatalf("a batch of 300 against etcd's limit of 128: %d refusals, largest transaction %d; want it refused and split", s.Errors, s.MaxTxnOps)
	}
}

func TestQuorumLossEndsTheWatchWithDownThenResetOnTheSameLease(t *testing.T) {
	members := startEtcdCluster(t, 3)
	// The membership's client talks to member 0 only, which stays up.
	p := newPresence(t, members[0].client(), WithTTL(5*time.Second))
	a, rec := join(t, p, "a")
	ids := clientIDs(10)
	for _, id := range ids {
		a.Claim(id)
	}
	rec.waitFor(t, 5*time.Second, "a's claims", func(r *recorder) bool { return r.holdsAll(ids, "a") })
	lease := a.(*membership).currentLease()

	start := time.Now()
	members[1].stop()
	members[2].stop()
	// Member 0 cancels watches that require a leader after three election
	// timeouts (1 s each) without one.
	rec.waitFor(t, 10*time.Second, "Down after the quorum was lost", func(r *recorder) bool { return r.down != nil })
	t.Logf("Down %v after the quorum was lost: %v", time.Since(start), rec.down)

	members[1].start()
	members[2].start()
	rec.waitFor(t, 20*time.Second, "a Reset once the cluster has a leader", func(r *recorder) bool {
		return r.resets == 2 && r.down == nil && r.holdsAll(ids, "a")
	})
	// No member could expire the lease without a leader, and the new
	// leader extends it: a keeps it, and its records never went.
	if now := a.(*membership).currentLease(); now != lease {
		t.Fatalf("a took lease %x after the quorum came back, want its lease %x kept", now, lease)
	}
}
