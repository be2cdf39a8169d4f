package brpccmd

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestDemoShowsCallsInBothDirections(t *testing.T) {
	var stdout, stderr bytes.Buffer
	start := time.Now()
	code := Run([]string{"demo"}, &stdout, &stderr, Extensions{})
	if code != exitOK {
		t.Fatalf("brpc demo exited %d, want %d\nstderr:\n%s\nstdout:\n%s", code, exitOK, &stderr, &stdout)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("brpc demo took %v, want a few seconds at most", d)
	}
	out := stdout.String()
	for _, want := range []string{
		"Forward calls (client -> server)",
		"Reverse calls (server -> client)",
		"ClientFromContext",
		"Peers() lists 3 connected client(s)",
		`"Hello, alice!"`, `"Hello, bob!"`, `"Hello, carol!"`,
		`Namer.GetName() = "carol"`,
		"NotFound",
		"Admin.ListPeers() lists 3 client(s)",
		"through the gateway (header brpc-target:",
		"GracefulStop()",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	if stderr.Len() > 0 {
		t.Errorf("demo wrote to stderr: %s", &stderr)
	}
}

func TestDemoWithOneClient(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := Run([]string{"demo", "-clients", "1"}, &stdout, &stderr, Extensions{}); code != exitOK {
		t.Fatalf("brpc demo -clients 1 exited %d\nstderr:\n%s", code, &stderr)
	}
	if want := "Peers() lists 1 connected client(s)"; !strings.Contains(stdout.String(), want) {
		t.Errorf("output lacks %q:\n%s", want, &stdout)
	}
}

func TestDemoThatRunsOutOfTimeFailsAndCleansUp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := Run([]string{"demo", "-timeout", "1ns"}, &stdout, &stderr, Extensions{})
	if code != exitError {
		t.Fatalf("brpc demo -timeout 1ns exited %d, want %d\nstderr:\n%s", code, exitError, &stderr)
	}
	if want := "brpc demo: connecting alice:"; !strings.Contains(stderr.String(), want) {
		t.Errorf("stderr lacks %q:\n%s", want, &stderr)
	}
	// TestMain's goleak check proves that the server and clients stopped.
}

