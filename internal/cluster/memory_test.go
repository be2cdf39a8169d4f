package cluster

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recorder collects a member's updates and lets a test wait for them.
type recorder struct {
	ch chan Update
}

func newRecorder() *recorder { return &recorder{ch: make(chan Update, 64)} }

func (r *recorder) fn(u Update) { r.ch <- u }

func (r *recorder) next(t *testing.T) Update {
	t.Helper()
	select {
	case u := <-r.ch:
		return u
	case <-time.After(5 * time.Second):
		t.Fatal("no update within 5s")
		return Update{}
	}
}

func (r *recorder) none(t *testing.T) {
	t.Helper()
	select {
	case u := <-r.ch:
		t.Fatalf("unexpected update %+v", u)
	default:
	}
}

func join(t *testing.T, m *Memory, name string) (Membership, *recorder) {
	t.Helper()
	r := newRecorder()
	mb, err := m.Join(context.Background(), Replica{Name: name, Addr: name + ":1"}, r.fn)
	if err != nil {
		t.Fatalf("Join(%s): %v", name, err)
	}
	t.Cleanup(func() { mb.Leave(context.Background()) })
	return mb, r
}

func TestMemoryJoinStartsWithReset(t *testing.T) {
	m := NewMemory()
	a, ra := join(t, m, "a")
	u := ra.next(t)
	if !u.Reset || len(u.Clients) != 0 || !reflect.DeepEqual(u.Replicas, []ReplicaRecord{{Replica: Replica{"a", "a:1"}}}) {
		t.Fatalf("a's first update = %+v, want a Reset with a's own record", u)
	}
	a.Claim("x")
	if u := ra.next(t); len(u.Clients) != 1 || u.Clients[0].ID != "x" || u.Clients[0].Replica != "a" {
		t.Fatalf("a's claim reported as %+v", u)
	}
	_, rb := join(t, m, "b")
	u = rb.next(t)
	if !u.Reset || len(u.Clients) != 1 || u.Clients[0].Replica != "a" || len(u.Replicas) != 2 {
		t.Fatalf("b's first update = %+v, want a Reset with x on a and both replicas", u)
	}
	if u := ra.next(t); len(u.Replicas) != 1 || u.Replicas[0].Name != "b" || u.Replicas[0].Gone {
		t.Fatalf("a told of b's joining as %+v", u)
	}
	if _, err := m.Join(context.Background(), Replica{Name: "b"}, func(Update) {}); !errors.Is(err, errNameTaken) {
		t.Fatalf("second Join as b: %v, want errNameTaken", err)
	}
}

func TestMemoryNewerClaimHasHigherRevision(t *testing.T) {
	m := NewMemory()
	a, ra := join(t, m, "a")
	b, rb := join(t, m, "b")
	ra.next(t) // reset
	ra.next(t) // b joined
	rb.next(t) // reset
	a.Claim("x")
	first := rb.next(t).Clients[0]
	b.Claim("x")
	second := rb.next(t).Clients[0]
	if first.Replica != "a" || second.Replica != "b" || second.Revision <= first.Revision {
		t.Fatalf("claims of x: %+v then %+v, want a then b with a higher revision", first, second)
	}
	// a sees both, in order.
	if u := ra.next(t); u.Clients[0] != first {
		t.Fatalf("a saw %+v first, want %+v", u, first)
	}
	if u := ra.next(t); u.Clients[0] != second {
		t.Fatalf("a saw %+v second, want %+v", u, second)
	}
}

func TestMemoryReleaseOnlyIfOurs(t *testing.T) {
	m := NewMemory()
	a, ra := join(t, m, "a")
	b, _ := join(t, m, "b")
	ra.next(t)
	ra.next(t)
	a.Claim("x")
	ra.next(t)
	b.Claim("x")
	ra.next(t)
	a.Release("x") // x is b's now: nothing happens
	b.Claim("y")
	if u := ra.next(t); u.Clients[0].ID != "y" {
		t.Fatalf("after a's release of b's x, a saw %+v, want only b's claim of y", u)
	}
	b.Release("x")
	if u := ra.next(t); u.Clients[0].ID != "x" || u.Clients[0].Replica != "" {
		t.Fatalf("b's release of x reported as %+v", u)
	}
	ra.none(t)
}

func TestMemoryLeaveRemovesAllRecords(t *testing.T) {
	m := NewMemory()
	a, ra := join(t, m, "a")
	b, _ := join(t, m, "b")
	ra.next(t)
	ra.next(t)
	b.Claim("x")
	b.Claim("y")
	a.Claim("z")
	for range 3 {
		ra.next(t)
	}
	if err := b.Leave(context.Background()); err != nil {
		t.Fatal(err)
	}
	u := ra.next(t)
	if len(u.Clients) != 2 || u.Clients[0] != (ClientRecord{ID: "x", Revision: u.Clients[0].Revision}) || u.Clients[1].ID != "y" || u.Clients[1].Replica != "" {
		t.Fatalf("b's leaving reported clients %+v, want x and y removed", u.Clients)
	}
	if len(u.Replicas) != 1 || u.Replicas[0].Name != "b" || !u.Replicas[0].Gone {
		t.Fatalf("b's leaving reported replicas %+v, want b gone", u.Replicas)
	}
	b.Claim("w") // after Leave: ignored
	_, rc := join(t, m, "c")
	if u := rc.next(t); len(u.Clients) != 1 || u.Clients[0].ID != "z" || len(u.Replicas) != 2 {
		t.Fatalf("c's reset after b left = %+v, want z on a and replicas a, c", u)
	}
	// The name is free again.
	if mb, err := m.Join(context.Background(), Replica{Name: "b"}, func(Update) {}); err != nil {
		t.Fatalf("rejoining as b: %v", err)
	} else {
		mb.Leave(context.Background())
	}
}

func TestMemoryLeaveBoundedBySlowCallback(t *testing.T) {
	m := NewMemory()
	block := make(chan struct{})
	entered := make(chan struct{})
	mb, err := m.Join(context.Background(), Replica{Name: "a"}, func(Update) {
		close(entered)
		<-block
	})
	if err != nil {
		t.Fatal(err)
	}
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := mb.Leave(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Leave with a stuck callback: %v, want DeadlineExceeded", err)
	}
	close(block)
}
