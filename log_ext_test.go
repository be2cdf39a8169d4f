package brpc_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/testenv"
)

// logBuffer collects JSON log records.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) records(t *testing.T) []map[string]any {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(b.buf.String()), "\n") {
		if line == "" {
			continue
		}
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, r)
	}
	return out
}

func (b *logBuffer) find(t *testing.T, msg string) map[string]any {
	for _, r := range b.records(t) {
		if r["msg"] == msg {
			return r
		}
	}
	return nil
}

func TestLoggerRecordsConnectionEvents(t *testing.T) {
	testenv.EachTransport(t, func(t *testing.T, tr string) {
		var srvLog, cliLog logBuffer
		deny := func(_ context.Context, info brpc.AuthInfo) (string, error) {
			if info.Metadata.Get("name")[0] == "bad" {
				return "", status.Error(codes.PermissionDenied, "go away")
			}
			return info.Metadata.Get("name")[0], nil
		}
		var rejected sync.WaitGroup
		rejected.Add(1)
		e := testenv.New(t, testenv.Config{Transport: tr, ServerOpts: []brpc.ServerOption{
			brpc.WithAuthenticator(deny),
			brpc.WithLogger(slog.New(slog.NewJSONHandler(&srvLog, nil))),
			brpc.WithPeerEvents(func(ev brpc.PeerEvent) {
				if ev.Type == brpc.PeerRejected {
					rejected.Done()
				}
			}),
		}})
		c := e.Connect(testenv.ClientConfig{Name: "good", MD: metadata.Pairs("name", "good"),
			Opts: []brpc.DialOption{brpc.WithLogger(slog.New(slog.NewJSONHandler(&cliLog, nil)))}})
		_, err := e.Dial(testenv.ClientConfig{Name: "bad", MD: metadata.Pairs("name", "bad")})
		testenv.WantCode(t, err, codes.PermissionDenied, "the refused client")
		rejected.Wait()
		c.Shutdown()
		testenv.WaitFor(t, 5*time.Second, "the disconnect to be logged", func() bool {
			return srvLog.find(t, "brpc: client disconnected") != nil
		})

		conn := srvLog.find(t, "brpc: client connected")
		if conn == nil || conn["level"] != "INFO" || conn["peer_id"] != "good" || conn["transport"] != tr || conn["remote_addr"] == "" {
			t.Fatalf("connect record %v, want INFO with peer_id, transport and remote_addr", conn)
		}
		disc := srvLog.find(t, "brpc: client disconnected")
		if disc["level"] != "INFO" || disc["kind"] != "client_closed" || disc["peer_id"] != "good" {
			t.Fatalf("disconnect record %v, want INFO, kind client_closed", disc)
		}
		ref := srvLog.find(t, "brpc: client refused")
		if ref == nil || ref["level"] != "WARN" || ref["code"] != "PermissionDenied" {
			t.Fatalf("refusal record %v, want WARN with code PermissionDenied", ref)
		}
		cl := cliLog.find(t, "brpc: connected")
		if cl == nil || cl["client_id"] != "good" || cl["transport"] != tr {
			t.Fatalf("client record %v, want client_id and transport", cl)
		}
	})
}
