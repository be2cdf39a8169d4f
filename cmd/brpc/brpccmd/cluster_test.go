package brpccmd

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/adminpb"
)

// memoryPresence is an Extensions.Presence that joins every echo-server
// of a test to one in-memory cluster, and counts the closing of what it
// opened.
type memoryPresence struct {
	p      brpc.Presence
	opened atomic.Int32
	closed atomic.Int32

	mu        sync.Mutex
	endpoints []string // as last opened
	ttl       time.Duration
}

func newMemoryPresence() *memoryPresence { return &memoryPresence{p: brpc.NewMemoryPresence()} }

func (m *memoryPresence) open(endpoints []string, ttl time.Duration) (brpc.Presence, io.Closer, error) {
	if len(endpoints) == 0 || ttl < time.Second {
		return nil, nil, fmt.Errorf("opened with endpoints %q and TTL %v", endpoints, ttl)
	}
	m.opened.Add(1)
	m.mu.Lock()
	m.endpoints, m.ttl = endpoints, ttl
	m.mu.Unlock()
	return m.p, closerFunc(func() error { m.closed.Add(1); return nil }), nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// replicaConfig is an echo-server on free loopback ports that runs as the
// replica name of the cluster in p, its certificates from certsDir.
func replicaConfig(name, certsDir string, p *memoryPresence) echoServerConfig {
	var open PresenceFunc
	if p != nil {
		open = p.open
	}
	return echoServerConfig{
		addr:     "127.0.0.1:0",
		certsDir: certsDir,
		gateway:  gatewayServeFlags{addr: "127.0.0.1:0"},
		cluster:  clusterFlags{replica: name, etcd: "etcd.invalid:2379", ttl: 10 * time.Second, listen: "127.0.0.1:0"},
		presence: open,
	}
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestEchoServerReplicasReachEachOthersClients(t *testing.T) {
	certs := filepath.Join(t.TempDir(), "certs")
	p := newMemoryPresence()
	addrA, gwA := startEcho(t, replicaConfig("a", certs, p))
	addrB, gwB := startEcho(t, replicaConfig("b", certs, p))
	// One CA for both replicas: a client trusts them with one file.
	ca := filepath.Join(certs, caCertFile)
	alice := stayingClient(t, "quic://"+addrA, ca, "alice")
	bob := stayingClient(t, "tcp://"+addrB, ca, "bob")

	for _, c := range []struct{ gateway, id, holder string }{{gwA, bob, "b"}, {gwB, alice, "a"}} {
		var r brpcRun
		// The other replica's claim reaches this one's cache a moment
		// after the client is welcomed.
		waitFor(t, 10*time.Second, "a call through the gateway to reach "+c.id+" on replica "+c.holder, func() bool {
			r = runBrpc("call", "-gateway", c.gateway, c.id, "brpc.echo.v1.Echo/Echo", `{"message": "hi"}`)
			return r.code == exitOK
		})
		if !strings.Contains(r.stdout, `"message": "hi"`) {
			t.Errorf("brpc call through %s to %s printed:\n%s", c.gateway, c.id, r.stdout)
		}
	}
	// brpc peers on a replica lists that replica's clients only, and says
	// so; -cluster lists every replica's.
	r := runBrpc("peers", "-gateway", gwA)
	if r.code != exitOK || !strings.Contains(r.stdout, alice) || strings.Contains(r.stdout, bob) ||
		!strings.HasSuffix(r.stdout, "1 client(s) connected to replica a (-cluster lists every replica's).\n") {
		t.Errorf("brpc peers at replica a: exit %d, stdout:\n%s\nwant alice's ID (%s), not bob's (%s), and that they are replica a's", r.code, r.stdout, alice, bob)
	}
	r = runBrpc("peers", "-cluster", "-gateway", gwB)
	rows := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			rows[f[0]] = f[1]
		}
	}
	if r.code != exitOK || rows["ID"] != "REPLICA" || rows[alice] != "a" || rows[bob] != "b" || len(rows) != 3 ||
		!strings.HasSuffix(r.stdout, "2 client(s) connected to the cluster, as replica b knows them.\n") {
		t.Errorf("brpc peers -cluster at replica b: exit %d, stdout:\n%s\nwant alice (%s) on a and bob (%s) on b", r.code, r.stdout, alice, bob)
	}
}

