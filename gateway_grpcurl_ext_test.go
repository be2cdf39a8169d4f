package brpc_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/testenv"
)

// grpcurlVersion is the grpcurl release the gateway is checked against. It
// is built from source by the test, so it stays out of brpc's go.mod.
const grpcurlVersion = "v1.9.4"

// buildGrpcurl installs grpcurl into a directory that lives as long as t
// and returns the binary's path.
func buildGrpcurl(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command on PATH to build grpcurl %s: %v", grpcurlVersion, err)
	}
	dir := t.TempDir()
	cmd := exec.CommandContext(testenv.Ctx(t), goBin, "install", "github.com/fullstorydev/grpcurl/cmd/grpcurl@"+grpcurlVersion)
	// Outside brpc's module, so neither its go.mod nor a go.work applies.
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOWORK=off", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go install grpcurl@%s: %v\n%s", grpcurlVersion, err, out)
	}
	return filepath.Join(dir, "grpcurl")
}

// grpcurlRun is what one run of grpcurl printed and how it exited.
type grpcurlRun struct {
	stdout, stderr string
	code           int
}

func (r grpcurlRun) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%sstderr:\n%s", r.code, r.stdout, r.stderr)
}

func runGrpcurl(t *testing.T, bin string, args ...string) grpcurlRun {
	t.Helper()
	cmd := exec.CommandContext(testenv.Ctx(t), bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := grpcurlRun{stdout: stdout.String(), stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		r.code = exit.ExitCode()
	case err != nil:
		t.Fatalf("grpcurl %q: %v", args, err)
	}
	return r
}

// The real grpcurl reaches a connected client through the gateway: it
// lists and describes the client's services through the client's own
// reflection service, relayed like any call, and calls a method with JSON.
func TestGatewayGrpcurl(t *testing.T) {
	bin := buildGrpcurl(t)
	protoDir, err := filepath.Abs(filepath.Join("internal", "testpb"))
	if err != nil {
		t.Fatal(err)
	}
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		e := testenv.NewPlainOn(t, tr)
		alice := e.Connect(testenv.ClientConfig{Name: "alice", Register: func(gs *grpc.Server) { reflection.Register(gs) }})
		addr := serveGateway(t, e.Srv.Gateway(allowAll))
		target := brpc.GatewayTargetHeader + ": " + alice.ID()

		r := runGrpcurl(t, bin, "-plaintext", "-H", target, addr, "list")
		if r.code != 0 {
			t.Fatalf("grpcurl list:\n%v", r)
		}
		services := strings.Fields(r.stdout)
		for _, want := range []string{"brpc.test.v1.Echo", "grpc.reflection.v1.ServerReflection"} {
			if !slices.Contains(services, want) {
				t.Errorf("grpcurl list shows %q, want %s among them", services, want)
			}
		}

		r = runGrpcurl(t, bin, "-plaintext", "-H", target, addr, "describe", "brpc.test.v1.Echo")
		if r.code != 0 {
			t.Fatalf("grpcurl describe:\n%v", r)
		}
		for _, want := range []string{
			"brpc.test.v1.Echo is a service:",
			"rpc Unary ( .brpc.test.v1.EchoRequest ) returns ( .brpc.test.v1.EchoResponse );",
			"rpc BidiStream ( stream .brpc.test.v1.EchoRequest ) returns ( stream .brpc.test.v1.EchoResponse );",
		} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("grpcurl describe lacks %q:\n%v", want, r)
			}
		}

		r = runGrpcurl(t, bin, "-plaintext", "-H", target, "-d", `{"message":"hi"}`, addr, "brpc.test.v1.Echo/Unary")
		if r.code != 0 {
			t.Fatalf("grpcurl Unary:\n%v", r)
		}
		var resp struct{ Message string }
		if err := json.Unmarshal([]byte(r.stdout), &resp); err != nil {
			t.Fatalf("grpcurl Unary printed no JSON response: %v\n%v", err, r)
		}
		if resp.Message != "alice:hi" {
			t.Errorf("grpcurl Unary: message %q, want %q", resp.Message, "alice:hi")
		}

		// Without a target header even reflection fails, so grpcurl is
		// given the schema to reach the call itself.
		r = runGrpcurl(t, bin, "-plaintext", addr, "list")
		if want := "code = InvalidArgument desc = brpc gateway: the \"brpc-target\" header names no client"; r.code != 1 || !strings.Contains(r.stderr, want) {
			t.Errorf("grpcurl list without %s: want exit 1 and %q on stderr:\n%v", brpc.GatewayTargetHeader, want, r)
		}
		schema := []string{"-plaintext", "-import-path", protoDir, "-proto", "echo.proto", "-d", `{"message":"hi"}`}
		refusals := []struct {
			name    string
			headers []string
			code    int // grpcurl exits with 64 plus the call's status code
			want    string
		}{
			{"no target header", nil, 64 + 3, "Code: InvalidArgument\n  Message: brpc gateway: the \"brpc-target\" header names no client\n"},
			{"no such client", []string{"-H", brpc.GatewayTargetHeader + ": nobody"}, 64 + 5, "Code: NotFound\n"},
		}
		for _, c := range refusals {
			args := append(append(slices.Clone(schema), c.headers...), addr, "brpc.test.v1.Echo/Unary")
			r = runGrpcurl(t, bin, args...)
			if r.code != c.code || !strings.Contains(r.stderr, "ERROR:\n  "+c.want) {
				t.Errorf("grpcurl Unary, %s: want exit %d and %q on stderr:\n%v", c.name, c.code, c.want, r)
			}
		}

		// The same over mutual TLS, with grpcurl's TLS flags and an
		// authorizer that reads the caller's verified certificate.
		tlsAddr, tlsFlags := serveTLSGateway(t, e)
		r = runGrpcurl(t, bin, append(tlsFlags, "-H", target, tlsAddr, "list")...)
		if r.code != 0 || !slices.Contains(strings.Fields(r.stdout), "brpc.test.v1.Echo") {
			t.Errorf("grpcurl list over TLS: want brpc.test.v1.Echo listed:\n%v", r)
		}
		r = runGrpcurl(t, bin, append(tlsFlags, "-H", target, "-d", `{"message":"tls"}`, tlsAddr, "brpc.test.v1.Echo/Unary")...)
		if r.code != 0 || !strings.Contains(r.stdout, `"message": "alice:tls"`) {
			t.Errorf("grpcurl Unary over TLS: want alice's answer:\n%v", r)
		}
	})
}

