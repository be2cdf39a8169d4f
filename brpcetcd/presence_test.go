package brpcetcd

import (
	"context"
	"testing"
	"time"

	"github.com/brpc-go/brpc"
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
}
