package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestEchoServerAndClient(t *testing.T) {
	ca := filepath.Join(t.TempDir(), "ca.pem")
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- echoServer(ctx, echoServerConfig{addr: "127.0.0.1:0", caOut: ca}, pw)
		pw.Close()
	}()
	lines := bufio.NewScanner(pr)
	var addr string
	for lines.Scan() {
		if rest, ok := strings.CutPrefix(lines.Text(), "brpc echo-server listening on "); ok {
			addr = strings.Fields(rest)[0]
			break
		}
	}
	if addr == "" {
		t.Fatalf("echo-server did not say where it listens: %v", <-done)
	}
	go io.Copy(io.Discard, pr)

	for _, target := range []string{addr, "quic://" + addr, "tcp://" + addr} {
		var out, errOut bytes.Buffer
		if code := run([]string{"echo-client", "-target", target, "-ca", ca, "-n", "5"}, &out, &errOut); code != exitOK {
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
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("echo-server: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("echo-server did not stop")
	}
}

func TestEchoServerStopsAfterItsDuration(t *testing.T) {
	var out, errOut bytes.Buffer
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if code := run([]string{"echo-server", "-addr", "127.0.0.1:0", "-ca-out", ca, "-duration", "300ms"}, &out, &errOut); code != exitOK {
		t.Fatalf("echo-server -duration 300ms exited %d: %s", code, errOut.String())
	}
	if !strings.Contains(out.String(), "listening on 127.0.0.1:") || !strings.Contains(out.String(), "stopped") {
		t.Fatalf("echo-server output:\n%s", out.String())
	}
}

func TestEchoCommandsRejectBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"echo-client", "-n", "0"},
		{"echo-client", "-size", "-1"},
		{"echo-client", "-timeout", "0s"},
		{"echo-client", "-bogus"},
		{"echo-server", "-cert", "x.pem"},
		{"echo-server", "-duration", "-1s"},
		{"echo-server", "stray"},
	} {
		var out, errOut bytes.Buffer
		if code := run(args, &out, &errOut); code != exitUsage {
			t.Errorf("brpc %v exited %d, want %d", args, code, exitUsage)
		}
		if !strings.Contains(errOut.String(), "Usage: brpc "+args[0]) {
			t.Errorf("brpc %v: stderr lacks the command's usage:\n%s", args, errOut.String())
		}
	}
	var out, errOut bytes.Buffer
	if code := run([]string{"echo-client", "-ca", filepath.Join(t.TempDir(), "missing.pem")}, &out, &errOut); code != exitError {
		t.Errorf("echo-client with a missing CA file exited %d, want %d", code, exitError)
	}
	for _, cmd := range []string{"echo-server", "echo-client"} {
		out.Reset()
		if code := run([]string{cmd, "-help"}, &out, &errOut); code != exitOK || !strings.Contains(out.String(), "Usage: brpc "+cmd) {
			t.Errorf("brpc %s -help exited %d with %q", cmd, code, out.String())
		}
	}
}
