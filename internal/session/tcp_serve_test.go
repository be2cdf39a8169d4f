package session

import (
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// acceptorRuns reports whether s has a ServeStreams acceptor goroutine.
func acceptorRuns(s *tcpSession) bool {
	s.serveMu.Lock()
	defer s.serveMu.Unlock()
	return s.accepting
}

// waitNoAcceptor waits up to bound for s's acceptor goroutine to return.
func waitNoAcceptor(t *testing.T, s *tcpSession, after string) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for acceptorRuns(s) {
		if time.Now().After(deadline) {
			t.Fatalf("after %s, an acceptor goroutine still waits for streams %v later", after, bound)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestTCPServeStreamsAcceptsOnlyWhileOpening checks that a listener's TCP
// session hands every stream the peer opens to ServeStreams' handler, and
// runs no goroutine for it between streams: a session whose gRPC
// connection is open and quiet would otherwise keep one waiting in
// AcceptStream for as long as it lives. Once the session ends, done runs
// once.
func TestTCPServeStreamsAcceptsOnlyWhileOpening(t *testing.T) {
	client, server := setup(t, tcpTransport)
	ts := server.(*tcpSession)
	got := make(chan net.Conn, 8)
	ended := make(chan struct{})
	if !ts.ServeStreams(func(c net.Conn) { got <- c }, func() { close(ended) }) {
		t.Fatal("ServeStreams on a listener's TCP session reported false")
	}
	if acceptorRuns(ts) {
		t.Fatal("an acceptor runs before the peer opened any stream")
	}
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	// One stream at a time, then two at once: each reaches the handler
	// with its data, and no acceptor is left after each round.
	for round, n := range []int{1, 1, 2} {
		var opened []net.Conn
		for i := range n {
			c, err := client.OpenStream(ctx)
			if err != nil {
				t.Fatalf("round %d: OpenStream: %v", round, err)
			}
			t.Cleanup(func() { _ = c.Close() })
			if _, err := c.Write([]byte{byte('a' + i)}); err != nil {
				t.Fatalf("round %d: Write: %v", round, err)
			}
			opened = append(opened, c)
		}
		seen := map[byte]bool{}
		for range opened {
			var c net.Conn
			select {
			case c = <-got:
			case <-ctx.Done():
				t.Fatalf("round %d: a stream the peer opened never reached the handler", round)
			}
			t.Cleanup(func() { _ = c.Close() })
			var b [1]byte
			if _, err := io.ReadFull(c, b[:]); err != nil {
				t.Fatalf("round %d: reading a handed-over stream: %v", round, err)
			}
			seen[b[0]] = true
		}
		if len(seen) != n {
			t.Fatalf("round %d: the handler got streams %v, want %d different ones", round, seen, n)
		}
		waitNoAcceptor(t, ts, "the streams were handed over")
	}

	select {
	case <-ended:
		t.Fatal("done ran while the session is live")
	default:
	}
	_ = client.Close(CodeNormal, "test over")
	select {
	case <-ended: // a second call would panic on the closed channel
	case <-ctx.Done():
		t.Fatal("done did not run after the session ended")
	}
	if acceptorRuns(ts) {
		t.Fatal("an acceptor runs after done")
	}
}

// TestTCPServeStreamsDialed checks that a dialed TCP session, which has no
// inspector to see the peer open streams, declines ServeStreams, so that
// its owner accepts streams itself.
func TestTCPServeStreamsDialed(t *testing.T) {
	client, _ := setup(t, tcpTransport)
	if client.(StreamServer).ServeStreams(func(net.Conn) {}, func() {}) {
		t.Fatal("ServeStreams on a dialed TCP session reported true")
	}
}

// TestTCPSessionEndRunsItsFollowUps checks what a listener's TCP session
// does once the peer has gone, now that it runs these itself rather than
// through context.AfterFunc: the listener forgets it, its keepalive timer
// stops, a pending read on one of its streams returns, and ServeStreams'
// done runs, whether ServeStreams was called before the end or after it.
func TestTCPSessionEndRunsItsFollowUps(t *testing.T) {
	for _, serveFirst := range []bool{true, false} {
		ln := listen(t, tcpTransport, Settings{KeepAlive: time.Hour, IdleTimeout: 3 * time.Hour})
		tl := ln.(*TCPListener)
		client, server := connect(t, tcpTransport, ln, ln.Addr().String(), Settings{KeepAlive: time.Hour, IdleTimeout: 3 * time.Hour})
		ts := server.(*tcpSession)
		_, accepted := streamPair(t, client, server)
		read := make(chan error, 1)
		go func() {
			var b [1]byte
			_, err := accepted.Read(b[:])
			read <- err
		}()
		ended := make(chan struct{})
		serve := func() {
			if !ts.ServeStreams(func(c net.Conn) { _ = c.Close() }, func() { close(ended) }) {
				t.Fatal("ServeStreams on a listener's TCP session reported false")
			}
		}
		if serveFirst {
			serve()
		}
		_ = client.Close(CodeNormal, "test over")
		select {
		case <-ts.Context().Done():
		case <-time.After(bound):
			t.Fatalf("serveFirst=%v: the session's context is not done %v after the peer closed", serveFirst, bound)
		}
		if !serveFirst {
			serve()
		}
		select {
		case <-ended:
		case <-time.After(bound):
			t.Fatalf("serveFirst=%v: ServeStreams' done did not run within %v of the session's end", serveFirst, bound)
		}
		select {
		case err := <-read:
			if err == nil {
				t.Fatalf("serveFirst=%v: a pending read returned no error at the session's end", serveFirst)
			}
		case <-time.After(bound):
			t.Fatalf("serveFirst=%v: a pending stream read still waits %v after the session ended", serveFirst, bound)
		}
		deadline := time.Now().Add(bound)
		for {
			tl.mu.Lock()
			_, kept := tl.sessions[ts]
			tl.mu.Unlock()
			ts.pingMu.Lock()
			pinging := ts.pingT != nil
			ts.pingMu.Unlock()
			if !kept && !pinging {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("serveFirst=%v: %v after the session ended, the listener still holds it: %v, its keepalive timer still runs: %v", serveFirst, bound, kept, pinging)
			}
			time.Sleep(time.Millisecond)
		}
	}
}
