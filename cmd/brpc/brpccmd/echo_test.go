package brpccmd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/cmd/brpc/echopb"
)

// startEchoServer runs echoServer on a free loopback port until the test
// ends and returns its address and the CA file it wrote.
func startEchoServer(t *testing.T) (addr, caFile string) {
	t.Helper()
	addr, _, caFile = startEchoGateway(t)
	return addr, caFile
}

// startEchoGateway runs echoServer, with its gateway, on free loopback
// ports until the test ends and returns its address, its gateway's and the
// CA file it wrote.
func startEchoGateway(t *testing.T) (addr, gateway, caFile string) {
	t.Helper()
	return startEchoGatewayWith(t, gatewayServeFlags{addr: "127.0.0.1:0"})
}

// startEchoGatewayWith is startEchoGateway with the gateway's flags.
func startEchoGatewayWith(t *testing.T, gw gatewayServeFlags) (addr, gateway, caFile string) {
	t.Helper()
	caFile = filepath.Join(t.TempDir(), "ca.pem")
	addr, gateway = startEcho(t, echoServerConfig{addr: "127.0.0.1:0", caOut: caFile, gateway: gw})
	return addr, gateway, caFile
}

// startEcho runs echoServer with cfg until the test ends and returns its
// address and its gateway's, once it has said where it listens and, as a
// replica, that it joined the cluster.
func startEcho(t *testing.T, cfg echoServerConfig) (addr, gateway string) {
	t.Helper()
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- echoServer(ctx, cfg, pw)
		pw.Close()
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("echo-server: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("echo-server did not stop within 10s of its context ending")
		}
	})
	joined := cfg.cluster.replica == ""
	lines := bufio.NewScanner(pr)
	for (addr == "" || gateway == "" || !joined) && lines.Scan() {
		if rest, ok := strings.CutPrefix(lines.Text(), "brpc echo-server listening on "); ok {
			addr = strings.Fields(rest)[0]
		}
		if rest, ok := strings.CutPrefix(lines.Text(), "brpc echo-server gateway on "); ok {
			gateway = strings.Fields(rest)[0]
		}
		if strings.HasPrefix(lines.Text(), "brpc echo-server replica "+cfg.cluster.replica+" joined the cluster") {
			joined = true
		}
	}
	if addr == "" || gateway == "" || !joined {
		err := <-done
		done <- err // for the cleanup
		t.Fatalf("echo-server did not say where it listens (or that it joined its cluster): %v", err)
	}
	go io.Copy(io.Discard, pr) // the pipe ends when echoServer returns
	return addr, gateway
}

func TestEchoServerAndClient(t *testing.T) {
	addr, ca := startEchoServer(t)
	for _, target := range []string{addr, "quic://" + addr, "tcp://" + addr} {
		var out, errOut bytes.Buffer
		if code := Run([]string{"echo-client", "-target", target, "-ca", ca, "-n", "5"}, &out, &errOut, Extensions{}); code != exitOK {
			t.Fatalf("echo-client -target %s exited %d: %s", target, code, errOut.String())
		}
		want := "quic"
		if strings.HasPrefix(target, "tcp://") {
			want = "tcp"
		}
		report := out.String()
		for _, s := range []string{"transport:  " + want, "forward:    5 calls", "reverse:    5 calls", "client ID:"} {
			if !strings.Contains(report, s) {
				t.Fatalf("echo-client -target %s report lacks %q:\n%s", target, s, report)
			}
		}
	}
}

func TestEchoServerAnswersAReverseProbeOutOfBoundsWithInvalidArgument(t *testing.T) {
	addr, caFile := startEchoServer(t)
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		t.Fatalf("no certificate in %s", caFile)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	gs := grpc.NewServer(grpc.Creds(brpc.TransportCredentials()))
	calledBack := make(chan struct{}, 1)
	echopb.RegisterEchoServer(gs, countingEcho{called: calledBack})
	defer gs.Stop()
	cc, err := brpc.Dial(ctx, "quic://"+addr, brpc.WithTLSConfig(&tls.Config{RootCAs: roots}), brpc.WithServer(gs))
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer cc.Close()
	probe := echopb.NewProbeClient(cc)
	for _, count := range []int32{0, -1, maxProbeCalls + 1} {
		_, err := probe.Reverse(ctx, &echopb.ReverseRequest{Count: count})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("Reverse with count %d: %v, want code %v", count, err, codes.InvalidArgument)
		}
	}
	select {
	case <-calledBack:
		t.Error("the server called the client back for a probe it refused")
	default:
	}
	r, err := probe.Reverse(ctx, &echopb.ReverseRequest{Count: 2})
	if err != nil || len(r.GetRoundTripNanos()) != 2 {
		t.Fatalf("Reverse with count 2: %v, %d round trips; want 2 round trips", err, len(r.GetRoundTripNanos()))
	}
}

