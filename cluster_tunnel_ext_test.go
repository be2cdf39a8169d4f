package brpc_test

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/certs"
	"github.com/brpc-go/brpc/internal/testenv"
	"github.com/brpc-go/brpc/internal/testpb"
)

// askTunnel opens a link to a replica listener as a replica would, with
// certs, asks it for a tunnel to the client id and returns the answer's
// first byte and, for a refusal, its gRPC code.
func askTunnel(t *testing.T, addr string, ca *certs.CA, certs []tls.Certificate, id string) (byte, codes.Code) {
	t.Helper()
	conf := &tls.Config{RootCAs: ca.Pool, Certificates: certs, NextProtos: []string{"brpc-replica-tunnel/1"}, ServerName: "127.0.0.1"}
	tc, err := tls.Dial("tcp", addr, conf)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	if p := tc.ConnectionState().NegotiatedProtocol; p != "brpc-replica-tunnel/1" {
		t.Fatalf("the replica listener negotiated %q", p)
	}
	yconf := yamux.DefaultConfig()
	yconf.LogOutput = io.Discard
	sess, err := yamux.Client(tc, yconf)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	s, err := sess.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	s.SetDeadline(time.Now().Add(10 * time.Second))
	req := append([]byte{1, 0, 0}, id...)
	binary.BigEndian.PutUint16(req[1:], uint16(len(id)))
	if _, err := s.Write(req); err != nil {
		t.Fatal(err)
	}
	var ans [2]byte
	if _, err := io.ReadFull(s, ans[:1]); err != nil {
		t.Fatalf("reading the tunnel answer: %v", err)
	}
	if ans[0] != 2 {
		return ans[0], codes.OK
	}
	if _, err := io.ReadFull(s, ans[1:]); err != nil {
		t.Fatal(err)
	}
	return ans[0], codes.Code(ans[1])
}

// Only replicas get tunnels: a peer without a certificate, or with one
// IsReplica refuses, is answered with the refusal's code and reaches no
// client.
func TestClusterTunnelRefusesNonReplicas(t *testing.T) {
	tc := newTestCluster(t, 1, brpc.NewMemoryPresence(), func(c *brpc.ClusterConfig) { c.IsReplica = replicaByName })
	tc.connect(tc.nodes[0], "quic", "c0", "echo-c0")
	tc.waitPeers([]brpc.ClusterPeer{{ID: "c0", Replica: "r0"}})
	r0 := tc.nodes[0]
	issue := func(name string, replica bool) []tls.Certificate {
		var c tls.Certificate
		var err error
		if replica {
			c, err = tc.ca.Replica(name)
		} else {
			c, err = tc.ca.Client(name)
		}
		if err != nil {
			t.Fatal(err)
		}
		return []tls.Certificate{c}
	}
	for _, c := range []struct {
		name   string
		certs  []tls.Certificate
		id     string
		answer byte
		code   codes.Code
	}{
		{"no certificate", nil, "c0", 2, codes.Unauthenticated},
		{"a device's certificate", issue("device-1", false), "c0", 2, codes.PermissionDenied},
		{"a replica's certificate, a client elsewhere", issue("r9", true), "nobody", 1, codes.OK},
		{"a replica's certificate", issue("r9", true), "c0", 0, codes.OK},
	} {
		t.Run(c.name, func(t *testing.T) {
			answer, code := askTunnel(t, r0.repAddr, tc.ca, c.certs, c.id)
			if answer != c.answer || code != c.code {
				t.Fatalf("tunnel answer %d (code %v), want %d (%v)", answer, code, c.answer, c.code)
			}
		})
	}
	// The granted tunnel closed with its link.
	testenv.WaitFor(t, 5*time.Second, "r0's tunnels to close", func() bool { return brpc.ClusterTunnels(r0.srv) == 0 })
}

// Calls forwarded to a replica that stops gracefully finish; the tunnel
// they run on closes once they have, before the replica closes its
// client's session.
func TestClusterGracefulStopFinishesForwardedCalls(t *testing.T) {
	r1, done := slowForwardedCall(t, "tcp", 300)
	r1.shutdown(t, true)
	if err := <-done; err != nil {
		t.Fatalf("a call forwarded to a replica stopping gracefully: %v", err)
	}
}

// A call in flight on a tunnel that dies (its replica stops at once)
// fails with Unavailable, as a call on a local session that ends does.
func TestClusterTunnelDiesMidCall(t *testing.T) {
	r1, done := slowForwardedCall(t, "quic", 20000)
	start := time.Now()
	r1.shutdown(t, false)
	testenv.WantCode(t, <-done, codes.Unavailable, "a call whose tunnel died")
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the call took %v to fail", d)
	}
}

// A tunnel that carried no call for the reverse idle time is closed; the
// next call opens a new one.
func TestClusterTunnelReleasedWhenIdle(t *testing.T) {
	tc := newTestClusterWith(t, 2, brpc.NewMemoryPresence(), nil, []brpc.ServerOption{brpc.WithReverseIdleTimeout(50 * time.Millisecond)})
	r0, r1 := tc.nodes[0], tc.nodes[1]
	tc.connect(r1, "tcp", "c1", "echo-c1")
	tc.waitPeers([]brpc.ClusterPeer{{ID: "c1", Replica: "r1"}})
	stub, err := r0.srv.Client("c1")
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if r, err := stub.Unary(testenv.Ctx(t), &testpb.EchoRequest{Message: "m"}); err != nil || r.GetMessage() != "echo-c1:m" {
			t.Fatalf("forwarded call: %q, %v", r.GetMessage(), err)
		}
		if n := brpc.ClusterTunnels(r1.srv); n != 1 {
			t.Fatalf("%d tunnels through r1 after a call, want 1", n)
		}
		testenv.WaitFor(t, 5*time.Second, "the idle tunnel to close", func() bool { return brpc.ClusterTunnels(r1.srv) == 0 })
	}
}

// replicaByName is an IsReplica: replicas' certificates name them r*.
func replicaByName(ctx context.Context) error {
	p, _ := peer.FromContext(ctx)
	ti, _ := p.AuthInfo.(credentials.TLSInfo)
	if cn := ti.State.PeerCertificates[0].Subject.CommonName; !strings.HasPrefix(cn, "r") {
		return fmt.Errorf("%q is a device", cn)
	}
	return nil
}

// slowForwardedCall starts two replicas, r1 holding a client over
// transport, and a unary call from r0 to it that sleeps sleepMs in the
// client's handler; it returns once the call is there, with r1 and the
// channel the call's result arrives on.
func slowForwardedCall(t *testing.T, transport string, sleepMs int32) (*replicaNode, <-chan error) {
	t.Helper()
	tc := newTestCluster(t, 2, brpc.NewMemoryPresence(), nil)
	r0, r1 := tc.nodes[0], tc.nodes[1]
	_, echo := tc.connectEcho(r1, transport, "c1", "echo-c1")
	tc.waitPeers([]brpc.ClusterPeer{{ID: "c1", Replica: "r1"}})
	stub, err := r0.srv.Client("c1")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := stub.Unary(testenv.Ctx(t), &testpb.EchoRequest{Message: "m", SleepMs: sleepMs})
		done <- err
	}()
	testenv.WaitFor(t, 5*time.Second, "the slow call to reach the client", func() bool { return echo.Sleeping() == 1 })
	return r1, done
}
