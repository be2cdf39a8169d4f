package brpcetcd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/brpc-go/brpc"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

func TestMain(m *testing.M) {
	// The members of a cluster of embedded etcds talk over HTTP; a stopped
	// member's peer server leaves its active connections open (its
	// Shutdown does not close them when its timeout passes) and so do the
	// peers' HTTP transports. brpcetcd uses no net/http itself.
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreAnyFunction("net/http.(*conn).serve"),
		goleak.IgnoreAnyFunction("net/http.(*connReader).backgroundRead"),
	)
}

// testEtcd is an etcd server in the test process, on loopback ports that
// stay the same across a stop and a start.
type testEtcd struct {
	t   *testing.T
	cfg *embed.Config
	e   *embed.Etcd
}

// startEtcd starts an etcd with its data in a temporary directory; the
// test's cleanup stops it.
func startEtcd(t *testing.T) *testEtcd {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Name = "brpcetcd-test"
	cfg.Dir = t.TempDir()
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.UnsafeNoFsync = true
	any0 := url.URL{Scheme: "http", Host: "127.0.0.1:0"}
	cfg.ListenClientUrls = []url.URL{any0}
	cfg.AdvertiseClientUrls = []url.URL{any0}
	cfg.ListenPeerUrls = []url.URL{any0}
	cfg.AdvertisePeerUrls = []url.URL{any0}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	te := &testEtcd{t: t, cfg: cfg}
	te.start()
	// Later starts take the ports the first one got, so that clients find
	// the server again where it was.
	client := url.URL{Scheme: "http", Host: te.e.Clients[0].Addr().String()}
	peer := url.URL{Scheme: "http", Host: te.e.Peers[0].Addr().String()}
	cfg.ListenClientUrls = []url.URL{client}
	cfg.AdvertiseClientUrls = []url.URL{client}
	cfg.ListenPeerUrls = []url.URL{peer}
	cfg.AdvertisePeerUrls = []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	t.Cleanup(te.stop)
	return te
}

func (te *testEtcd) start() {
	te.t.Helper()
	e, err := embed.StartEtcd(te.cfg)
	if err != nil {
		te.t.Fatalf("starting etcd: %v", err)
	}
	te.e = e
	te.waitReady()
}

func (te *testEtcd) waitReady() {
	te.t.Helper()
	select {
	case <-te.e.Server.ReadyNotify():
	case <-time.After(20 * time.Second):
		te.t.Fatalf("etcd %s was not ready within 20s", te.cfg.Name)
	}
}

func (te *testEtcd) stop() {
	if te.e != nil {
		te.e.Close()
		te.e = nil
	}
}

func (te *testEtcd) endpoint() string { return te.cfg.ListenClientUrls[0].Host }

// client returns an etcd client of te, closed by the test's cleanup.
func (te *testEtcd) client() *clientv3.Client {
	te.t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{te.endpoint()},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		// grpc's reconnect backoff grows to 120 s; capped, the client
		// finds a restarted etcd within half a second.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 500 * time.Millisecond},
			MinConnectTimeout: 2 * time.Second,
		})},
	})
	if err != nil {
		te.t.Fatalf("etcd client: %v", err)
	}
	te.t.Cleanup(func() { cli.Close() })
	return cli
}

// recorder keeps what a membership's updates say, for tests to wait on.
type recorder struct {
	mu       sync.Mutex
	changed  chan struct{} // closed and replaced on every update
	clients  map[string]brpc.ClientRecord
	replicas map[string]brpc.Replica
	down     error
	resets   int
	downs    int
	updates  []brpc.PresenceUpdate
	hold     func(brpc.PresenceUpdate) // when set, runs before an update is applied
}

func newRecorder() *recorder {
	return &recorder{changed: make(chan struct{}), clients: map[string]brpc.ClientRecord{}, replicas: map[string]brpc.Replica{}}
}

