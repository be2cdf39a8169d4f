package clustertest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/brpc-go/brpc/internal/testenv"
)

// TestScale is the bounded scale run of docs/cluster.md ("Measured on
// etcd"): an etcd (with fsync) in the test process, three replicas in
// child processes, a fleet of 3,000 clients in another (half on QUIC,
// half on TCP, each dialed with every replica's endpoint), unary round trips from one
// replica to its own clients, to the others' and of plain grpc-go (in
// the replica's process and to another replica's), and
// then one replica killed with SIGKILL: the time until every client
// answers again from both survivors, and what the presence wrote to etcd
// all along. It runs only with BRPC_CLUSTER_SCALE=1 and stops by itself;
// BRPC_CLUSTER_SCALE_CLIENTS sets another fleet size, and
// BRPC_CLUSTER_SCALE_PROFILE a directory for CPU profiles of the forwarded
// bench.
func TestScale(t *testing.T) {
	if os.Getenv("BRPC_CLUSTER_SCALE") == "" {
		t.Skip("set BRPC_CLUSTER_SCALE=1 to run the scale run")
	}
	n := 3000
	if v := os.Getenv("BRPC_CLUSTER_SCALE_CLIENTS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			t.Fatal(err)
		}
	}
	const (
		ttl    = 5 * time.Second
		prefix = "f"
		// The clients' keepalive timeout: how long a QUIC client takes
		// to notice its replica is gone (a TCP client sees the
		// connection closed at once).
		keepalive = 6 * time.Second
	)
	logf := func(format string, args ...any) { t.Logf(format, args...) }
	logf("machine: %d cores, load average %s", runtime.NumCPU(), loadavg())
	etcd := startEtcdSync(t, true)
	cli := etcdClient(t, etcd.endpoint())
	ca := newCA(t)
	var rs []*remoteReplica
	for i := range 3 {
		rs = append(rs, startReplicaChild(t, ca, fmt.Sprintf("r%d", i), etcd.endpoint(), ttl))
	}
	targets := func(tr string) string {
		var l []map[string]string
		for _, r := range rs {
			l = append(l, r.targets)
		}
		return endpointList(tr, l...)
	}

	// The fleet connects.
	start := time.Now()
	fleet := testenv.StartChild(t, "fleet", map[string]string{
		"n": strconv.Itoa(n), "prefix": prefix, "quic": targets("quic"), "tcp": targets("tcp"), "ca": string(ca.CertPEM()),
		"keepalive": keepalive.String(),
	})
	dialed := time.Since(start)
	waitCluster(t, rs, n, 60*time.Second)
	logf("%d clients dialed (16 at a time) in %v (fleet: %s); every replica's cache had all %d %v after the first dial",
		n, dialed.Round(time.Millisecond), strings.Join(fleet.Ready, " "), n, time.Since(start).Round(time.Millisecond))
	connected := statsOf(t, rs)
	for _, r := range rs {
		logf("after connecting: %s %s (%s)", r.name, connected[r.name].String(), r.Do(t, "peers"))
	}
	logf("etcd: %d client records, revision %d", countKeys(t, cli, testPrefix+"/clients/"), revision(t, cli))

	// Steady state: an idle fleet writes nothing.
	const idle = 10 * time.Second
	rev0 := revision(t, cli)
	time.Sleep(idle)
	steady := statsOf(t, rs)
	for _, r := range rs {
		logf("steady state over %v: %s %s", idle, r.name, steady[r.name].minus(connected[r.name]).String())
	}
	logf("steady state over %v: etcd revision +%d", idle, revision(t, cli)-rev0)

	// Round trips from r0. Plain grpc-go twice: in r0's process, and to a
	// plain server in r1's (the hop a forwarded call adds, on plain
	// grpc-go).
	r0 := rs[0]
	plainAddr := rs[1].Do(t, "plainserve")
	// BRPC_CLUSTER_SCALE_PROFILE=DIR: each process's CPU profile of the
	// forwarded bench with one caller, in DIR/NAME.pprof.
	profileDir := os.Getenv("BRPC_CLUSTER_SCALE_PROFILE")
	procs := []namedChild{{rs[0].name, rs[0].Child}, {rs[1].name, rs[1].Child}, {rs[2].name, rs[2].Child}, {"fleet", fleet}}
	for _, callers := range []int{1, 64} {
		got := map[string]benchResult{}
		for _, mode := range []string{"plain", "plain-remote", "local", "forwarded"} {
			args := []string{mode, strconv.Itoa(callers), "3000"}
			if mode == "plain-remote" {
				args = append(args, plainAddr)
			}
			profile := profileDir != "" && callers == 1 && mode == "forwarded"
			if profile {
				for _, p := range procs {
					p.Do(t, "cpuprofile", filepath.Join(profileDir, p.name+".pprof"))
				}
			}
			before := usageOf(t, procs)
			out := r0.Do(t, "bench", args...)
			spent := usageOf(t, procs)
			if profile {
				for _, p := range procs {
					p.Do(t, "cpuprofile")
				}
			}
			b, err := parseBench(out)
			if err != nil {
				t.Fatalf("bench %s: %q: %v", mode, out, err)
			}
			got[mode] = b
			logf("bench from r0, %d callers, %s: %s", callers, mode, out)
			var per []string
			for i, p := range procs {
				d := spent[i].minus(before[i])
				per = append(per, fmt.Sprintf("%s cpu %.1f µs, %.2f voluntary + %.2f involuntary switches", p.name,
					float64(d.cpu.Nanoseconds())/1e3/float64(b.calls), float64(d.voluntary)/float64(b.calls), float64(d.involuntary)/float64(b.calls)))
			}
			logf("  per call (the warm-up's included): %s", strings.Join(per, "; "))
		}
		for _, plain := range []string{"plain", "plain-remote"} {
			bound := got["local"].p50 + got[plain].p50*3/2
			logf("%d callers: forwarded p50 %v, local p50 + 1.5 x %s p50 = %v: target met: %v",
				callers, got["forwarded"].p50, plain, bound, got["forwarded"].p50 <= bound)
		}
	}
	logf("load average after the benches %s", loadavg())

	// One replica killed.
	victim, survivors := rs[2], rs[:2]
	before := statsOf(t, survivors)
	rev1 := revision(t, cli)
	killed := time.Now()
	victim.Kill(t)
	results := make([]string, len(survivors))
	var wg sync.WaitGroup
	for i, r := range survivors {
		wg.Go(func() {
			results[i] = r.Do(t, "converge", prefix, strconv.Itoa(n), "50000", strconv.FormatInt(killed.UnixNano(), 10), victim.name)
		})
	}
	wg.Wait()
	logf("SIGKILL of %s (TTL %v, clients' keepalive timeout %v): load average %s", victim.name, ttl, keepalive, loadavg())
	for i, r := range survivors {
		logf("  every client answered %s: %s", r.name, results[i])
		if !strings.Contains(results[i], " left=0 ") || strings.Contains(results[i], "ms=-1 ") {
			t.Errorf("%s did not reach every client: %s", r.name, results[i])
		}
	}
	logf("  fleet: %s connected, %s moves", fleet.Do(t, "ready"), fleet.Do(t, "moves"))
	waitCluster(t, survivors, n, 30*time.Second)
	testenv.WaitFor(t, ttl+10*time.Second, victim.name+"'s lease to expire", func() bool {
		return countKeys(t, cli, testPrefix+"/replicas/"+victim.name) == 0
	})
	logf("  %s's replica record gone from etcd %v after SIGKILL", victim.name, time.Since(killed).Round(10*time.Millisecond))
	after := statsOf(t, survivors)
	for _, r := range survivors {
		logf("  presence writes for the move: %s %s", r.name, after[r.name].minus(before[r.name]).String())
	}
	logf("  etcd revision +%d; %d client records", revision(t, cli)-rev1, countKeys(t, cli, testPrefix+"/clients/"))
}

