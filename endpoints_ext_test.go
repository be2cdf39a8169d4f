package brpc_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/certs"
	"github.com/brpc-go/brpc/internal/testenv"
	"github.com/brpc-go/brpc/internal/testpb"
)

// passedOver is what a client logs for each endpoint it moves on from.
const passedOver = "brpc: endpoint passed over"

// replica is one of several brpc servers a client may reach.
type replica struct {
	*testenv.Serving
	addr    string
	welcome atomic.Int64 // clients its authenticator admitted
}

// replicaSet is several brpc servers on one transport whose certificates
// one CA signs, so that one client tls.Config trusts them all.
type replicaSet struct {
	t        *testing.T
	ca       *certs.CA
	tr       string
	replicas []*replica
}

func newReplicaSet(t *testing.T, tr string) *replicaSet {
	t.Helper()
	ca, err := certs.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	return &replicaSet{t: t, ca: ca, tr: tr}
}

// start adds a replica listening on host (127.0.0.1 when empty) with a
// certificate for certNames (besides the loopback names) and serverOpts; its
// authenticator runs auth (nil: admit under a fresh ID) and counts the
// clients it admits.
func (rs *replicaSet) start(host string, certNames []string, auth brpc.Authenticator, serverOpts ...brpc.ServerOption) *replica {
	rs.t.Helper()
	if host == "" {
		host = "127.0.0.1"
	}
	cert, err := rs.ca.Server(certNames...)
	if err != nil {
		rs.t.Fatal(err)
	}
	r := &replica{}
	name := fmt.Sprintf("replica%d", len(rs.replicas))
	authenticate := func(ctx context.Context, info brpc.AuthInfo) (string, error) {
		id := fmt.Sprintf("%s-client%d", name, r.welcome.Load()+1)
		if auth != nil {
			var err error
			if id, err = auth(ctx, info); err != nil {
				return "", err
			}
		}
		r.welcome.Add(1)
		return id, nil
	}
	opts := append([]brpc.ServerOption{brpc.WithAuthenticator(authenticate)}, serverOpts...)
	s, err := testenv.StartServing(rs.tr, net.JoinHostPort(host, "0"), &tls.Config{Certificates: []tls.Certificate{cert}},
		&testenv.Echo{Name: name}, nil, opts)
	if err != nil {
		rs.t.Fatal(err)
	}
	r.Serving, r.addr = s, s.Lis.Addr().String()
	rs.t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			rs.t.Errorf("%s: Serve returned %v after Stop, want nil", name, err)
		}
	})
	rs.replicas = append(rs.replicas, r)
	return r
}

// startDown adds a replica that is stopped at once: its address answers
// nothing any more.
func (rs *replicaSet) startDown() *replica {
	rs.t.Helper()
	r := rs.start("", nil, nil)
	if err := r.Stop(); err != nil {
		rs.t.Fatal(err)
	}
	return r
}

// target lists addrs after rs's scheme.
func (rs *replicaSet) target(addrs ...string) string {
	return rs.tr + "://" + strings.Join(addrs, ",")
}

// dial connects a client, logging into logs, to target within d.
func (rs *replicaSet) dial(target string, d time.Duration, logs *logBuffer, opts ...brpc.DialOption) (*brpc.ClientConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	opts = append([]brpc.DialOption{
		brpc.WithTLSConfig(rs.ca.ClientTLS()),
		brpc.WithLogger(slog.New(slog.NewJSONHandler(logs, nil))),
	}, opts...)
	return brpc.Dial(ctx, target, opts...)
}

// holder is the replica that lists client id among its peers, or nil.
func (rs *replicaSet) holder(id string) *replica {
	for _, r := range rs.replicas {
		if _, err := r.Srv.Client(id); err == nil {
			return r
		}
	}
	return nil
}