func TestCommandLine(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string // empty: nothing may be printed there
		wantStderr string // empty: nothing may be printed there
	}{
		{name: "no command", args: nil, wantCode: exitUsage, wantStderr: "brpc: no command given"},
		{name: "help flag", args: []string{"--help"}, wantCode: exitOK, wantStdout: "demo         run a server"},
		{name: "usage lists peers", args: []string{"help"}, wantCode: exitOK, wantStdout: "peers        list the clients"},
		{name: "usage lists call", args: []string{"help"}, wantCode: exitOK, wantStdout: "call         call a method"},
		{name: "call help", args: []string{"call", "-help"}, wantCode: exitOK, wantStdout: "Usage: brpc call [flags] <client-id> <method> [<json>]"},
		{name: "peers help", args: []string{"help", "peers"}, wantCode: exitOK, wantStdout: "-watch"},
		{name: "call without arguments", args: []string{"call"}, wantCode: exitUsage, wantStderr: "call takes <client-id> <method> [<json>], not 0 argument(s)"},
		{name: "call with too many arguments", args: []string{"call", "a", "b", "{}", "{}"}, wantCode: exitUsage, wantStderr: "not 4 argument(s)"},
		{name: "call with a bad header", args: []string{"call", "-H", "nocolon", "a", "b"}, wantCode: exitUsage, wantStderr: "want 'name: value'"},
		{name: "peers with a stray argument", args: []string{"peers", "extra"}, wantCode: exitUsage, wantStderr: `unexpected argument "extra"`},
		{name: "peers -rejected without -watch", args: []string{"peers", "-rejected"}, wantCode: exitUsage, wantStderr: "-rejected goes with -watch"},
		{name: "peers -cert without -ca", args: []string{"peers", "-cert", "c.pem", "-key", "k.pem"}, wantCode: exitUsage, wantStderr: "-cert needs -ca"},
		{name: "short help flag", args: []string{"-h"}, wantCode: exitOK, wantStdout: "The commands are:"},
		{name: "help command", args: []string{"help"}, wantCode: exitOK, wantStdout: "The commands are:"},
		{name: "help for demo", args: []string{"help", "demo"}, wantCode: exitOK, wantStdout: "-clients int"},
		{name: "demo help flag", args: []string{"demo", "--help"}, wantCode: exitOK, wantStdout: "Usage: brpc demo [flags]"},
		{name: "help for an unknown command", args: []string{"help", "nope"}, wantCode: exitUsage, wantStderr: `brpc: unknown command "nope"`},
		{name: "unknown command", args: []string{"nope"}, wantCode: exitUsage, wantStderr: `brpc: unknown command "nope"`},
		{name: "unknown top-level flag", args: []string{"-x"}, wantCode: exitUsage, wantStderr: "flag provided but not defined: -x"},
		{name: "unknown demo flag", args: []string{"demo", "-bogus"}, wantCode: exitUsage, wantStderr: "flag provided but not defined: -bogus"},
		{name: "bad flag value", args: []string{"demo", "-clients", "many"}, wantCode: exitUsage, wantStderr: `invalid value "many" for flag -clients`},
		{name: "too many clients", args: []string{"demo", "-clients", "99"}, wantCode: exitUsage, wantStderr: "-clients must be between 1 and"},
		{name: "bad timeout", args: []string{"demo", "-timeout", "0s"}, wantCode: exitUsage, wantStderr: "-timeout must be positive"},
		{name: "stray argument", args: []string{"demo", "extra"}, wantCode: exitUsage, wantStderr: `unexpected argument "extra"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := Run(tt.args, &stdout, &stderr, Extensions{})
			if code != tt.wantCode {
				t.Errorf("brpc %q exited %d, want %d\nstdout:\n%s\nstderr:\n%s", tt.args, code, tt.wantCode, &stdout, &stderr)
			}
			check := func(stream string, got *bytes.Buffer, want string) {
				if want == "" && got.Len() > 0 {
					t.Errorf("brpc %q printed to %s, want nothing there:\n%s", tt.args, stream, got)
				}
				if !strings.Contains(got.String(), want) {
					t.Errorf("brpc %q %s lacks %q:\n%s", tt.args, stream, want, got)
				}
			}
			check("stdout", &stdout, tt.wantStdout)
			check("stderr", &stderr, tt.wantStderr)
			// A usage error shows the usage along with the message.
			if tt.wantCode == exitUsage && !strings.Contains(stderr.String(), "sage:") {
				t.Errorf("brpc %q: usage error without the usage:\n%s", tt.args, &stderr)
			}
		})
	}
}

func TestDemoServesMetricsAndShowsLogs(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := Run([]string{"demo", "-metrics-addr", "127.0.0.1:0"}, &stdout, &stderr, Extensions{}); code != exitOK {
		t.Fatalf("brpc demo -metrics-addr exited %d\nstderr:\n%s", code, &stderr)
	}
	for _, want := range []string{
		"/metrics while the demo runs",
		`brpc_connected_clients{transport="quic"} 3`,
		// 3 from handlers, 3 by ID and 1 relayed by the gateway.
		`brpc_reverse_calls_total{code="OK",method="/brpc.examples.greeter.v1.Namer/GetName"} 7`,
		`log: level=INFO msg="brpc: client connected"`,
		`kind=server_stopped`,
	} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, &stdout)
		}
	}
	stdout.Reset()
	if code := Run([]string{"demo", "-log=false"}, &stdout, &stderr, Extensions{}); code != exitOK || strings.Contains(stdout.String(), "log:") {
		t.Errorf("brpc demo -log=false exited %d and printed log records:\n%s", code, &stdout)
	}
}