// waitCluster waits until every replica of rs has n clients in its cache.
func waitCluster(t *testing.T, rs []*remoteReplica, n int, within time.Duration) {
	t.Helper()
	want := fmt.Sprintf("cluster=%d", n)
	for _, r := range rs {
		testenv.WaitFor(t, within, r.name+" to have "+want, func() bool {
			return strings.HasSuffix(r.Do(t, "peers"), want)
		})
	}
}

// presenceStats is a replica's "stats" answer.
type presenceStats map[string]int64

var statsOrder = []string{"txns", "ops", "maxops", "errors", "downs", "snapshots", "events", "pending", "records"}

func (s presenceStats) String() string {
	var b strings.Builder
	for _, k := range statsOrder {
		fmt.Fprintf(&b, "%s=%d ", k, s[k])
	}
	return strings.TrimSpace(b.String())
}

// minus is the change from earlier for counters; gauges stay as they are.
func (s presenceStats) minus(earlier presenceStats) presenceStats {
	out := presenceStats{}
	for k, v := range s {
		switch k {
		case "maxops", "pending", "records":
			out[k] = v
		default:
			out[k] = v - earlier[k]
		}
	}
	return out
}

func statsOf(t *testing.T, rs []*remoteReplica) map[string]presenceStats {
	t.Helper()
	out := map[string]presenceStats{}
	for _, r := range rs {
		s := presenceStats{}
		for _, w := range strings.Fields(r.Do(t, "stats")) {
			k, v, _ := strings.Cut(w, "=")
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatalf("%s's stats %q: %v", r.name, w, err)
			}
			s[k] = n
		}
		out[r.name] = s
	}
	return out
}

func countKeys(t *testing.T, cli *clientv3.Client, prefix string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Count
}

func revision(t *testing.T, cli *clientv3.Client) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, "/", clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

type namedChild struct {
	name string
	*testenv.Child
}

// usageOf is each child's processUsage now.
func usageOf(t *testing.T, cs []namedChild) []processUsage {
	t.Helper()
	us := make([]processUsage, len(cs))
	for i, c := range cs {
		out := c.Do(t, "usage")
		u, err := parseUsage(out)
		if err != nil {
			t.Fatalf("usage of %s: %q: %v", c.name, out, err)
		}
		us[i] = u
	}
	return us
}
