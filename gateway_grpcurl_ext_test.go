package brpc_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/reflection"

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

// serveGateway serves handler as the unknown-service handler of a
// *grpc.Server that registers nothing else, on a plaintext loopback
// listener, and returns its address.
func serveGateway(t *testing.T, handler grpc.StreamHandler) string {
	t.Helper()
	gw := grpc.NewServer(grpc.UnknownServiceHandler(handler))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		gw.Serve(lis)
	}()
	t.Cleanup(func() {
		gw.Stop()
		<-served
	})
	return lis.Addr().String()
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
	})
}