func TestPeersClusterOnAServerThatIsNoReplica(t *testing.T) {
	_, gw, _ := startEchoGateway(t)
	r := runBrpc("peers", "-cluster", "-gateway", gw)
	if r.code != exitOK || r.stdout != "No clients connected to this server, which is no replica of a cluster.\n" {
		t.Errorf("brpc peers -cluster at a server alone: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if r := runBrpc("peers", "-cluster", "-watch"); r.code != exitUsage || !strings.Contains(r.stderr, "-cluster and -watch do not go together") {
		t.Errorf("brpc peers -cluster -watch: exit %d, stderr %q", r.code, r.stderr)
	}
}

// writeReplicaCert issues a replica certificate from ca into files in dir
// and returns their paths.
func writeReplicaCert(t *testing.T, ca *dirCA, dir, name string) (certFile, keyFile string) {
	t.Helper()
	cert, err := ca.issue()
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(cert.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	for file, block := range map[string]*pem.Block{certFile: {Type: "CERTIFICATE", Bytes: cert.Certificate[0]}, keyFile: {Type: "EC PRIVATE KEY", Bytes: keyDER}} {
		if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile
}

func TestEchoServerReplicasWithTheirOwnCertificates(t *testing.T) {
	// The replicas' PKI is the deployment's: certificates and a CA in
	// files. The clients' side keeps throwaway certificates, a CA file
	// for each server.
	dir := t.TempDir()
	pki, err := openCertsDir(filepath.Join(dir, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	p := newMemoryPresence()
	var gateways []string
	var ids []string
	for _, name := range []string{"a", "b"} {
		cfg := replicaConfig(name, "", p)
		cfg.caOut = filepath.Join(dir, name+"-clients-ca.pem")
		cfg.cluster.certFile, cfg.cluster.keyFile = writeReplicaCert(t, pki, dir, name)
		cfg.cluster.caFile = filepath.Join(dir, "pki", caCertFile)
		addr, gw := startEcho(t, cfg)
		gateways = append(gateways, gw)
		ids = append(ids, stayingClient(t, "quic://"+addr, cfg.caOut, "client of "+name))
	}
	var r brpcRun
	waitFor(t, 10*time.Second, "a call through replica a's gateway to reach the client on replica b", func() bool {
		r = runBrpc("call", "-gateway", gateways[0], ids[1], "brpc.echo.v1.Echo/Echo", `{"message": "hi"}`)
		return r.code == exitOK
	})
	if !strings.Contains(r.stdout, `"message": "hi"`) {
		t.Errorf("brpc call through a to b's client printed:\n%s", r.stdout)
	}
}

func TestEchoServerReplicaFlags(t *testing.T) {
	p := newMemoryPresence()
	certs := filepath.Join(t.TempDir(), "certs")
	var out, errOut bytes.Buffer
	args := []string{"echo-server", "-addr", "127.0.0.1:0", "-gateway", "127.0.0.1:0", "-duration", "1s",
		"-replica", "r1", "-etcd", "127.0.0.1:2379, 127.0.0.2:2379", "-etcd-ttl", "3s", "-replica-addr", "127.0.0.1:0", "-certs", certs}
	if code := Run(args, &out, &errOut, Extensions{Presence: p.open}); code != exitOK {
		t.Fatalf("brpc %q exited %d: %s", args, code, &errOut)
	}
	for _, want := range []string{"replica endpoint on 127.0.0.1:", "joining the cluster through etcd at 127.0.0.1:2379, 127.0.0.2:2379", "stopped"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("echo-server output lacks %q:\n%s", want, &out)
		}
	}
	if p.opened.Load() != 1 || p.closed.Load() != 1 {
		t.Errorf("the presence was opened %d and closed %d times, want once each", p.opened.Load(), p.closed.Load())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if want := []string{"127.0.0.1:2379", "127.0.0.2:2379"}; !slices.Equal(p.endpoints, want) || p.ttl != 3*time.Second {
		t.Errorf("the presence was opened with endpoints %q and TTL %v, want %q and 3s", p.endpoints, p.ttl, want)
	}
}

func TestEchoServerEtcdNeedsTheEtcdBuild(t *testing.T) {
	var out, errOut bytes.Buffer
	code := Run([]string{"echo-server", "-replica", "a", "-etcd", "127.0.0.1:2379"}, &out, &errOut, Extensions{})
	if code != exitUsage {
		t.Errorf("echo-server -etcd without Extensions.Presence exited %d, want %d", code, exitUsage)
	}
	if want := "cd brpcetcd && go run ./cmd/brpc echo-server"; !strings.Contains(errOut.String(), want) {
		t.Errorf("stderr lacks %q:\n%s", want, &errOut)
	}
}

func TestEchoServerRejectsBadReplicaFlags(t *testing.T) {
	certs := filepath.Join(t.TempDir(), "certs")
	replica := []string{"echo-server", "-replica", "a", "-etcd", "127.0.0.1:2379", "-certs", certs}
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"echo-server", "-replica", "a"}, "-replica needs -etcd"},
		{[]string{"echo-server", "-advertise", "127.0.0.1:4490"}, "-advertise goes with -replica"},
		{[]string{"echo-server", "-etcd-ttl", "5s"}, "-etcd-ttl goes with -replica"},
		{[]string{"echo-server", "-replica-addr", "127.0.0.1:4491"}, "-replica-addr goes with -replica"},
		{[]string{"echo-server", "-certs", certs, "-ca-out", "ca.pem"}, "-ca-out is for the throwaway CA"},
		{[]string{"echo-server", "-replica", "a", "-etcd", "127.0.0.1:2379"}, "-replica needs certificates"},
		{append(replica, "-etcd-ttl", "1500ms"), "whole number of seconds"},
		{append(replica, "-etcd-ttl", "0s"), "whole number of seconds"},
		{[]string{"echo-server", "-replica", "a", "-etcd", "127.0.0.1:2379,", "-certs", certs}, "an empty endpoint"},
		{append(replica, "-replica-addr", ":4490"), "listens on every address"},
		{append(replica, "-replica-addr", "0.0.0.0:4490"), "listens on every address"},
		{append(replica, "-replica-addr", "nohost"), "-replica-addr"},
		{append(replica, "-advertise", "nohost"), "-advertise"},
		{append(replica, "-replica-cert", "c.pem"), "-replica-cert and -replica-key go together"},
		{append(replica, "-replica-cert", "c.pem", "-replica-key", "k.pem"), "-replica-cert and -replica-ca go together"},
		{append(replica, "-replica-ca", "ca.pem"), "-replica-cert and -replica-ca go together"},
	}
	ext := Extensions{Presence: newMemoryPresence().open}
	for _, tt := range tests {
		var out, errOut bytes.Buffer
		if code := Run(tt.args, &out, &errOut, ext); code != exitUsage {
			t.Errorf("brpc %q exited %d, want %d", tt.args, code, exitUsage)
		}
		if !strings.Contains(errOut.String(), tt.want) || !strings.Contains(errOut.String(), "Usage: brpc echo-server") {
			t.Errorf("brpc %q: stderr lacks %q or the usage:\n%s", tt.args, tt.want, &errOut)
		}
	}
	// An unspecified -replica-addr is fine with -advertise.
	if err := (&clusterFlags{replica: "a", etcd: "e:2379", ttl: time.Second, listen: ":0", advertise: "10.0.0.1:4490"}).check(nil, certs, ext.Presence); err != nil {
		t.Errorf("-replica-addr :0 with -advertise: %v", err)
	}
}

func TestCertsDirOpenedAtOnceHoldsOneCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	const n = 4
	cas := make([]*dirCA, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cas[i], errs[i] = openCertsDir(dir)
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("openCertsDir %d: %v", i, errs[i])
		}
		if !cas[i].cert.Equal(cas[0].cert) {
			t.Errorf("openCertsDir %d made a CA of its own", i)
		}
	}
	again, err := openCertsDir(dir)
	if err != nil || !again.cert.Equal(cas[0].cert) {
		t.Errorf("opening the directory again: %v, or another CA", err)
	}
}

