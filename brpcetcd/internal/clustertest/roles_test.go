package clustertest

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/certs"
	"github.com/brpc-go/brpc/internal/testenv"
	"github.com/brpc-go/brpc/internal/testpb"
)

// replicaRole is the child role "replica": a replica (startReplica) named
// by the argument "name" on the etcd at "etcd", with the certificates of
// the arguments. Its ready words are quic=TARGET, tcp=TARGET and
// rep=ADDR. It answers:
//
//	reach ID ANSWERER                  a unary call to ID through Client(ID)
//	converge PREFIX N BUDGET_MS SINCE GONE
//	                                   waits until the cache has every client
//	                                   PREFIX%04d (i < N) on a replica other
//	                                   than GONE, calling the ones still on
//	                                   GONE meanwhile, then calls every client
//	                                   until each has answered once (those
//	                                   GONE held first); reports when the
//	                                   cache was complete, when the last of
//	                                   GONE's clients and the last of all
//	                                   answered (ms after SINCE, unix
//	                                   nanoseconds), and how the calls
//	                                   failed meanwhile
//	bench local|forwarded|plain CALLERS MS
//	                                   unary calls by CALLERS goroutines for
//	                                   MS: to this replica's clients, to the
//	                                   other replicas' or to a plain grpc-go
//	                                   server over TLS on loopback (caller i
//	                                   on client i mod N of a list that
//	                                   starts at a QUIC client, named by
//	                                   first=ID)
//	bench plain-remote CALLERS MS ADDR
//	                                   the same to the plain grpc-go server
//	                                   at ADDR (another process's plainserve)
//	plainserve                         starts a plain grpc-go server over TLS
//	                                   on loopback (once) and answers its
//	                                   address
//	stats                              the presence's Stats
//	peers                              local and cluster-wide client counts
//	usage                              the process's CPU time and context
//	                                   switches so far
//	cpuprofile [FILE]                  starts a CPU profile into FILE, or
//	                                   stops it
func replicaRole(c *testenv.ChildEnv) ([]string, error) {
	fc, err := certsFromArgs(c.Arg)
	if err != nil {
		return nil, err
	}
	ttl, err := time.ParseDuration(c.Arg("ttl"))
	if err != nil {
		return nil, fmt.Errorf("ttl: %v", err)
	}
	r, err := startReplica(replicaConf{name: c.Arg("name"), etcd: c.Arg("etcd"), ttl: ttl, certs: fc})
	if err != nil {
		return nil, err
	}
	c.Cleanup(func() { r.stop(false) })
	handleUsage(c)
	handleProfile(c)
	c.Handle("reach", func(args []string) (string, error) {
		if len(args) != 2 {
			return "", fmt.Errorf("reach takes an ID and the answerer's name")
		}
		return "", reach(r, args[0], args[1], 5*time.Second)
	})
	c.Handle("converge", func(args []string) (string, error) {
		if len(args) != 5 {
			return "", fmt.Errorf("converge takes a prefix, a count, a budget, a start and a replica")
		}
		n, err1 := strconv.Atoi(args[1])
		budget, err2 := strconv.Atoi(args[2])
		since, err3 := strconv.ParseInt(args[3], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil {
			return "", fmt.Errorf("converge %v: bad numbers", args)
		}
		return converge(r, fleetIDs(args[0], n), time.Duration(budget)*time.Millisecond, time.Unix(0, since), args[4]), nil
	})
	var plain *plainServer
	c.Cleanup(func() {
		if plain != nil {
			plain.stop()
		}
	})
	remotePlain := map[string]*grpc.ClientConn{} // plain-remote benches' connections, by address
	c.Cleanup(func() {
		for _, cc := range remotePlain {
			cc.Close()
		}
	})
	var served *plainServer
	c.Cleanup(func() {
		if served != nil {
			served.stop()
		}
	})
	c.Handle("plainserve", func([]string) (string, error) {
		if served == nil {
			if served, err = servePlain(fc); err != nil {
				return "", err
			}
		}
		return served.addr, nil
	})
	c.Handle("bench", func(args []string) (string, error) {
		if len(args) != 3 && !(len(args) == 4 && args[0] == "plain-remote") {
			return "", fmt.Errorf("bench takes a mode, a caller count and a duration")
		}
		callers, err1 := strconv.Atoi(args[1])
		ms, err2 := strconv.Atoi(args[2])
		if err1 != nil || err2 != nil || callers < 1 {
			return "", fmt.Errorf("bench %v: bad numbers", args)
		}
		var stubs []testpb.EchoClient
		var ids []string
		switch args[0] {
		case "local":
			for _, p := range r.srv.Peers() {
				ids = append(ids, p.ID)
			}
		case "forwarded":
			for _, p := range r.srv.ClusterPeers() {
				if p.Replica != r.name {
					ids = append(ids, p.ID)
				}
			}
		case "plain":
			if plain == nil {
				if plain, err = startPlain(fc); err != nil {
					return "", err
				}
			}
			stubs = []testpb.EchoClient{plain.stub}
		case "plain-remote":
			// The server is another process's plainserve: the hop a
			// forwarded call adds, on plain grpc-go.
			if len(args) != 4 {
				return "", fmt.Errorf("bench plain-remote takes the server's address too")
			}
			cc := remotePlain[args[3]]
			if cc == nil {
				if cc, _, err = dialPlain(fc, args[3]); err != nil {
					return "", err
				}
				remotePlain[args[3]] = cc
			}
			stubs = []testpb.EchoClient{testpb.NewEchoClient(cc)}
		default:
			return "", fmt.Errorf("bench mode %q", args[0])
		}
		first := ""
		if ids != nil {
			// The list starts at a QUIC client, so that one caller calls a
			// client of the same transport locally and forwarded.
			for k, id := range ids {
				if i, ok := fleetIndex(id); ok && fleetTransport(i) == "quic" {
					ids = slices.Concat(ids[k:], ids[:k])
					break
				}
			}
			for _, id := range ids {
				stubs = append(stubs, must(r.srv.Client(id)))
			}
			first = " first=" + ids[0]
		}
		if len(stubs) == 0 {
			return "", fmt.Errorf("no clients to bench %s", args[0])
		}
		return bench(stubs, callers, time.Duration(ms)*time.Millisecond).String() + first, nil
	})
	c.Handle("stats", func([]string) (string, error) {
		s := r.presence.Stats()
		return fmt.Sprintf("txns=%d ops=%d maxops=%d errors=%d downs=%d snapshots=%d events=%d pending=%d records=%d",
			s.Txns, s.Ops, s.MaxTxnOps, s.Errors, s.Downs, s.Snapshots, s.Events, s.Pending, s.Records), nil
	})
	c.Handle("peers", func([]string) (string, error) {
		return fmt.Sprintf("local=%d cluster=%d", len(r.srv.Peers()), len(r.srv.ClusterPeers())), nil
	})
	return []string{"quic=" + r.targets["quic"], "tcp=" + r.targets["tcp"], "rep=" + r.repAddr}, nil
}

// must returns v, for a stub of a client just listed: a lookup that fails
// yields a stub whose calls fail, which the caller counts.
func must(v testpb.EchoClient, err error) testpb.EchoClient {
	if err != nil {
		return failingStub{err}
	}
	return v
}

type failingStub struct{ err error }

func (f failingStub) Unary(context.Context, *testpb.EchoRequest, ...grpc.CallOption) (*testpb.EchoResponse, error) {
	return nil, f.err
}
func (f failingStub) ServerStream(context.Context, *testpb.EchoRequest, ...grpc.CallOption) (grpc.ServerStreamingClient[testpb.EchoResponse], error) {
	return nil, f.err
}
func (f failingStub) ClientStream(context.Context, ...grpc.CallOption) (grpc.ClientStreamingClient[testpb.EchoRequest, testpb.EchoResponse], error) {
	return nil, f.err
}
func (f failingStub) BidiStream(context.Context, ...grpc.CallOption) (grpc.BidiStreamingClient[testpb.EchoRequest, testpb.EchoResponse], error) {
	return nil, f.err
}

// fleetIDs are the IDs of a fleet's n clients.
func fleetIDs(prefix string, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s%04d", prefix, i)
	}
	return ids
}

