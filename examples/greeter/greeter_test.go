package greeter_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
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

// syncBuffer is a bytes.Buffer that the logging goroutines of a program and
// the test may use at once.
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

// startServer runs RunServer on a free loopback port until the test ends and
// returns its address, the CA file it wrote and its log.
func startServer(t *testing.T, callEvery time.Duration) (addr, caFile string, log *syncBuffer) {
	t.Helper()
	caFile = filepath.Join(t.TempDir(), "ca.pem")
	log = &syncBuffer{}
	ready := make(chan net.Addr, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- greeter.RunServer(ctx, greeter.ServerConfig{
			Addr:      "127.0.0.1:0",
			CAOut:     caFile,
			CallEvery: callEvery,
			Ready:     func(a net.Addr) { ready <- a },
		}, log)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("RunServer returned %v after its context ended, want nil", err)
		}
	})
	select {
	case a := <-ready:
		return a.String(), caFile, log
	case err := <-done:
		done <- err // for the cleanup
		t.Fatalf("RunServer failed before it was ready: %v\nserver log:\n%s", err, log)
	case <-time.After(10 * time.Second):
		t.Fatalf("RunServer not ready after 10s\nserver log:\n%s", log)
	}
	return "", "", nil // not reached: t.Fatalf stops the test
}

func TestClientIsGreetedByTheNameItServes(t *testing.T) {
	addr, caFile, serverLog := startServer(t, 20*time.Millisecond)

	names := []string{"alice", "bob"}
	outs := make([]*syncBuffer, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		outs[i] = &syncBuffer{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			errs[i] = greeter.RunClient(ctx, greeter.ClientConfig{
				Addr:     addr,
				CAFile:   caFile,
				Name:     name,
				Hellos:   3,
				Interval: 50 * time.Millisecond,
			}, outs[i])
		}()
	}
	wg.Wait()

	for i, name := range names {
		if errs[i] != nil {
			t.Fatalf("client %s: RunClient: %v\nclient output:\n%s", name, errs[i], outs[i])
		}
		out := outs[i].String()
		for _, want := range []string{
			"Hello, " + name + "! (you said: hello #1)",
			"Hello, " + name + "! (you said: hello #3)",
			"the server called GetName on this client (answering your SayHello)",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("client %s: output lacks %q:\n%s", name, want, out)
			}
		}
	}
	log := serverLog.String()
	for _, want := range []string{
		"called it back: its name is \"alice\"",
		"called it back: its name is \"bob\"",
		"by ID: its name is", // a call the server started on its own
	} {
		if !strings.Contains(log, want) {
			t.Errorf("server log lacks %q:\n%s", want, log)
		}
	}
}

func TestClientFailsWhenNoServerAnswers(t *testing.T) {
	caPEM, err := greeter.NewCACertPEM()
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	// A port that was free a moment ago: nothing answers there.
	l, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.LocalAddr().String()
	l.Close()

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var out syncBuffer
	if err := greeter.RunClient(ctx, greeter.ClientConfig{Addr: addr, CAFile: caFile, Name: "carol", Hellos: 1}, &out); err == nil {
		t.Fatalf("RunClient to %s, where nothing listens, succeeded; output:\n%s", addr, &out)
	}
}

func TestClientNeedsTheCAFile(t *testing.T) {
	var out syncBuffer
	err := greeter.RunClient(context.Background(), greeter.ClientConfig{
		Addr:   "127.0.0.1:1",
		CAFile: filepath.Join(t.TempDir(), "missing.pem"),
		Name:   "dave",
		Hellos: 1,
	}, &out)
	if err == nil || !strings.Contains(err.Error(), "start the server first") {
		t.Fatalf("RunClient without a CA file: got %v, want an error saying to start the server first", err)
	}
}

func TestServerThatCannotListenLeavesTheCAFileAlone(t *testing.T) {
	addr, caFile, _ := startServer(t, time.Hour)
	before, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	var out syncBuffer
	err = greeter.RunServer(context.Background(), greeter.ServerConfig{Addr: addr, CAOut: caFile}, &out)
	if err == nil {
		t.Fatalf("a second RunServer on %s, which is taken, succeeded", addr)
	}
	after, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Fatalf("a server that could not listen replaced the running server's CA file")
	}
}

func TestServerStoppedAtOnceReturnsNil(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out syncBuffer
	cfg := greeter.ServerConfig{Addr: "127.0.0.1:0", CAOut: filepath.Join(t.TempDir(), "ca.pem")}
	if err := greeter.RunServer(ctx, cfg, &out); err != nil {
		t.Fatalf("RunServer with a context that has ended: %v, want nil\nlog:\n%s", err, &out)
	}
}

func TestServerServesMetricsWhenAsked(t *testing.T) {
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	log := &syncBuffer{}
	ready := make(chan net.Addr, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- greeter.RunServer(ctx, greeter.ServerConfig{
			Addr: "127.0.0.1:0", CAOut: caFile, MetricsAddr: "127.0.0.1:0",
			Ready: func(a net.Addr) { ready <- a },
		}, log)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("RunServer: %v", err)
		}
	}()
	var addr net.Addr
	select {
	case addr = <-ready:
	case <-time.After(10 * time.Second):
		t.Fatalf("RunServer not ready\n%s", log)
	}
	cctx, ccancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer ccancel()
	var out syncBuffer
	if err := greeter.RunClient(cctx, greeter.ClientConfig{Addr: addr.String(), CAFile: caFile, Name: "dora", Hellos: 2}, &out); err != nil {
		t.Fatalf("RunClient: %v\n%s", err, &out)
	}
	_, url, ok := strings.Cut(log.String(), "metrics at ")
	if !ok {
		t.Fatalf("the server did not say where its metrics are:\n%s", log)
	}
	url = strings.Fields(url)[0]
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	// dora connected, was called back twice, and left.
	for _, want := range []string{
		`brpc_handshakes_total{result="OK",transport="quic"} 1`,
		`brpc_reverse_calls_total{code="OK",method="/brpc.examples.greeter.v1.Namer/GetName"}`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q:\n%s", want, body)
		}
	}
}