// count is how many records of logs have message msg.
func (b *logBuffer) count(t *testing.T, msg string) int {
	n := 0
	for _, r := range b.records(t) {
		if r["msg"] == msg {
			n++
		}
	}
	return n
}

func TestDialRejectsMalformedEndpointLists(t *testing.T) {
	ca, err := certs.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{
		"quic://127.0.0.1:1,",
		",127.0.0.1:1",
		"127.0.0.1:1,,127.0.0.1:2",
		"quic://127.0.0.1:1,tcp://127.0.0.1:2",
		"127.0.0.1:1,quic://127.0.0.1:2",
		"tcp://127.0.0.1:1,127.0.0.1",
		"quic://",
	} {
		_, err := brpc.Dial(testenv.Ctx(t), target, brpc.WithTLSConfig(ca.ClientTLS()))
		testenv.WantCode(t, err, codes.InvalidArgument, "Dial("+target+")")
	}
}

func TestDialPassesOverEndpointsThatAreDown(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		rs := newReplicaSet(t, tr)
		down1, down2 := rs.startDown(), rs.startDown()
		live := rs.start("", nil, nil)
		target := rs.target(down1.addr, down2.addr, live.addr)
		// The first endpoint tried is a random one: dial until a dial
		// has started at a dead one (two in three do).
		var logs logBuffer
		for i := 0; logs.count(t, passedOver) == 0; i++ {
			if i == 20 {
				t.Fatal("20 dials never tried an endpoint that is down before the live one")
			}
			// A stopped QUIC server answers nothing: each endpoint that
			// is down costs its share of the deadline, a third of it at
			// first, which leaves the live one time whatever the order.
			cc, err := rs.dial(target, 6*time.Second, &logs)
			if err != nil {
				t.Fatalf("Dial(%s) with one endpoint of three up: %v", target, err)
			}
			if h := rs.holder(cc.ID()); h != live {
				t.Errorf("client %q connected to %v, want the live endpoint %s", cc.ID(), h, live.addr)
			}
			cc.Close()
		}
	})
}

func TestReconnectMovesToAnotherEndpointWhenTheServerStops(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		rs := newReplicaSet(t, tr)
		for range 3 {
			rs.start("", nil, nil)
		}
		var logs logBuffer
		cc, err := rs.dial(rs.target(rs.replicas[0].addr, rs.replicas[1].addr, rs.replicas[2].addr), 10*time.Second, &logs)
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		first := rs.holder(cc.ID())
		if first == nil {
			t.Fatalf("no replica holds client %q", cc.ID())
		}
		stopped := time.Now()
		first.Srv.GracefulStop()
		testenv.WaitFor(t, 15*time.Second, "the client to reconnect to another replica", func() bool {
			h := rs.holder(cc.ID())
			return h != nil && h != first
		})
		t.Logf("reconnected to another replica %v after GracefulStop began", time.Since(stopped).Round(time.Millisecond))
		// The client's calls go to its new server.
		stub := testpb.NewEchoClient(cc)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := stub.Unary(ctx, &testpb.EchoRequest{Message: "hi"}); err != nil {
			t.Fatalf("a call after the reconnect: %v", err)
		}
		// The stopped replica's endpoint was the last to try: the
		// reconnect reached a live one at its first attempt.
		if n := logs.count(t, passedOver); n != 0 {
			t.Errorf("the reconnect passed over %d endpoints, want 0 (the stopped one is tried last)", n)
		}
	})
}