// countingEcho is a client's Echo that reports that it was called.
type countingEcho struct {
	echopb.UnimplementedEchoServer
	called chan<- struct{}
}

func (e countingEcho) Echo(_ context.Context, r *echopb.EchoRequest) (*echopb.EchoResponse, error) {
	select {
	case e.called <- struct{}{}:
	default:
	}
	return &echopb.EchoResponse{Payload: r.GetPayload()}, nil
}

func TestEchoServerStopsAfterItsDuration(t *testing.T) {
	var out, errOut bytes.Buffer
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if code := Run([]string{"echo-server", "-addr", "127.0.0.1:0", "-gateway", "127.0.0.1:0", "-ca-out", ca, "-duration", "300ms"}, &out, &errOut, Extensions{}); code != exitOK {
		t.Fatalf("echo-server -duration 300ms exited %d: %s", code, errOut.String())
	}
	if !strings.Contains(out.String(), "listening on 127.0.0.1:") || !strings.Contains(out.String(), "gateway on 127.0.0.1:") || !strings.Contains(out.String(), "stopped") {
		t.Fatalf("echo-server output:\n%s", out.String())
	}
}

func TestEchoCommandsRejectBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"echo-client", "-n", "0"},
		{"echo-client", "-n", "100001"},
		{"echo-client", "-size", "-1"},
		{"echo-client", "-timeout", "0s"},
		{"echo-client", "-bogus"},
		{"echo-server", "-cert", "x.pem"},
		{"echo-server", "-duration", "-1s"},
		{"echo-server", "stray"},
		{"echo-server", "-gateway", ":4480"},
		{"echo-server", "-gateway", "0.0.0.0:4480"},
		{"echo-server", "-gateway", "192.0.2.1:4480", "-gateway-cert", "c.pem", "-gateway-key", "k.pem"},
		{"echo-server", "-gateway", "nohost"},
		{"echo-server", "-gateway-cert", "c.pem"},
		{"echo-server", "-gateway-client-ca", "ca.pem"},
		{"echo-server", "-gateway", "", "-gateway-cert", "c.pem", "-gateway-key", "k.pem"},
	} {
		var out, errOut bytes.Buffer
		if code := Run(args, &out, &errOut, Extensions{}); code != exitUsage {
			t.Errorf("brpc %v exited %d, want %d", args, code, exitUsage)
		}
		if !strings.Contains(errOut.String(), "Usage: brpc "+args[0]) {
			t.Errorf("brpc %v: stderr lacks the command's usage:\n%s", args, errOut.String())
		}
	}
	var out, errOut bytes.Buffer
	if code := Run([]string{"echo-client", "-ca", filepath.Join(t.TempDir(), "missing.pem")}, &out, &errOut, Extensions{}); code != exitError {
		t.Errorf("echo-client with a missing CA file exited %d, want %d", code, exitError)
	}
	for _, cmd := range []string{"echo-server", "echo-client"} {
		out.Reset()
		if code := Run([]string{cmd, "-help"}, &out, &errOut, Extensions{}); code != exitOK || !strings.Contains(out.String(), "Usage: brpc "+cmd) {
			t.Errorf("brpc %s -help exited %d with %q", cmd, code, out.String())
		}
	}
}

func TestEchoServerIDFromName(t *testing.T) {
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	addr, _ := startEcho(t, echoServerConfig{addr: "127.0.0.1:0", caOut: caFile, idFromName: true, gateway: gatewayServeFlags{addr: "127.0.0.1:0"}})
	if id := stayingClient(t, "quic://"+addr, caFile, "alice"); id != "alice" {
		t.Errorf("a client named alice got the ID %q, want alice", id)
	}
	if id := stayingClient(t, "tcp://"+addr, caFile, ""); len(id) != 32 || id == "alice" {
		t.Errorf("a client without a name got the ID %q, want a random one of 32 hex digits", id)
	}
}