func (r *recorder) update(u brpc.PresenceUpdate) {
	r.mu.Lock()
	hold := r.hold
	r.mu.Unlock()
	if hold != nil {
		hold(u)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.updates = append(r.updates, u)
	switch {
	case u.Down != nil:
		r.down = u.Down
		r.downs++
	case u.Reset:
		r.down = nil
		r.resets++
		r.clients = map[string]brpc.ClientRecord{}
		r.replicas = map[string]brpc.Replica{}
	}
	for _, c := range u.Clients {
		if c.Replica == "" {
			delete(r.clients, c.ID)
		} else {
			r.clients[c.ID] = c
		}
	}
	for _, rr := range u.Replicas {
		if rr.Gone {
			delete(r.replicas, rr.Name)
		} else {
			r.replicas[rr.Name] = rr.Replica
		}
	}
	close(r.changed)
	r.changed = make(chan struct{})
}

// waitFor waits until cond holds on the recorder (called under its lock)
// or fails the test after timeout, saying what it waited for.
func (r *recorder) waitFor(t *testing.T, timeout time.Duration, what string, cond func(r *recorder) bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		ok := cond(r)
		ch := r.changed
		r.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			r.mu.Lock()
			defer r.mu.Unlock()
			t.Fatalf("within %v, no %s (records: %d clients, replicas %v, down %v, %d resets, %d downs)",
				timeout, what, len(r.clients), r.replicas, r.down, r.resets, r.downs)
		}
	}
}

// holds reports whether the view has id held by replica.
func (r *recorder) holds(id, replica string) bool {
	c, ok := r.clients[id]
	return ok && c.Replica == replica
}

// newPresence returns a presence on cli with a short TTL and its own
// prefix, failing the test on error.
func newPresence(t *testing.T, cli *clientv3.Client, opts ...Option) *Presence {
	t.Helper()
	p, err := New(cli, append([]Option{WithTTL(2 * time.Second), WithPrefix("/t")}, opts...)...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return p
}

// join makes name a member of p with a recorder, waits for its first
// Reset and has the test's cleanup leave.
func join(t *testing.T, p *Presence, name string) (brpc.Membership, *recorder) {
	t.Helper()
	rec := newRecorder()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := p.Join(ctx, brpc.Replica{Name: name, Addr: fmt.Sprintf("127.0.0.1:%d", 7000+len(name))}, rec.update)
	if err != nil {
		t.Fatalf("Join %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := m.Leave(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Logf("Leave %s in cleanup: %v", name, err)
		}
	})
	rec.waitFor(t, 10*time.Second, name+"'s first Reset", func(r *recorder) bool { return r.resets == 1 })
	return m, rec
}

// freePort returns a loopback port nothing listens on now. The members of
// an etcd cluster must know each other's peer URLs before they start, so
// the kernel cannot pick those ports as the members listen.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startEtcdCluster starts an etcd cluster of n members; the test's cleanup
// stops them.
func startEtcdCluster(t *testing.T, n int) []*testEtcd {
	t.Helper()
	members := make([]*testEtcd, n)
	var initial []string
	for i := range members {
		cfg := embed.NewConfig()
		cfg.Name = fmt.Sprintf("m%d", i)
		cfg.Dir = t.TempDir()
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
		cfg.UnsafeNoFsync = true
		client := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
		peer := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
		cfg.ListenClientUrls = []url.URL{client}
		cfg.AdvertiseClientUrls = []url.URL{client}
		cfg.ListenPeerUrls = []url.URL{peer}
		cfg.AdvertisePeerUrls = []url.URL{peer}
		initial = append(initial, cfg.Name+"="+peer.String())
		members[i] = &testEtcd{t: t, cfg: cfg}
	}
	for _, te := range members {
		te.cfg.InitialCluster = strings.Join(initial, ",")
		t.Cleanup(te.stop)
	}
	// A member is ready only once a quorum has started: start them all,
	// then wait.
	for _, te := range members {
		e, err := embed.StartEtcd(te.cfg)
		if err != nil {
			t.Fatalf("starting etcd %s: %v", te.cfg.Name, err)
		}
		te.e = e
	}
	for _, te := range members {
		te.waitReady()
	}
	return members
}
