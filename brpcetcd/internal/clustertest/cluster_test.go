package clustertest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/certs"
	"github.com/brpc-go/brpc/internal/testenv"
	"github.com/brpc-go/brpc/internal/testpb"
)

func newCA(t *testing.T) *certs.CA {
	t.Helper()
	ca, err := certs.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// threeReplicas starts etcd and replicas r0, r1 and r2 in the test
// process.
func threeReplicas(t *testing.T) (*etcdServer, *certs.CA, []*replica) {
	t.Helper()
	etcd := startEtcd(t)
	ca := newCA(t)
	var rs []*replica
	for i := range 3 {
		rs = append(rs, newReplica(t, ca, fmt.Sprintf("r%d", i), etcd.endpoint(), nil))
	}
	return etcd, ca, rs
}

// records reads the client records in etcd as ID -> replica.
func records(t *testing.T, cli *clientv3.Client) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, testPrefix+"/clients/", clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("reading the client records: %v", err)
	}
	out := map[string]string{}
	for _, kv := range resp.Kvs {
		out[strings.TrimPrefix(string(kv.Key), testPrefix+"/clients/")] = string(kv.Value)
	}
	return out
}

// waitReachable waits until every replica reaches each of ids (each
// answering under its own ID) and returns when that was.
func waitReachable(t *testing.T, within time.Duration, ids []string, rs ...*replica) time.Time {
	t.Helper()
	deadline := time.Now().Add(within)
	for _, r := range rs {
		for _, id := range ids {
			for {
				err := reach(r, id, id, 2*time.Second)
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s did not reach %s within %v: %v (its cache: %s)", r.name, id, within, err, clusterPeersOf(r))
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
	}
	return time.Now()
}

func TestEveryClientFromEveryReplica(t *testing.T) {
	etcd, ca, rs := threeReplicas(t)
	clients := []struct {
		at        int
		transport string
		id        string
	}{{0, "quic", "c0"}, {1, "tcp", "c1"}, {2, "quic", "c2"}, {2, "tcp", "c3"}}
	var want []brpc.ClusterPeer
	for _, c := range clients {
		dialClient(t, ca, c.id, rs[c.at].targets[c.transport])
		want = append(want, brpc.ClusterPeer{ID: c.id, Replica: rs[c.at].name})
	}
	waitPeers(t, 10*time.Second, want, rs...)
	ctx := testenv.Ctx(t)
	for _, r := range rs {
		for _, c := range clients {
			stub, err := r.srv.Client(c.id)
			if err != nil {
				t.Fatalf("%s: Client(%s): %v", r.name, c.id, err)
			}
			if err := everyKind(ctx, stub, c.id); err != nil {
				t.Errorf("%s: Client(%s) on %s: %v", r.name, c.id, rs[c.at].name, err)
			}
			if err := everyKind(to(ctx, c.id), r.gateway, c.id); err != nil {
				t.Errorf("%s: gateway to %s on %s: %v", r.name, c.id, rs[c.at].name, err)
			}
		}
		_, err := r.srv.Client("nobody")
		testenv.WantCode(t, err, codes.NotFound, r.name+": Client(nobody)")
	}
	// The records in etcd, as docs/cluster.md lays them out.
	got := records(t, etcdClient(t, etcd.endpoint()))
	for _, p := range want {
		if got[p.ID] != p.Replica {
			t.Errorf("etcd has %s/clients/%s = %q, want %q", testPrefix, p.ID, got[p.ID], p.Replica)
		}
	}
	if len(got) != len(want) {
		t.Errorf("etcd has client records %v, want %v", got, want)
	}
}

func TestGracefulStopMovesClients(t *testing.T) {
	etcd := startEtcd(t)
	ca := newCA(t)
	cli := etcdClient(t, etcd.endpoint())
	// At r1's first disconnection, what etcd still holds of r1.
	var (
		checkOnce sync.Once
		leftover  []string
		checked   = make(chan struct{})
	)
	firstDisconnect := func(ev brpc.PeerEvent) {
		if ev.Type != brpc.PeerDisconnected {
			return
		}
		checkOnce.Do(func() {
			defer close(checked)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			resp, err := cli.Get(ctx, testPrefix+"/", clientv3.WithPrefix())
			if err != nil {
				leftover = []string{"error: " + err.Error()}
				return
			}
			for _, kv := range resp.Kvs {
				if string(kv.Value) == "r1" || strings.HasSuffix(string(kv.Key), "/replicas/r1") {
					leftover = append(leftover, string(kv.Key))
				}
			}
		})
	}
	r0 := newReplica(t, ca, "r0", etcd.endpoint(), nil)
	r1 := newReplica(t, ca, "r1", etcd.endpoint(), firstDisconnect)
	r2 := newReplica(t, ca, "r2", etcd.endpoint(), nil)
	// Clients of all three replicas, each dialed with the three endpoints
	// of its transport (brpc's Dial starts at a random one), until three
	// of each transport are on r1.
	var moving []string
	clients := map[string]*brpc.ClientConn{}
	var want []brpc.ClusterPeer
	onR1 := map[string]int{}
	for i := 0; onR1["quic"] < 3 || onR1["tcp"] < 3; i++ {
		if i == 60 {
			t.Fatalf("60 clients dialed, %v of them on r1", onR1)
		}
		tr := testenv.Transports[i%2]
		id := fmt.Sprintf("m%02d", i)
		cc := dialClient(t, ca, id, endpointList(tr, r0.targets, r1.targets, r2.targets))
		at := ""
		for _, r := range []*replica{r0, r1, r2} {
			if connectedTo(cc, r.targets) {
				at = r.name
			}
		}
		if at == "r1" {
			onR1[tr]++
			moving = append(moving, id)
			clients[id] = cc
		}
		want = append(want, brpc.ClusterPeer{ID: id, Replica: at})
	}
	waitPeers(t, 10*time.Second, want, r0, r1, r2)
	kept, err := r0.srv.Client(moving[0])
	if err != nil {
		t.Fatal(err)
	}
	testenv.Warm(t, kept)

	start := time.Now()
	stopped := make(chan error, 1)
	go func() { stopped <- r1.stop(true) }()
	reached := waitReachable(t, 10*time.Second, moving, r0, r2)
	if err := <-stopped; err != nil {
		t.Errorf("r1's Serve calls after GracefulStop: %v", err)
	}
	<-checked
	if len(leftover) > 0 {
		t.Errorf("r1 disconnected a client while etcd still held its records %v", leftover)
	}
	t.Logf("graceful stop of a replica with %d clients: all reachable from both others %v after GracefulStop began", len(moving), reached.Sub(start).Round(time.Millisecond))
	if d := reached.Sub(start); d > 8*time.Second {
		t.Errorf("the clients took %v to be reachable again", d)
	}
	for id, cc := range clients {
		if connectedTo(cc, r1.targets) || (!connectedTo(cc, r0.targets) && !connectedTo(cc, r2.targets)) {
			p, _ := cc.ServerPeer()
			t.Errorf("%s is connected to %v, not to r0 or r2", id, p.RemoteAddr)
		}
	}
	// The stub kept from before follows its client.
	if r, err := kept.Unary(testenv.Ctx(t), &testpb.EchoRequest{Message: "m"}); err != nil || r.GetMessage() != moving[0]+":m" {
		t.Errorf("the stub kept from before answered %q, %v", r.GetMessage(), err)
	}
	for id, at := range records(t, cli) {
		if at == "r1" {
			t.Errorf("etcd still has %s on r1", id)
		}
	}
}

func TestKilledReplica(t *testing.T) {
	etcd := startEtcd(t)
	ca := newCA(t)
	cli := etcdClient(t, etcd.endpoint())
	r0 := newReplica(t, ca, "r0", etcd.endpoint(), nil)
	r1 := newReplica(t, ca, "r1", etcd.endpoint(), nil)
	r2 := startReplicaChild(t, ca, "r2", etcd.endpoint(), testTTL)

	// Movers are dialed with the three endpoints of their transport
	// (brpc's Dial starts at a random one) until two of each transport
	// are on r2; the others stay where they landed. Stayers are dialed
	// to r2 alone: they keep trying it, and their records stay until
	// r2's lease expires.
	var movers, stayers, others []string
	moverConns := map[string]*brpc.ClientConn{}
	moverStates := map[string]*stateLog{}
	var want []brpc.ClusterPeer
	onR2 := map[string]int{}
	for i := 0; onR2["quic"] < 2 || onR2["tcp"] < 2; i++ {
		if i == 60 {
			t.Fatalf("60 clients dialed, %v of them on r2", onR2)
		}
		tr := testenv.Transports[i%2]
		id := fmt.Sprintf("mover%02d", i)
		cc := dialClient(t, ca, id, endpointList(tr, r0.targets, r1.targets, r2.targets))
		switch {
		case connectedTo(cc, r2.targets):
			onR2[tr]++
			movers = append(movers, id)
			moverConns[id] = cc
			moverStates[id] = watchStates(t, cc)
			want = append(want, brpc.ClusterPeer{ID: id, Replica: "r2"})
		case connectedTo(cc, r0.targets):
			others = append(others, id)
			want = append(want, brpc.ClusterPeer{ID: id, Replica: "r0"})
		default:
			others = append(others, id)
			want = append(want, brpc.ClusterPeer{ID: id, Replica: "r1"})
		}
	}
	stayerConns := map[string]*brpc.ClientConn{}
	for i := range 2 {
		tr := testenv.Transports[i%2]
		id := fmt.Sprintf("stayer%d", i)
		stayerConns[id] = dialClient(t, ca, id, r2.targets[tr])
		stayers = append(stayers, id)
		want = append(want, brpc.ClusterPeer{ID: id, Replica: "r2"})
	}
	waitPeers(t, 10*time.Second, want, r0, r1)
	// The child replica reaches the test's clients too.
	r2.Do(t, "reach", others[0], others[0])
	waitReachable(t, 10*time.Second, append(append([]string{}, movers...), stayers...), r0, r1)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	gone := cli.Watch(ctx, testPrefix+"/replicas/r2")
	killed := time.Now()
	r2.Kill(t)

	// Meanwhile calls for the stayers fail, and fast, with Unavailable
	// (r2's endpoint is gone) or NotFound (its records are), until the
	// records have left both caches.
	var probes sync.WaitGroup
	probeErrs := make(chan error, 100)
	for _, r := range []*replica{r0, r1} {
		for _, id := range stayers {
			probes.Go(func() {
				for n := 0; ; n++ {
					start := time.Now()
					err := reach(r, id, id, time.Second)
					took := time.Since(start)
					switch {
					case err == nil:
						probeErrs <- fmt.Errorf("%s reached %s on a killed replica", r.name, id)
						return
					case !unavailableOrNotFound(err):
						probeErrs <- fmt.Errorf("%s's call %d for %s: %v, want Unavailable or NotFound", r.name, n, id, err)
						return
					case took > 1500*time.Millisecond:
						probeErrs <- fmt.Errorf("%s's call %d for %s took %v to fail", r.name, n, id, took)
						return
					}
					if !inCache(r, id) || time.Since(killed) > 20*time.Second {
						return
					}
				}
			})
		}
	}

	// The lease's expiry, timed as the movers move.
	expiry := make(chan error, 1)
	var expired time.Duration
	go func() {
		select {
		case wr := <-gone:
			expired = time.Since(killed)
			if len(wr.Events) == 0 || wr.Events[0].Type != mvccpb.DELETE {
				expiry <- fmt.Errorf("watch of r2's record: %+v %v", wr.Events, wr.Err())
				return
			}
			expiry <- nil
		case <-time.After(testTTL + 10*time.Second):
			expiry <- fmt.Errorf("r2's replica record still there %v after it was killed", time.Since(killed))
		}
	}()
	movedAt := waitReachable(t, 10*time.Second, movers, r0, r1)
	var lostMax, movedMax time.Duration
	for _, l := range moverStates {
		lost, moved := l.times()
		lostMax, movedMax = max(lostMax, lost.Sub(killed)), max(movedMax, moved.Sub(killed))
	}
	t.Logf("killed replica: its clients dialed with every endpoint saw their sessions lost within %v, were connected to another replica within %v and reachable from both survivors %v after SIGKILL",
		lostMax.Round(time.Millisecond), movedMax.Round(time.Millisecond), movedAt.Sub(killed).Round(time.Millisecond))
	if d := movedAt.Sub(killed); d > 10*time.Second {
		t.Errorf("the movers took %v to be reachable again", d)
	}
	if err := <-expiry; err != nil {
		t.Fatal(err)
	}
	t.Logf("killed replica: its records gone from etcd %v after SIGKILL (TTL %v)", expired.Round(time.Millisecond), testTTL)
	if expired > testTTL+3*time.Second {
		t.Errorf("r2's lease expired %v after it was killed, TTL %v", expired, testTTL)
	}
	// Both caches list the home and the movers where they are now; the
	// stayers' records went with r2's lease.
	var moved []brpc.ClusterPeer
	for _, p := range want {
		if cc := moverConns[p.ID]; cc != nil {
			for _, r := range []*replica{r0, r1} {
				if connectedTo(cc, r.targets) {
					p.Replica = r.name
				}
			}
		}
		if p.Replica != "r2" {
			moved = append(moved, p)
		}
	}
	waitPeers(t, 10*time.Second, moved, r0, r1)
	probes.Wait()
	close(probeErrs)
	for err := range probeErrs {
		t.Error(err)
	}
	if rec := records(t, cli); len(rec) != len(moved) {
		t.Errorf("etcd holds %v, want %v", rec, moved)
	}

	// The stayers, dialed to a survivor, are reachable from both.
	for id, cc := range stayerConns {
		cc.Close()
		dialClient(t, ca, id, r1.targets[testenv.Transports[0]])
	}
	waitReachable(t, 10*time.Second, stayers, r0, r1)
}

// inCache reports whether r's cache of the presence names a replica for
// id.
func inCache(r *replica, id string) bool {
	for _, p := range r.srv.ClusterPeers() {
		if p.ID == id {
			return true
		}
	}
	return false
}

func TestEtcdOutage(t *testing.T) {
	etcd, ca, rs := threeReplicas(t)
	r0, r1 := rs[0], rs[1]
	for i, r := range rs {
		dialClient(t, ca, fmt.Sprintf("c%d", i), r.targets[testenv.Transports[i%2]])
	}
	waitPeers(t, 10*time.Second, []brpc.ClusterPeer{{ID: "c0", Replica: "r0"}, {ID: "c1", Replica: "r1"}, {ID: "c2", Replica: "r2"}}, rs...)
	kept, err := r0.srv.Client("c1")
	if err != nil {
		t.Fatal(err)
	}
	testenv.Warm(t, kept)

	stopping := time.Now()
	etcd.stop()
	stopped := time.Now()
	for _, r := range rs {
		r.log.waitCount(t, "presence_down", 1, testTTL+5*time.Second)
	}
	t.Logf("etcd stopped (its Close took %v): every replica down %v after it returned",
		stopped.Sub(stopping).Round(time.Millisecond), time.Since(stopped).Round(time.Millisecond))
	ctx := testenv.Ctx(t)
	local, err := r0.srv.Client("c0")
	if err != nil {
		t.Fatalf("r0: Client(c0), its own client, while etcd is down: %v", err)
	}
	if err := everyKind(ctx, local, "c0"); err != nil {
		t.Errorf("r0's own client while etcd is down: %v", err)
	}
	if err := everyKind(to(ctx, "c0"), r0.gateway, "c0"); err != nil {
		t.Errorf("r0's gateway to its own client while etcd is down: %v", err)
	}
	_, err = r0.srv.Client("c1")
	testenv.WantCode(t, err, codes.Unavailable, "r0: Client(c1) while etcd is down")
	_, err = kept.Unary(ctx, &testpb.EchoRequest{Message: "m"})
	testenv.WantCode(t, err, codes.Unavailable, "r0: the stub for c1 kept from before, while etcd is down")
	_, err = r0.gateway.Unary(to(ctx, "c1"), &testpb.EchoRequest{Message: "m"})
	testenv.WantCode(t, err, codes.Unavailable, "r0's gateway to c1 while etcd is down")
	// A client that connects during the outage is served where it is.
	dialClient(t, ca, "late", r1.targets["tcp"])
	if err := reach(r1, "late", "late", 5*time.Second); err != nil {
		t.Errorf("r1's client that connected while etcd was down: %v", err)
	}

	restarted := time.Now()
	etcd.start()
	for _, r := range rs {
		r.log.waitCount(t, "presence_up", 1, 15*time.Second)
	}
	t.Logf("etcd restarted: every replica up again %v after the start began", time.Since(restarted).Round(time.Millisecond))
	waitPeers(t, 10*time.Second, []brpc.ClusterPeer{{ID: "c0", Replica: "r0"}, {ID: "c1", Replica: "r1"}, {ID: "c2", Replica: "r2"},
		{ID: "late", Replica: "r1"}}, rs...)
	waitReachable(t, 10*time.Second, []string{"c0", "c1", "c2", "late"}, rs...)
	if err := everyKind(ctx, kept, "c1"); err != nil {
		t.Errorf("r0's stub for c1 once etcd is back: %v", err)
	}
}

// dialNamed connects a client with ID id whose echo service answers as
// answerer, without failing over.
func dialNamed(t *testing.T, ca *certs.CA, target, id, answerer string) *brpc.ClientConn {
	t.Helper()
	gs := grpc.NewServer()
	testpb.RegisterEchoServer(gs, &testenv.Echo{Name: answerer})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cc, err := brpc.Dial(ctx, target, brpc.WithTLSConfig(ca.ClientTLS()), brpc.WithServer(gs), brpc.WithMetadata(metadata.Pairs("name", id)))
	if err != nil {
		gs.Stop()
		t.Fatalf("Dial %s to %s: %v", id, target, err)
	}
	t.Cleanup(func() {
		cc.Close()
		gs.Stop()
	})
	return cc
}

func TestDuplicateIDAcrossReplicas(t *testing.T) {
	etcd, ca, rs := threeReplicas(t)
	r0, r1 := rs[0], rs[1]
	old := dialNamed(t, ca, r0.targets["quic"], "dup", "old")
	waitPeers(t, 10*time.Second, []brpc.ClusterPeer{{ID: "dup", Replica: "r0"}}, rs...)
	dialNamed(t, ca, r1.targets["tcp"], "dup", "new")
	r0.log.waitCount(t, "disconnected dup replaced", 1, 10*time.Second)
	waitPeers(t, 10*time.Second, []brpc.ClusterPeer{{ID: "dup", Replica: "r1"}}, rs...)
	for _, r := range rs {
		if err := reach(r, "dup", "new", 5*time.Second); err != nil {
			t.Errorf("%s: Client(dup): %v, want the newer session", r.name, err)
		}
	}
	// The older session's client stops instead of taking the ID back.
	ctx := testenv.Ctx(t)
	for old.GetState() != connectivity.Shutdown {
		if !old.WaitForStateChange(ctx, old.GetState()) {
			t.Fatalf("the replaced client is %v, want Shutdown", old.GetState())
		}
	}
	if n := r1.log.count("disconnected dup replaced"); n != 0 {
		t.Errorf("r1 closed the newer session as replaced too")
	}
	if got := records(t, etcdClient(t, etcd.endpoint()))["dup"]; got != "r1" {
		t.Errorf("etcd has dup on %q, want r1", got)
	}
}