func TestDialPassesOverAFullServer(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		rs := newReplicaSet(t, tr)
		full := rs.start("", nil, nil, brpc.WithMaxClients(1))
		var logs logBuffer
		holder, err := rs.dial(rs.target(full.addr), 10*time.Second, &logs)
		if err != nil {
			t.Fatal(err)
		}
		defer holder.Close()
		free := rs.start("", nil, nil)
		target := rs.target(full.addr, free.addr)
		for i := 0; logs.count(t, passedOver) == 0; i++ {
			if i == 20 {
				t.Fatal("20 dials never tried the full server first")
			}
			cc, err := rs.dial(target, 10*time.Second, &logs)
			if err != nil {
				t.Fatalf("Dial(%s) with one of two servers full: %v", target, err)
			}
			if h := rs.holder(cc.ID()); h != free {
				t.Errorf("client %q connected to %v, want the server with room", cc.ID(), h)
			}
			cc.Close()
		}
		if r := logs.find(t, passedOver); r == nil || r["endpoint"] != full.addr || !strings.Contains(fmt.Sprint(r["error"]), "full") {
			t.Errorf("the endpoint passed over: %v, want the full server's with its refusal", r)
		}

		// When every endpoint is full, Dial says so.
		full2 := rs.start("", nil, nil, brpc.WithMaxClients(1))
		holder2, err := rs.dial(rs.target(full2.addr), 10*time.Second, &logs)
		if err != nil {
			t.Fatal(err)
		}
		defer holder2.Close()
		_, err = rs.dial(rs.target(full.addr, full2.addr), 10*time.Second, &logs)
		testenv.WantCode(t, err, codes.ResourceExhausted, "Dial with every server full")
	})
}

func TestDialStopsAtARefusalOtherThanUnavailable(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		rs := newReplicaSet(t, tr)
		refusing := rs.start("", nil, func(context.Context, brpc.AuthInfo) (string, error) {
			return "", status.Error(codes.PermissionDenied, "not on this replica")
		})
		admitting := rs.start("", nil, nil)
		target := rs.target(refusing.addr, admitting.addr)
		var logs logBuffer
		for i, refused := 0, false; !refused; i++ {
			if i == 20 {
				t.Fatal("20 dials never tried the refusing server first")
			}
			before := admitting.welcome.Load()
			cc, err := rs.dial(target, 10*time.Second, &logs)
			if err == nil {
				// This dial started at the admitting server.
				cc.Close()
				continue
			}
			refused = true
			testenv.WantCode(t, err, codes.PermissionDenied, "Dial refused by the first server tried")
			if !strings.Contains(err.Error(), "not on this replica") {
				t.Errorf("Dial's error %q does not carry the authenticator's message", err)
			}
			if n := admitting.welcome.Load(); n != before {
				t.Errorf("after a PermissionDenied the other server admitted %d clients, want none tried", n-before)
			}
		}
		if n := logs.count(t, passedOver); n != 0 {
			t.Errorf("%d endpoints passed over, want none: a PermissionDenied ends the attempt", n)
		}
	})
}

func TestDialStartsAtARandomEndpoint(t *testing.T) {
	for _, tr := range []string{"quic", "tcp", "bare"} {
		t.Run(tr, func(t *testing.T) {
			transport := tr
			if tr == "bare" {
				transport = "quic"
			}
			rs := newReplicaSet(t, transport)
			var addrs []string
			for range 3 {
				addrs = append(addrs, rs.start("", nil, nil).addr)
			}
			target := rs.target(addrs...)
			if tr == "bare" {
				target = strings.Join(addrs, ",")
			}
			var logs logBuffer
			for range 40 {
				cc, err := rs.dial(target, 10*time.Second, &logs)
				if err != nil {
					t.Fatalf("Dial(%s): %v", target, err)
				}
				cc.Close()
			}
			used := 0
			for _, r := range rs.replicas {
				if r.welcome.Load() > 0 {
					used++
				}
			}
			if used < 2 {
				t.Errorf("40 dials on %s all reached one endpoint, want a random start", target)
			}
		})
	}
}

