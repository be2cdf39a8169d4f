package main

import (
	"bufio"
	"bytes"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/brpc-go/brpc/cmd/brpc/brpccmd"
)

// childEnv, set, makes the test binary run the command with its arguments
// instead of the tests, so that the tests can run echo-servers and
// echo-clients as processes of their own and stop them with a signal.
const childEnv = "BRPCETCD_CMD_BRPC_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		main()
	}
	goleak.VerifyTestMain(m)
}

// startEtcd starts an etcd in the test process on a loopback port picked
// by the kernel, until the test ends, and returns its client address.
func startEtcd(t *testing.T) string {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Name = "brpc-cmd-test"
	cfg.Dir = t.TempDir()
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.UnsafeNoFsync = true
	any0 := url.URL{Scheme: "http", Host: "127.0.0.1:0"}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{any0}, []url.URL{any0}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{any0}, []url.URL{any0}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatalf("starting etcd: %v", err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(20 * time.Second):
		t.Fatal("etcd was not ready within 20s")
	}
	return e.Clients[0].Addr().String()
}

// child is the brpc command running in a process of its own.
type child struct {
	t     *testing.T
	name  string
	cmd   *exec.Cmd
	lines chan string // its stdout, line by line, until it ends
	out   bytes.Buffer
}

// startChild runs the command with args until the test ends, when it is
// sent SIGTERM and must exit with status 0.
func startChild(t *testing.T, name string, args ...string) *child {
	t.Helper()
	c := &child{t: t, name: name, cmd: exec.Command(os.Args[0], args...), lines: make(chan string, 100)}
	c.cmd.Env = append(os.Environ(), childEnv+"=1")
	c.cmd.Stderr = &c.out
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		defer close(c.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case c.lines <- sc.Text():
			default: // nobody waits for lines any more
			}
		}
	}()
	t.Cleanup(func() {
		c.cmd.Process.Signal(syscall.SIGTERM)
		// A graceful stop takes a moment (a replica leaves the presence
		// first); one that hangs is a failure, and is killed.
		hung := time.AfterFunc(20*time.Second, func() {
			t.Errorf("%s did not end within 20s of SIGTERM; killing it", name)
			c.cmd.Process.Kill()
		})
		defer hung.Stop()
		for range c.lines { // until its stdout ends
		}
		if err := c.cmd.Wait(); err != nil {
			t.Errorf("%s ended with %v on SIGTERM; stderr:\n%s", name, err, &c.out)
		}
	})
	return c
}

// await reads the child's stdout until a line starts with prefix and
// returns the rest of that line.
func (c *child) await(prefix string) string {
	c.t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case line, ok := <-c.lines:
			if !ok {
				c.t.Fatalf("%s ended before printing %q; stderr:\n%s", c.name, prefix, &c.out)
			}
			if rest, found := strings.CutPrefix(line, prefix); found {
				return rest
			}
		case <-timeout:
			c.t.Fatalf("%s did not print %q within 30s", c.name, prefix)
		}
	}
}

// replica runs echo-server as the replica name on free loopback ports and
// returns its client address and its gateway's once it has joined.
func replica(t *testing.T, name, etcd, certs string) (addr, gateway string) {
	t.Helper()
	c := startChild(t, "replica "+name, "echo-server", "-replica", name, "-etcd", etcd, "-etcd-ttl", "2s", "-certs", certs,
		"-addr", "127.0.0.1:0", "-gateway", "127.0.0.1:0", "-replica-addr", "127.0.0.1:0")
	addr = strings.Fields(c.await("brpc echo-server listening on "))[0]
	gateway = strings.Fields(c.await("brpc echo-server gateway on "))[0]
	c.await("brpc echo-server replica " + name + " joined the cluster")
	return addr, gateway
}

// echoClient runs echo-client -stay against target and returns its ID.
func echoClient(t *testing.T, name, target, ca string) string {
	t.Helper()
	c := startChild(t, "echo-client "+name, "echo-client", "-target", target, "-ca", ca, "-name", name, "-n", "1", "-stay")
	return strings.TrimSuffix(strings.Fields(c.await("brpc echo-client staying connected as "))[0], ";")
}

func TestReplicasReachEachOthersClientsThroughTheirGateways(t *testing.T) {
	etcd := startEtcd(t)
	certs := filepath.Join(t.TempDir(), "certs")
	addrA, gwA := replica(t, "a", etcd, certs)
	addrB, gwB := replica(t, "b", etcd, certs)
	ca := filepath.Join(certs, "ca.pem")
	alice := echoClient(t, "alice", "quic://"+addrA, ca)
	bob := echoClient(t, "bob", "tcp://"+addrB, ca)

	ext := brpccmd.Extensions{Presence: openEtcd}
	for _, c := range []struct{ gateway, id, on string }{{gwA, bob, "b"}, {gwB, alice, "a"}} {
		var stdout, stderr bytes.Buffer
		// The other replica's claim reaches this one through etcd's
		// watch a moment after the client is welcomed.
		deadline := time.Now().Add(10 * time.Second)
		for {
			stdout.Reset()
			stderr.Reset()
			code := brpccmd.Run([]string{"call", "-gateway", c.gateway, c.id, "brpc.echo.v1.Echo/Echo", `{"message": "hi"}`}, &stdout, &stderr, ext)
			if code == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("brpc call through %s to %s (on replica %s) still exits %d after 10s: %s", c.gateway, c.id, c.on, code, &stderr)
			}
			time.Sleep(10 * time.Millisecond)
		}
		if !strings.Contains(stdout.String(), `"message": "hi"`) {
			t.Errorf("brpc call through %s to %s printed:\n%s", c.gateway, c.id, &stdout)
		}
	}
	// Replica a has seen bob's claim: its cluster listing has both.
	var stdout, stderr bytes.Buffer
	if code := brpccmd.Run([]string{"peers", "-cluster", "-gateway", gwA}, &stdout, &stderr, ext); code != 0 ||
		!strings.Contains(stdout.String(), alice+"  a\n") || !strings.Contains(stdout.String(), bob+"  b\n") {
		t.Errorf("brpc peers -cluster at replica a: exit %d, stdout:\n%s\nstderr: %s\nwant alice (%s) on a and bob (%s) on b", code, &stdout, &stderr, alice, bob)
	}
}
