package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/brpc-go/brpc/examples/greeter"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// syncBuffer is a bytes.Buffer that the programs' goroutines and the test
// may use at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestClientSaysHelloAndIsCalledBack(t *testing.T) {
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	var serverOut syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan net.Addr, 1)
	served := make(chan error, 1)
	go func() {
		served <- greeter.RunServer(ctx, greeter.ServerConfig{
			Addr: "127.0.0.1:0", CAOut: caFile, Ready: func(a net.Addr) { ready <- a },
		}, &serverOut)
	}()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("RunServer: %v", err)
		}
	}()
	var addr string
	select {
	case a := <-ready:
		addr = a.String()
	case err := <-served:
		served <- err // for the deferred check
		t.Fatalf("RunServer failed: %v\n%s", err, &serverOut)
	case <-time.After(10 * time.Second):
		t.Fatalf("server not ready after 10s:\n%s", &serverOut)
	}

	var out syncBuffer
	args := []string{"-addr", addr, "-ca", caFile, "-name", "alice", "-n", "2", "-interval", "10ms"}
	if err := run(ctx, args, &out); err != nil {
		t.Fatalf("run(%q): %v\noutput:\n%s", args, err, &out)
	}
	for _, want := range []string{
		"the server knows this client as",
		"Hello, alice! (you said: hello #1)",
		"Hello, alice! (you said: hello #2)",
		`the server called GetName on this client (answering your SayHello): answering "alice"`,
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, &out)
		}
	}
}

func TestCommandLine(t *testing.T) {
	tests := []struct {
		name      string
		args      []string
		wantUsage bool   // a *greeter.UsageError
		wantOut   string // printed to stdout
	}{
		{name: "help", args: []string{"-h"}, wantOut: "-name name"},
		{name: "unknown flag", args: []string{"-bogus"}, wantUsage: true},
		{name: "bad count", args: []string{"-n", "many"}, wantUsage: true},
		{name: "no hellos", args: []string{"-n", "0"}, wantUsage: true},
		{name: "stray argument", args: []string{"alice"}, wantUsage: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out syncBuffer
			err := run(context.Background(), tt.args, &out)
			var uerr *greeter.UsageError
			if got := errors.As(err, &uerr); got != tt.wantUsage {
				t.Fatalf("run(%q) = %v; usage error: %v, want %v", tt.args, err, got, tt.wantUsage)
			}
			if tt.wantUsage && !strings.Contains(uerr.Usage, "-addr") {
				t.Errorf("usage error carries no usage: %q", uerr.Usage)
			}
			if !tt.wantUsage && err != nil {
				t.Fatalf("run(%q) = %v, want nil", tt.args, err)
			}
			if !strings.Contains(out.String(), tt.wantOut) {
				t.Errorf("run(%q) printed %q, want it to contain %q", tt.args, &out, tt.wantOut)
			}
		})
	}
}