// serveTLSGateway serves e's gateway on a listener that requires a client
// certificate from e's CA and admits callers whose certificate is named
// "operator"; it returns its address and the grpcurl flags of such a caller.
func serveTLSGateway(t *testing.T, e *testenv.Env) (string, []string) {
	t.Helper()
	srvCert, err := e.CA.Server()
	if err != nil {
		t.Fatal(err)
	}
	opCert, err := e.CA.Client("operator")
	if err != nil {
		t.Fatal(err)
	}
	key, err := x509.MarshalPKCS8PrivateKey(opCert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files := map[string][]byte{
		"ca.pem":           e.CA.CertPEM(),
		"operator.pem":     pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: opCert.Certificate[0]}),
		"operator-key.pem": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	authorize := func(ctx context.Context, _, _ string) error {
		if p, ok := peer.FromContext(ctx); ok {
			if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(info.State.VerifiedChains) > 0 &&
				info.State.VerifiedChains[0][0].Subject.CommonName == "operator" {
				return nil
			}
		}
		return status.Error(codes.PermissionDenied, "operators only")
	}
	creds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{srvCert},
		ClientCAs:    e.CA.Pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	})
	addr := serveGateway(t, e.Srv.Gateway(authorize), grpc.Creds(creds))
	return addr, []string{
		"-cacert", filepath.Join(dir, "ca.pem"),
		"-cert", filepath.Join(dir, "operator.pem"),
		"-key", filepath.Join(dir, "operator-key.pem"),
	}
}