// silentPresence is a presence whose Join never answers, as an etcd that
// cannot be reached.
type silentPresence struct{}

func (silentPresence) Join(ctx context.Context, _ brpc.Replica, _ func(brpc.PresenceUpdate)) (brpc.Membership, error) {
	<-ctx.Done()
	return nil, status.FromContextError(ctx.Err()).Err()
}

func TestEchoServerGivesUpOnAPresenceThatDoesNotAnswer(t *testing.T) {
	cfg := replicaConfig("a", filepath.Join(t.TempDir(), "certs"), nil)
	cfg.presence = func([]string, time.Duration) (brpc.Presence, io.Closer, error) {
		return silentPresence{}, closerFunc(func() error { return nil }), nil
	}
	cfg.joinTimeout = 200 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	err := echoServer(ctx, cfg, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "no answer from the presence within 200ms") {
		t.Fatalf("echo-server with a presence that does not answer: %v, want its join to time out", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("echo-server gave up after %v, want about its join timeout", d)
	}
}

// oldAdmin is the admin service of a brpc without ListClusterPeers.
type oldAdmin struct {
	adminpb.UnimplementedAdminServer
}

func TestPeersClusterAtAnAdminServiceWithoutIt(t *testing.T) {
	gs := grpc.NewServer()
	adminpb.RegisterAdminServer(gs, oldAdmin{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		gs.Serve(lis)
	}()
	defer func() {
		gs.Stop()
		<-served
	}()
	r := runBrpc("peers", "-cluster", "-gateway", lis.Addr().String())
	if want := "of a brpc with ListClusterPeers?"; r.code != exitError || !strings.Contains(r.stderr, want) {
		t.Errorf("brpc peers -cluster at an admin service without ListClusterPeers: exit %d, stderr %q; want %d and %q", r.code, r.stderr, exitError, want)
	}
}
