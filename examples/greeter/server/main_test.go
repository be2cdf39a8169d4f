package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
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

// syncBuffer is a bytes.Buffer that the server's goroutines and the test may
// use at once.
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

var listeningRE = regexp.MustCompile(`listening on quic://(\S+)`)

func TestServerGreetsAClientAndCallsItByID(t *testing.T) {
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	var out syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-addr", "127.0.0.1:0", "-ca-out", caFile, "-every", "20ms"}, &out)
	}()

	// The server prints its address once it accepts clients.
	var addr string
	deadline := time.Now().Add(10 * time.Second)
	for {
		if m := listeningRE.FindStringSubmatch(out.String()); m != nil {
			addr = m[1]
			break
		}
		select {
		case err := <-done:
			t.Fatalf("run returned %v before listening; output:\n%s", err, &out)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server did not say where it listens within 10s; output:\n%s", &out)
		}
	}
	if pem, err := os.ReadFile(caFile); err != nil || !bytes.Contains(pem, []byte("BEGIN CERTIFICATE")) {
		t.Fatalf("the server did not write a PEM CA certificate to -ca-out (%v)", err)
	}

	var clientOut syncBuffer
	err := greeter.RunClient(ctx, greeter.ClientConfig{
		Addr: addr, CAFile: caFile, Name: "alice", Hellos: 2, Interval: 100 * time.Millisecond,
	}, &clientOut)
	if err != nil {
		t.Fatalf("RunClient: %v\nclient output:\n%s", err, &clientOut)
	}
	if want := "Hello, alice! (you said: hello #2)"; !strings.Contains(clientOut.String(), want) {
		t.Errorf("client output lacks %q:\n%s", want, &clientOut)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run returned %v after its context ended, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("run did not return within 10s of its context ending")
	}
	log := out.String()
	for _, want := range []string{
		`called it back: its name is "alice"`,
		`by ID: its name is "alice"`,
		"stopped",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("server output lacks %q:\n%s", want, log)
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
		{name: "help", args: []string{"-help"}, wantOut: "-ca-out file"},
		{name: "unknown flag", args: []string{"-bogus"}, wantUsage: true},
		{name: "bad duration", args: []string{"-every", "soon"}, wantUsage: true},
		{name: "stray argument", args: []string{"extra"}, wantUsage: true},
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