// The real grpcurl against one gateway server that also serves the admin
// service and RegisterGatewayReflection: without a target header it lists
// and calls the gateway's own services, with one the client's.
func TestGatewayGrpcurlAdmin(t *testing.T) {
	bin := buildGrpcurl(t)
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		e := testenv.NewPlainOn(t, tr)
		alice := e.Connect(testenv.ClientConfig{Name: "alice", MD: metadata.Pairs("name", "alice"),
			Register: func(gs *grpc.Server) { reflection.Register(gs) }})
		_, addr := serveAdminGateway(t, e.Srv, allowAll)
		target := brpc.GatewayTargetHeader + ": " + alice.ID()

		r := runGrpcurl(t, bin, "-plaintext", addr, "list")
		want := []string{"brpc.admin.v1.Admin", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}
		if r.code != 0 || !slices.Equal(strings.Fields(r.stdout), want) {
			t.Fatalf("grpcurl list without a target: want the gateway's own %q:\n%v", want, r)
		}
		r = runGrpcurl(t, bin, "-plaintext", addr, "describe", "brpc.admin.v1.Admin")
		if r.code != 0 || !strings.Contains(r.stdout, "rpc WatchPeers ( .brpc.admin.v1.WatchPeersRequest ) returns ( stream .brpc.admin.v1.PeerEvent );") {
			t.Errorf("grpcurl describe brpc.admin.v1.Admin:\n%v", r)
		}
		r = runGrpcurl(t, bin, "-plaintext", addr, "brpc.admin.v1.Admin/ListPeers")
		if r.code != 0 {
			t.Fatalf("grpcurl ListPeers:\n%v", r)
		}
		var list struct {
			Peers []struct {
				ID        string
				Transport string
				Metadata  map[string]struct{ Values []string }
			}
		}
		if err := json.Unmarshal([]byte(r.stdout), &list); err != nil || len(list.Peers) != 1 ||
			list.Peers[0].ID != alice.ID() || list.Peers[0].Transport != tr || !slices.Equal(list.Peers[0].Metadata["name"].Values, []string{"alice"}) {
			t.Errorf("grpcurl ListPeers: want alice (%s) over %s with her metadata (%v):\n%v", alice.ID(), tr, err, r)
		}

		r = runGrpcurl(t, bin, "-plaintext", "-H", target, addr, "list")
		if r.code != 0 || !slices.Contains(strings.Fields(r.stdout), "brpc.test.v1.Echo") || slices.Contains(strings.Fields(r.stdout), "brpc.admin.v1.Admin") {
			t.Fatalf("grpcurl list for alice: want her services, not the gateway's:\n%v", r)
		}
		r = runGrpcurl(t, bin, "-plaintext", "-H", target, "-d", `{"message":"hi"}`, addr, "brpc.test.v1.Echo/Unary")
		if r.code != 0 || !strings.Contains(r.stdout, `"message": "alice:hi"`) {
			t.Errorf("grpcurl Unary for alice through the admin gateway:\n%v", r)
		}
		r = runGrpcurl(t, bin, "-plaintext", "-H", brpc.GatewayTargetHeader+": nobody", addr, "list")
		if r.code != 1 || !strings.Contains(r.stderr, "code = NotFound") {
			t.Errorf("grpcurl list for a client that is not connected: want exit 1 and NotFound:\n%v", r)
		}

		// WatchPeers streams until the server stops: the current peer,
		// SYNCED, then bob's arrival; the server's stop ends it.
		cmd := exec.CommandContext(testenv.Ctx(t), bin, "-plaintext", "-d", `{"includeCurrent": true}`, addr, "brpc.admin.v1.Admin/WatchPeers")
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		dec := json.NewDecoder(stdout)
		next := func() (ev struct {
			Type string
			Peer struct{ ID string }
			Kind string
		}) {
			t.Helper()
			if err := dec.Decode(&ev); err != nil {
				cmd.Wait()
				t.Fatalf("grpcurl WatchPeers printed no further event: %v\nstderr:\n%s", err, &stderr)
			}
			return ev
		}
		if ev := next(); ev.Type != "PEER_EVENT_TYPE_CURRENT" || ev.Peer.ID != alice.ID() {
			t.Errorf("grpcurl WatchPeers: first event %+v, want alice CURRENT", ev)
		}
		if ev := next(); ev.Type != "PEER_EVENT_TYPE_SYNCED" {
			t.Errorf("grpcurl WatchPeers: second event %+v, want SYNCED", ev)
		}
		bob := e.Connect(testenv.ClientConfig{Name: "bob"})
		if ev := next(); ev.Type != "PEER_EVENT_TYPE_CONNECTED" || ev.Peer.ID != bob.ID() {
			t.Errorf("grpcurl WatchPeers: after bob connected %+v, want bob CONNECTED", ev)
		}
		e.Srv.Stop()
		for range 2 {
			if ev := next(); ev.Type != "PEER_EVENT_TYPE_DISCONNECTED" || ev.Kind != "server_stopped" {
				t.Errorf("grpcurl WatchPeers: after Stop %+v, want DISCONNECTED server_stopped", ev)
			}
		}
		io.Copy(io.Discard, stdout)
		err = cmd.Wait()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 64+14 || !strings.Contains(stderr.String(), "Code: Unavailable\n  Message: brpc admin: the server stopped") {
			t.Errorf("grpcurl WatchPeers after Stop: %v, want exit %d and the server's Unavailable:\n%s", err, 64+14, &stderr)
		}
	})
}