func TestDialVerifiesEachEndpointForItsOwnHost(t *testing.T) {
	// Linux routes all of 127.0.0.0/8 to the loopback interface; other
	// systems may have 127.0.0.1 alone.
	if pc, err := net.ListenPacket("udp", "127.0.0.2:0"); err != nil {
		t.Skipf("no second loopback address here: %v", err)
	} else {
		pc.Close()
	}
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		rs := newReplicaSet(t, tr)
		// Both certificates hold 127.0.0.1; only the second's holds
		// 127.0.0.2, so that endpoint verifies only under its own name.
		one := rs.start("127.0.0.1", nil, nil)
		two := rs.start("127.0.0.2", []string{"127.0.0.2"}, nil)
		target := rs.target(two.addr, one.addr)
		var logs logBuffer
		for i := 0; one.welcome.Load() == 0 || two.welcome.Load() == 0; i++ {
			if i == 20 {
				t.Fatalf("after 20 dials the endpoints admitted %d and %d clients, want both some", one.welcome.Load(), two.welcome.Load())
			}
			cc, err := rs.dial(target, 10*time.Second, &logs)
			if err != nil {
				t.Fatalf("Dial(%s): %v", target, err)
			}
			cc.Close()
		}
		if n := logs.count(t, passedOver); n != 0 {
			t.Errorf("%d endpoints passed over, want every first pick verified for its own host: %v", n, logs.find(t, passedOver))
		}
	})
}

func TestDialToEndpointsThatAllBlackholeEndsWithCtx(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		rs := newReplicaSet(t, tr)
		var addrs []string
		for range 3 {
			r := rs.start("", nil, nil)
			if tr == "tcp" {
				relay := testenv.NewTCPRelay(t, r.addr)
				relay.Blackhole()
				addrs = append(addrs, relay.Addr())
			} else {
				relay := testenv.NewUDPRelay(t, r.addr, testenv.Faults{}, 1)
				relay.Blackhole()
				addrs = append(addrs, relay.Addr())
			}
		}
		var logs logBuffer
		start := time.Now()
		_, err := rs.dial(rs.target(addrs...), 900*time.Millisecond, &logs)
		took := time.Since(start)
		testenv.WantCode(t, err, codes.DeadlineExceeded, "Dial to three blackholed endpoints")
		if took > 5*time.Second {
			t.Errorf("Dial with a 900ms deadline took %v", took)
		}
		// Each endpoint had its share of the deadline: the first two were
		// passed over, the last one ran into the deadline itself.
		if n := logs.count(t, passedOver); n != 2 {
			t.Errorf("%d endpoints passed over, want 2: each gets a share of ctx", n)
		}
		for _, r := range rs.replicas {
			if n := r.welcome.Load(); n != 0 {
				t.Errorf("a replica behind a blackhole admitted %d clients", n)
			}
		}
	})
}

func TestReconnectTriesTheEndpointWhoseSessionEndedLast(t *testing.T) {
	// Each replica behind a TCP relay: cutting a relay ends the client's
	// session while its endpoint stays up and would welcome the client.
	rs := newReplicaSet(t, "tcp")
	relays := map[string]*testenv.TCPRelay{}
	var addrs []string
	for range 3 {
		r := rs.start("", nil, nil)
		relay := testenv.NewTCPRelay(t, r.addr)
		relays[r.addr] = relay
		addrs = append(addrs, relay.Addr())
	}
	var logs logBuffer
	cc, err := rs.dial(rs.target(addrs...), 10*time.Second, &logs)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	// Without that rule a reconnect would land on the same replica one
	// time in three; eight in a row elsewhere is not luck.
	for range 8 {
		id := cc.ID()
		h := rs.holder(id)
		if h == nil {
			t.Fatalf("no replica holds client %q", id)
		}
		relays[h.addr].Cut()
		testenv.WaitFor(t, 15*time.Second, "the client to reconnect", func() bool {
			return cc.ID() != id && rs.holder(cc.ID()) != nil
		})
		if now := rs.holder(cc.ID()); now == h {
			t.Fatalf("after its session with %s was cut the client reconnected to it first, want the other endpoints tried before it", h.addr)
		}
	}
}
