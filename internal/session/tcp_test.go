package session

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/brpc-go/brpc/internal/muxtls"
	"github.com/brpc-go/brpc/internal/wiretest"
)

var tcpTransport = transports[1]

// TestTCPOpenStreamHonoursContext fills yamux's backlog of streams the peer
// has not acknowledged (the peer accepts none), where yamux's own
// OpenStream blocks: brpc's returns when ctx ends, a second caller waits
// its turn under its own ctx, and once the peer accepts, opening works
// again. TestMain's goleak check fails if the abandoned open's goroutine
// outlives the session.
func TestTCPOpenStreamHonoursContext(t *testing.T) {
	client, server := setup(t, tcpTransport)
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	var backlog []net.Conn
	for i := range acceptBacklog {
		c, err := client.OpenStream(ctx)
		if err != nil {
			t.Fatalf("OpenStream %d of the backlog: %v", i+1, err)
		}
		t.Cleanup(func() { _ = c.Close() })
		backlog = append(backlog, c)
	}

	for _, caller := range []string{"first", "second"} {
		octx, ocancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		start := time.Now()
		done := make(chan error, 1)
		go func() {
			_, err := client.OpenStream(octx)
			done <- err
		}()
		select {
		case err := <-done:
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("%s OpenStream past the backlog = %v, want context.DeadlineExceeded", caller, err)
			}
		case <-time.After(bound):
			ocancel()
			t.Fatalf("%s OpenStream past the backlog ignored its context: still blocked after %v", caller, bound)
		}
		ocancel()
		t.Logf("%s OpenStream gave up after %v", caller, time.Since(start))
	}

	// Each accept acknowledges a stream and frees a slot: the first goes to
	// the abandoned open, which closes its stream, the second to the next
	// caller.
	for range 2 {
		c, err := server.AcceptStream(ctx)
		if err != nil {
			t.Fatalf("AcceptStream: %v", err)
		}
		_ = c.Close()
	}
	c, err := client.OpenStream(ctx)
	if err != nil {
		t.Fatalf("OpenStream once the peer accepts again: %v", err)
	}
	if _, err := c.Write([]byte("ok")); err != nil {
		t.Fatalf("Write: %v", err)
	}
	_ = c.Close()
	for _, b := range backlog {
		_ = b.Close()
	}
	// The server then finds the rest of the backlog, the abandoned open's
	// stream (closed and empty) and the new one.
	var empty, ok int
	for range acceptBacklog {
		a, err := server.AcceptStream(ctx)
		if err != nil {
			t.Fatalf("AcceptStream: %v (found %d empty streams and %d with data)", err, empty, ok)
		}
		_ = a.SetReadDeadline(time.Now().Add(bound))
		got, err := io.ReadAll(a)
		_ = a.Close()
		switch {
		case err != nil:
			t.Fatalf("reading an accepted stream: %v: a stream was left open", err)
		case string(got) == "ok":
			ok++
		case len(got) == 0:
			empty++
		default:
			t.Fatalf("an accepted stream carried %q", got)
		}
	}
	if ok != 1 || empty != acceptBacklog-1 {
		t.Fatalf("found %d empty streams and %d with data, want %d and 1", empty, ok, acceptBacklog-1)
	}
}