// fleetIndex is the index fleetIDs gave id: its digits after the prefix.
func fleetIndex(id string) (int, bool) {
	n, err := strconv.Atoi(strings.TrimLeftFunc(id, unicode.IsLetter))
	return n, err == nil
}

// fleetTransport is the transport fleet client i dials: every other
// client QUIC, the rest TCP.
func fleetTransport(i int) string { return testenv.Transports[i%2] }

// converge waits until r's cache has each of ids on a replica other than
// gone, making calls meanwhile to the ids it still has on gone, then
// calls each of ids (whose echo service answers under its ID), 64 at a
// time, round after round, until each has answered once or budget has
// passed.
func converge(r *replica, ids []string, budget time.Duration, since time.Time, gone string) string {
	deadline := time.Now().Add(budget)
	var (
		mu      sync.Mutex
		phase   = 1
		codes   = [3]map[string]int{nil, {}, {}} // by phase
		slowest time.Duration
	)
	call := func(id string) error {
		start := time.Now()
		err := reach(r, id, id, time.Second)
		took := time.Since(start)
		mu.Lock()
		defer mu.Unlock()
		slowest = max(slowest, took)
		codes[phase][status.Code(err).String()]++
		return err
	}
	want := map[string]bool{}
	index := map[string]int{}
	for i, id := range ids {
		want[id] = true
		index[id] = i
	}
	var movedBy [2]time.Time // when the cache had no QUIC (TCP) client left on gone
	// The clients the lost replica held, as the cache has them at first.
	moved := map[string]bool{}
	for _, p := range r.srv.ClusterPeers() {
		if want[p.ID] && p.Replica == gone {
			moved[p.ID] = true
		}
	}
	// Phase 1: the cache.
	var cached time.Time
	for time.Now().Before(deadline) {
		var onGone []string
		held := 0
		var byTransport [2]int // clients still on gone, QUIC (even) and TCP (odd)
		for _, p := range r.srv.ClusterPeers() {
			if !want[p.ID] {
				continue
			}
			if p.Replica == gone {
				onGone = append(onGone, p.ID)
				byTransport[index[p.ID]%2]++
			} else {
				held++
			}
		}
		for tr, k := range byTransport {
			if k == 0 && movedBy[tr].IsZero() {
				movedBy[tr] = time.Now()
			}
		}
		if held == len(ids) {
			cached = time.Now()
			break
		}
		// A few calls to the clients still recorded on the lost replica:
		// they must fail, and fast.
		// (An OK is a client that moved between the look and the call.)
		for i, id := range onGone {
			if i == 8 {
				break
			}
			call(id)
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	phase = 2
	mu.Unlock()
	// Phase 2: calls, to the clients that moved first.
	left := make([]string, 0, len(ids))
	for _, id := range ids {
		if moved[id] {
			left = append(left, id)
		}
	}
	for _, id := range ids {
		if !moved[id] {
			left = append(left, id)
		}
	}
	var last, lastMoved time.Time
	rounds := 0
	for len(left) > 0 && time.Now().Before(deadline) {
		rounds++
		var next []string
		jobs := make(chan string)
		var wg sync.WaitGroup
		for range 64 {
			wg.Go(func() {
				for id := range jobs {
					err := call(id)
					mu.Lock()
					if err != nil {
						next = append(next, id)
					} else {
						now := time.Now()
						last = later(last, now)
						if moved[id] {
							lastMoved = later(lastMoved, now)
						}
					}
					mu.Unlock()
				}
			})
		}
		for _, id := range left {
			jobs <- id
		}
		close(jobs)
		wg.Wait()
		left = next
		if len(left) > 0 {
			// The next round once the clients have had a moment to move.
			time.Sleep(20 * time.Millisecond)
		}
	}
	outcomes := func(m map[string]int) string {
		var l []string
		for c, n := range m {
			l = append(l, fmt.Sprintf("%s:%d", c, n))
		}
		slices.Sort(l)
		return strings.Join(l, ",")
	}
	ms := func(at time.Time) int64 {
		if at.IsZero() {
			return -1
		}
		return at.Sub(since).Milliseconds()
	}
	return fmt.Sprintf("moved=%d quic_cached_ms=%d tcp_cached_ms=%d cache_ms=%d moved_ms=%d all_ms=%d rounds=%d left=%d slowest_ms=%d calls_while_listed=%s calls_after=%s",
		len(moved), ms(movedBy[0]), ms(movedBy[1]), ms(cached), ms(lastMoved), ms(last), rounds, len(left), slowest.Milliseconds(), outcomes(codes[1]), outcomes(codes[2]))
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// benchResult is what a bench run measured.
type benchResult struct {
	p50, p99 time.Duration
	calls    int
	errors   int
	rate     float64 // calls per second
}

func (b benchResult) String() string {
	return fmt.Sprintf("p50_us=%d p99_us=%d calls=%d errors=%d rate=%.0f",
		b.p50.Microseconds(), b.p99.Microseconds(), b.calls, b.errors, b.rate)
}

// bench runs unary calls on stubs (caller i on stub i mod len) from
// callers goroutines for d, after a warm-up of a tenth of d.
func bench(stubs []testpb.EchoClient, callers int, d time.Duration) benchResult {
	warm := time.Now().Add(d / 10)
	end := warm.Add(d)
	lat := make([][]time.Duration, callers)
	errs := make([]int, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stub := stubs[i%len(stubs)]
			req := &testpb.EchoRequest{Message: "b"}
			for {
				start := time.Now()
				if start.After(end) {
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err := stub.Unary(ctx, req)
				cancel()
				if start.Before(warm) {
					continue
				}
				if err != nil {
					errs[i]++
					continue
				}
				lat[i] = append(lat[i], time.Since(start))
			}
		}()
	}
	wg.Wait()
	all := slices.Concat(lat...)
	slices.Sort(all)
	res := benchResult{calls: len(all)}
	for _, e := range errs {
		res.errors += e
	}
	if len(all) > 0 {
		res.p50, res.p99 = all[len(all)/2], all[len(all)*99/100]
	}
	res.rate = float64(res.calls) / d.Seconds()
	return res
}

func parseBench(s string) (benchResult, error) {
	var b benchResult
	var p50, p99 int64
	_, err := fmt.Sscanf(s, "p50_us=%d p99_us=%d calls=%d errors=%d rate=%f", &p50, &p99, &b.calls, &b.errors, &b.rate)
	b.p50, b.p99 = time.Duration(p50)*time.Microsecond, time.Duration(p99)*time.Microsecond
	return b, err
}

// plainServer is a plain grpc-go echo server over TLS on loopback and one
// client of it: the baseline a forwarded call is compared with.
type plainServer struct {
	gs   *grpc.Server
	addr string
	cc   *grpc.ClientConn
	stub testpb.EchoClient
}

func startPlain(fc fleetCerts) (*plainServer, error) {
	p, err := servePlain(fc)
	if err != nil {
		return nil, err
	}
	if p.cc, p.stub, err = dialPlain(fc, p.addr); err != nil {
		p.gs.Stop()
		return nil, err
	}
	return p, nil
}

// servePlain starts a plain grpc-go echo server over TLS on loopback,
// without a client of its own: the other end of another process's
// "plain-remote" bench.
func servePlain(fc fleetCerts) (*plainServer, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{fc.server}})))
	testpb.RegisterEchoServer(gs, &testenv.Echo{Name: "plain"})
	go gs.Serve(lis)
	return &plainServer{gs: gs, addr: lis.Addr().String()}, nil
}