// TestTCPWriteStackGuard runs a real yamux session over real TLS over TCP
// with the stack tlsLayers builds, and checks what reaches the client's
// socket when it writes on a stream. It guards the frame joining and record
// batching against a yamux (or crypto/tls) whose write pattern changes: a
// small data frame must reach the socket as one TLS record holding header
// and body, and a 64 KiB frame's records in one write.
func TestTCPWriteStackGuard(t *testing.T) {
	conf := TCPConfig{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	defer ln.Close()
	type result struct {
		s   *tcpSession
		err error
	}
	accepted := make(chan result, 1)
	go func() {
		raw, err := ln.Accept()
		if err != nil {
			accepted <- result{nil, err}
			return
		}
		tc, muxConn, insp := tlsLayers(raw, serverTLS(t), false, 0)
		if err := tc.Handshake(); err != nil {
			raw.Close()
			accepted <- result{nil, err}
			return
		}
		mux, err := yamux.Server(muxConn, conf.yamux())
		if err != nil {
			raw.Close()
			accepted <- result{nil, err}
			return
		}
		s := newTCPSession(tc, mux, muxConn, conf)
		s.insp = insp
		s.Admitted() // no brpc handshake here
		accepted <- result{s, nil}
	}()

	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	rec := &wiretest.Recorder{Conn: raw}
	tc, muxConn, _ := tlsLayers(rec, clientTLS(t), true, 0)
	if err := tc.Handshake(); err != nil {
		raw.Close()
		t.Fatalf("client Handshake: %v", err)
	}
	mux, err := yamux.Client(muxConn, conf.yamux())
	if err != nil {
		raw.Close()
		t.Fatalf("yamux.Client: %v", err)
	}
	client := newTCPSession(tc, mux, muxConn, conf)
	t.Cleanup(func() { _ = client.Close(CodeNormal, "test over") })
	r := <-accepted
	if r.err != nil {
		t.Fatalf("server side: %v", r.err)
	}
	t.Cleanup(func() { _ = r.s.Close(CodeNormal, "test over") })
	opened, acceptedStream := streamPair(t, client, r.s)

	for _, tt := range []struct {
		name      string
		body      int
		oneRecord bool // header and body in one TLS record
	}{
		{"small frame: header and body in one record", 100, true},
		{"64 KiB frame: its records in one write", 64 << 10, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec.Record(true)
			msg := bytes.Repeat([]byte{'m'}, tt.body)
			if _, err := opened.Write(msg); err != nil {
				t.Fatalf("Write: %v", err)
			}
			got := make([]byte, tt.body)
			if _, err := io.ReadFull(acceptedStream, got); err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("the peer read %d bytes, %v", len(got), err)
			}
			writes := rec.Record(false)
			if len(writes) != 1 {
				sizes := make([]int, len(writes))
				for i, w := range writes {
					sizes[i] = len(w)
				}
				t.Fatalf("a %d-byte stream write reached the socket in %d writes (sizes %v), want 1: the frame joiner or record batcher no longer applies", tt.body, len(writes), sizes)
			}
			recs := wiretest.TLSPlaintexts(t, writes[0])
			total := 0
			for _, n := range recs {
				total += n
			}
			if total != muxtls.YamuxHeaderSize+tt.body || (tt.oneRecord && len(recs) != 1) {
				t.Fatalf("the socket write holds records of %v plaintext bytes, want %d bytes in all (one record: %v)", recs, muxtls.YamuxHeaderSize+tt.body, tt.oneRecord)
			}
		})
	}
}

// recvBufHeld reports whether yamux still holds a receive buffer for st
// (its unexported recvBuf): yamux has no accessor for it.
func recvBufHeld(t *testing.T, st *tcpStream) bool {
	t.Helper()
	f := reflect.ValueOf(st.Stream).Elem().FieldByName("recvBuf")
	if !f.IsValid() {
		t.Fatal("yamux.Stream has no recvBuf field any more: this check needs updating")
	}
	return !f.IsNil()
}

// TestTCPShrinkStreams: the session drops the receive buffers its streams
// have read empty (the keepalive timer calls shrinkStreams every
// interval), keeps those that hold unread data, and forgets a closed
// stream.
func TestTCPShrinkStreams(t *testing.T) {
	client, server := setup(t, tcpTransport)
	opened, accepted := streamPair(t, client, server)
	burst := make([]byte, 64<<10)
	if _, err := opened.Write(burst); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(accepted, make([]byte, len(burst))); err != nil {
		t.Fatal(err)
	}
	st := accepted.(*tcpStream)
	if !recvBufHeld(t, st) {
		t.Fatal("yamux dropped the receive buffer by itself: shrinkStreams has nothing to do")
	}
	// Unread data stays.
	if _, err := opened.Write([]byte("unread")); err != nil {
		t.Fatal(err)
	}
	if err := st.WaitReadable(); err != nil {
		t.Fatalf("waiting for the unread data: %v", err)
	}
	ss := server.(*tcpSession)
	ss.shrinkStreams()
	got := make([]byte, 6)
	if _, err := io.ReadFull(accepted, got); err != nil || string(got) != "unread" {
		t.Fatalf("reading after shrinkStreams: %q, %v; want the unread data", got, err)
	}
	ss.shrinkStreams()
	if recvBufHeld(t, st) {
		t.Fatal("after shrinkStreams the stream read empty still holds its receive buffer")
	}
	// A closed stream is forgotten.
	if err := accepted.Close(); err != nil {
		t.Fatal(err)
	}
	ss.streamsMu.Lock()
	defer ss.streamsMu.Unlock()
	if _, ok := ss.streams[st]; ok {
		t.Fatal("the session still lists a closed stream")
	}
}