// dialPlain is a plain grpc-go client of the echo server at addr.
func dialPlain(fc fleetCerts, addr string) (*grpc.ClientConn, testpb.EchoClient, error) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: fc.pool})))
	if err != nil {
		return nil, nil, err
	}
	return cc, testpb.NewEchoClient(cc), nil
}

func (p *plainServer) stop() {
	if p.cc != nil {
		p.cc.Close()
	}
	p.gs.Stop()
}

// remoteReplica is a replica in a child process (replicaRole).
type remoteReplica struct {
	*testenv.Child
	name    string
	targets map[string]string
	repAddr string
}

// startReplicaChild starts a replica named name in a child process, on
// the etcd at endpoint, with certificates of ca.
func startReplicaChild(t testing.TB, ca *certs.CA, name, endpoint string, ttl time.Duration) *remoteReplica {
	t.Helper()
	fc, err := issueCerts(ca, name)
	if err != nil {
		t.Fatal(err)
	}
	args := map[string]string{"name": name, "etcd": endpoint, "ttl": ttl.String()}
	if err := fc.args(args); err != nil {
		t.Fatal(err)
	}
	c := testenv.StartChild(t, "replica", args)
	rr := &remoteReplica{Child: c, name: name, targets: map[string]string{}}
	for _, w := range c.Ready {
		k, v, _ := strings.Cut(w, "=")
		if k == "rep" {
			rr.repAddr = v
		} else {
			rr.targets[k] = v
		}
	}
	if rr.targets["quic"] == "" || rr.targets["tcp"] == "" || rr.repAddr == "" {
		t.Fatalf("replica child %s reported %q", name, c.Ready)
	}
	return rr
}

// fleetRole is the child role "fleet": "n" clients named PREFIX%04d
// ("prefix"), client i on transport i mod 2, each dialed with the target
// "quic" or "tcp" (every replica's endpoint of that transport, so that
// brpc's Dial picks one at random and moves on when it fails), trusting
// the PEM CA "ca", with the keepalive timeout "keepalive" (probes every
// third of it). Its ready words are dial_ms=D, the time all took to
// connect. It answers "ready" (how many are connected now), "moves"
// (how many are connected to another server than the one they first
// were), "usage" and "cpuprofile" (as a replica does).
func fleetRole(c *testenv.ChildEnv) ([]string, error) {
	n, err := strconv.Atoi(c.Arg("n"))
	if err != nil {
		return nil, fmt.Errorf("n: %v", err)
	}
	pool, err := certsPool(c.Arg("ca"))
	if err != nil {
		return nil, err
	}
	keepalive, err := time.ParseDuration(c.Arg("keepalive"))
	if err != nil {
		return nil, fmt.Errorf("keepalive: %v", err)
	}
	ids := fleetIDs(c.Arg("prefix"), n)
	handleUsage(c)
	handleProfile(c)
	type member struct {
		cc    *brpc.ClientConn
		gs    *grpc.Server
		first string // the server it first connected to
	}
	fleet := make([]member, n)
	c.Cleanup(func() {
		var wg sync.WaitGroup
		for _, m := range fleet {
			if m.cc != nil {
				wg.Go(func() {
					m.cc.Close()
					m.gs.Stop()
				})
			}
		}
		wg.Wait()
	})
	server := func(cc *brpc.ClientConn) string {
		if p, ok := cc.ServerPeer(); ok {
			return p.RemoteAddr.String()
		}
		return ""
	}
	start := time.Now()
	jobs := make(chan int)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := range jobs {
				gs := grpc.NewServer()
				testpb.RegisterEchoServer(gs, &testenv.Echo{Name: ids[i]})
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				cc, err := brpc.Dial(ctx, c.Arg(fleetTransport(i)),
					brpc.WithTLSConfig(&tls.Config{RootCAs: pool}), brpc.WithServer(gs), brpc.WithMetadata(metadata.Pairs("name", ids[i])),
					brpc.WithKeepalive(keepalive/3, keepalive),
					brpc.WithConnectBackoff(backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second}))
				cancel()
				if err != nil {
					gs.Stop()
					errs <- fmt.Errorf("%s: %v", ids[i], err)
					continue
				}
				fleet[i] = member{cc: cc, gs: gs, first: server(cc)}
			}
		})
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	took := time.Since(start)
	c.Handle("ready", func([]string) (string, error) {
		k := 0
		for _, m := range fleet {
			if m.cc.GetState() == connectivity.Ready {
				k++
			}
		}
		return strconv.Itoa(k), nil
	})
	c.Handle("moves", func([]string) (string, error) {
		k := 0
		for _, m := range fleet {
			if now := server(m.cc); now != "" && now != m.first {
				k++
			}
		}
		return strconv.Itoa(k), nil
	})
	return []string{fmt.Sprintf("dial_ms=%d", took.Milliseconds())}, nil
}
