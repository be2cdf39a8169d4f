package session

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/brpc-go/brpc/internal/certs"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testALPN is the protocol name both ends of these tests negotiate.
const testALPN = "brpc-session-test"

// bound is the generous upper limit for anything that should happen
// "promptly" on loopback. Tests never sleep this long when things work.
const bound = 2 * time.Second

// bigWrite is far more than the stream and connection windows together
// (16 MiB + 32 MiB at most), so a Write of it blocks while the peer does not read.
const bigWrite = 64 << 20

var testCA = sync.OnceValues(certs.NewCA)

func ca(t *testing.T) *certs.CA {
	t.Helper()
	c, err := testCA()
	if err != nil {
		t.Fatalf("certs.NewCA: %v", err)
	}
	return c
}

func serverTLS(t *testing.T) *tls.Config {
	t.Helper()
	conf, err := ca(t).ServerTLS()
	if err != nil {
		t.Fatalf("ServerTLS: %v", err)
	}
	conf.NextProtos = []string{testALPN}
	return conf
}

func clientTLS(t *testing.T) *tls.Config {
	t.Helper()
	return &tls.Config{RootCAs: ca(t).Pool, NextProtos: []string{testALPN}}
}

// listen starts a QUIC listener on loopback; the test's cleanup closes it.
func listen(t *testing.T, conf QUICConfig) *QUICListener {
	t.Helper()
	ln, err := ListenUDP("127.0.0.1:0")
	if err != nil {
		t.Fatalf("ListenUDP: %v", err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	if err := ln.Start(serverTLS(t), conf); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return ln
}

// connect dials ln and accepts the resulting session. Both sessions are
// closed by the test's cleanup.
func connect(t *testing.T, ln *QUICListener, conf QUICConfig) (client, server Session) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()

	type result struct {
		s   Session
		err error
	}
	accepted := make(chan result, 1)
	go func() {
		s, err := ln.Accept(ctx)
		accepted <- result{s, err}
	}()

	client, err := DialQUIC(ctx, ln.Addr().String(), clientTLS(t), conf)
	if err != nil {
		cancel()
		<-accepted
		t.Fatalf("DialQUIC: %v", err)
	}
	t.Cleanup(func() { _ = client.Close(CodeNormal, "test over") })
	r := <-accepted
	if r.err != nil {
		t.Fatalf("Accept: %v", r.err)
	}
	t.Cleanup(func() { _ = r.s.Close(CodeNormal, "test over") })
	// These tests use the session without brpc's handshake: the client may
	// open streams at once.
	r.s.Admitted()
	return client, r.s
}

// setup is listen followed by connect with default configurations.
func setup(t *testing.T) (client, server Session) {
	t.Helper()
	return connect(t, listen(t, QUICConfig{}), QUICConfig{})
}

// streamPair opens a stream on opener, makes it known to the peer by writing
// one byte, and accepts it on accepter, consuming that byte. Both ends are
// closed by the test's cleanup.
func streamPair(t *testing.T, opener, accepter Session) (opened, accepted net.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	opened, err := opener.OpenStream(ctx)
	if err != nil {
		t.Fatalf("OpenStream: %v", err)
	}
	t.Cleanup(func() { _ = opened.Close() })
	// A QUIC stream is announced to the peer only by its first frame.
	if _, err := opened.Write([]byte{'!'}); err != nil {
		t.Fatalf("first Write: %v", err)
	}
	accepted, err = accepter.AcceptStream(ctx)
	if err != nil {
		t.Fatalf("AcceptStream: %v", err)
	}
	t.Cleanup(func() { _ = accepted.Close() })
	var b [1]byte
	if _, err := io.ReadFull(accepted, b[:]); err != nil || b[0] != '!' {
		t.Fatalf("reading the first byte: %q, %v", b[:], err)
	}
	return opened, accepted
}

// ioResult is what a Read or Write run in a goroutine returned.
type ioResult struct {
	n   int
	err error
}

// await waits up to bound for the result of a blocked operation.
func await(t *testing.T, what string, ch <-chan ioResult) ioResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(bound):
		t.Fatalf("%s did not return within %v", what, bound)
		return ioResult{}
	}
}

// bigBuf is shared, read-only, by every blockedWrite: allocating 64 MiB per
// call is slow enough under -race that the Write would start late.
var bigBuf = sync.OnceValue(func() []byte { return make([]byte, bigWrite) })

// blockedWrite starts writing bigWrite bytes to c, which blocks on flow
// control if the peer does not read.
func blockedWrite(c net.Conn) <-chan ioResult {
	buf := bigBuf()
	ch := make(chan ioResult, 1)
	go func() {
		n, err := c.Write(buf)
		ch <- ioResult{n, err}
	}()
	return ch
}

func blockedRead(c net.Conn) <-chan ioResult {
	ch := make(chan ioResult, 1)
	go func() {
		n, err := c.Read(make([]byte, 16))
		ch <- ioResult{n, err}
	}()
	return ch
}

// stillBlocked asserts that an operation has not returned after a short while.
func stillBlocked(t *testing.T, what string, ch <-chan ioResult) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("%s returned (%d, %v) early; it should be blocked", what, r.n, r.err)
	case <-time.After(100 * time.Millisecond):
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestSessionBasics(t *testing.T) {
	client, server := setup(t)
	for _, s := range []struct {
		name string
		sess Session
	}{{"client", client}, {"server", server}} {
		if got := s.sess.Transport(); got != TransportQUIC {
			t.Errorf("%s Transport() = %q, want %q", s.name, got, TransportQUIC)
		}
		if got := s.sess.TLS().NegotiatedProtocol; got != testALPN {
			t.Errorf("%s NegotiatedProtocol = %q, want %q", s.name, got, testALPN)
		}
		if !s.sess.TLS().HandshakeComplete {
			t.Errorf("%s TLS handshake not complete", s.name)
		}
		if err := s.sess.Context().Err(); err != nil {
			t.Errorf("%s Context already done: %v", s.name, err)
		}
	}
	// The dialer's socket is bound to the wildcard address: compare ports.
	port := func(a net.Addr) int { return a.(*net.UDPAddr).Port }
	if client.RemoteAddr().String() != server.LocalAddr().String() {
		t.Errorf("client RemoteAddr %v != server LocalAddr %v", client.RemoteAddr(), server.LocalAddr())
	}
	if port(server.RemoteAddr()) != port(client.LocalAddr()) {
		t.Errorf("server RemoteAddr %v does not match client LocalAddr %v", server.RemoteAddr(), client.LocalAddr())
	}
}

// TestStreamsCarryDataBothWays opens streams from either side, exchanges
// data in both directions, and checks that each end reads io.EOF after the
// peer's Close.
func TestStreamsCarryDataBothWays(t *testing.T) {
	client, server := setup(t)
	for _, dir := range []struct {
		name             string
		opener, accepter Session
	}{
		{"client-opens", client, server},
		{"server-opens", server, client},
	} {
		t.Run(dir.name, func(t *testing.T) {
			opened, accepted := streamPair(t, dir.opener, dir.accepter)

			// Ping-pong of small messages.
			for i := range 3 {
				ping := fmt.Sprintf("ping %d from %s", i, dir.name)
				if _, err := opened.Write([]byte(ping)); err != nil {
					t.Fatalf("opener Write: %v", err)
				}
				got := make([]byte, len(ping))
				if _, err := io.ReadFull(accepted, got); err != nil || string(got) != ping {
					t.Fatalf("accepter read %q, %v; want %q", got, err, ping)
				}
				pong := "pong " + ping
				if _, err := accepted.Write([]byte(pong)); err != nil {
					t.Fatalf("accepter Write: %v", err)
				}
				got = make([]byte, len(pong))
				if _, err := io.ReadFull(opened, got); err != nil || string(got) != pong {
					t.Fatalf("opener read %q, %v; want %q", got, err, pong)
				}
			}

			// Bulk in both directions at once: more than the initial windows,
			// so flow control updates must flow both ways.
			const size = 4 << 20
			up, down := make([]byte, size), make([]byte, size)
			_, _ = rand.Read(up)
			_, _ = rand.Read(down)
			errs := make(chan error, 4)
			var gotUp, gotDown []byte
			var wg sync.WaitGroup
			wg.Go(func() { _, err := opened.Write(up); errs <- err })
			wg.Go(func() { _, err := accepted.Write(down); errs <- err })
			wg.Go(func() {
				gotUp = make([]byte, size)
				_, err := io.ReadFull(accepted, gotUp)
				errs <- err
			})
			wg.Go(func() {
				gotDown = make([]byte, size)
				_, err := io.ReadFull(opened, gotDown)
				errs <- err
			})
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatalf("bulk transfer: %v", err)
				}
			}
			if !bytes.Equal(gotUp, up) || !bytes.Equal(gotDown, down) {
				t.Fatal("bulk data corrupted")
			}

			// The opener closes: the accepter gets the last bytes, then io.EOF.
			if _, err := opened.Write([]byte("bye")); err != nil {
				t.Fatalf("opener Write: %v", err)
			}
			if err := opened.Close(); err != nil {
				t.Fatalf("opener Close: %v", err)
			}
			rest, err := io.ReadAll(accepted)
			if err != nil || string(rest) != "bye" {
				t.Fatalf("accepter after peer Close: read %q, %v; want \"bye\", <nil>", rest, err)
			}
			if n, err := accepted.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				t.Fatalf("accepter Read after EOF = %d, %v; want 0, io.EOF", n, err)
			}
			if err := accepted.Close(); err != nil {
				t.Fatalf("accepter Close: %v", err)
			}
		})
	}

	// And the reverse: the accepting end closes first, the opener reads io.EOF.
	t.Run("accepter-closes", func(t *testing.T) {
		opened, accepted := streamPair(t, client, server)
		if _, err := accepted.Write([]byte("last words")); err != nil {
			t.Fatalf("Write: %v", err)
		}
		if err := accepted.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		rest, err := io.ReadAll(opened)
		if err != nil || string(rest) != "last words" {
			t.Fatalf("opener read %q, %v; want \"last words\", <nil>", rest, err)
		}
	})
}

// TestManyConcurrentStreams runs several independent streams at once.
func TestManyConcurrentStreams(t *testing.T) {
	client, server := setup(t)
	const n = 20
	ctx, cancel := context.WithTimeout(context.Background(), 5*bound)
	defer cancel()

	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	// Server side: echo every accepted stream, then close it.
	for range n {
		wg.Go(func() {
			c, err := server.AcceptStream(ctx)
			if err != nil {
				errs <- fmt.Errorf("AcceptStream: %w", err)
				return
			}
			defer c.Close()
			msg, err := io.ReadAll(io.LimitReader(c, 64))
			if err != nil {
				errs <- fmt.Errorf("server read: %w", err)
				return
			}
			if _, err := c.Write(msg); err != nil {
				errs <- fmt.Errorf("server write: %w", err)
			}
		})
	}
	for i := range n {
		wg.Go(func() {
			c, err := client.OpenStream(ctx)
			if err != nil {
				errs <- fmt.Errorf("OpenStream: %w", err)
				return
			}
			defer c.Close()
			msg := bytes.Repeat([]byte{byte('a' + i)}, 64)
			if _, err := c.Write(msg); err != nil {
				errs <- fmt.Errorf("client write: %w", err)
				return
			}
			got, err := io.ReadAll(c)
			if err != nil {
				errs <- fmt.Errorf("client read: %w", err)
				return
			}
			if !bytes.Equal(got, msg) {
				errs <- fmt.Errorf("stream %d echoed %q, want %q", i, got, msg)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestMaxIncomingStreams checks that OpenStream blocks at the peer's limit
// until ctx is done, and proceeds once a stream is finished.
func TestMaxIncomingStreams(t *testing.T) {
	ln := listen(t, QUICConfig{Settings: Settings{MaxIncomingStreams: 2}})
	client, server := connect(t, ln, QUICConfig{})
	o1, a1 := streamPair(t, client, server)
	streamPair(t, client, server)

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	_, err := client.OpenStream(ctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("third OpenStream at limit 2: %v, want context.DeadlineExceeded", err)
	}

	// Finish one stream on both ends: the server grants a new one.
	_ = o1.Close()
	if _, err := io.ReadAll(a1); err != nil {
		t.Fatalf("draining closed stream: %v", err)
	}
	_ = a1.Close()
	ctx, cancel = context.WithTimeout(context.Background(), bound)
	defer cancel()
	c, err := client.OpenStream(ctx)
	if err != nil {
		t.Fatalf("OpenStream after a stream finished: %v", err)
	}
	_ = c.Close()
}

func TestCloseUnblocksRead(t *testing.T) {
	client, server := setup(t)
	for _, side := range []string{"opened", "accepted"} {
		t.Run(side, func(t *testing.T) {
			opened, accepted := streamPair(t, client, server)
			c := opened
			if side == "accepted" {
				c = accepted
			}
			ch := blockedRead(c)
			stillBlocked(t, "Read", ch)
			start := time.Now()
			if err := c.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			r := await(t, "Read blocked across Close", ch)
			if r.err == nil || r.n != 0 {
				t.Fatalf("blocked Read after Close = (%d, %v), want (0, error)", r.n, r.err)
			}
			if r.err == io.EOF {
				t.Fatalf("blocked Read after local Close returned io.EOF: local close is not a clean end of the peer's data")
			}
			t.Logf("Read returned %v after %v", r.err, time.Since(start))
			// A later Read fails at once.
			if _, err := c.Read(make([]byte, 1)); err == nil {
				t.Fatal("Read after Close succeeded")
			}
		})
	}
}

func TestCloseUnblocksWriteBlockedOnFlowControl(t *testing.T) {
	client, server := setup(t)
	for _, side := range []string{"opened", "accepted"} {
		t.Run(side, func(t *testing.T) {
			opened, accepted := streamPair(t, client, server)
			w := opened
			if side == "accepted" {
				w = accepted
			}
			// The peer never reads: the Write blocks once the windows are used up.
			ch := blockedWrite(w)
			stillBlocked(t, "64 MiB Write", ch)

			closed := make(chan error, 1)
			go func() { closed <- w.Close() }()
			select {
			case err := <-closed:
				if err != nil {
					t.Fatalf("Close: %v", err)
				}
			case <-time.After(bound):
				t.Fatalf("Close did not return within %v while a Write was blocked", bound)
			}
			r := await(t, "Write blocked across Close", ch)
			if r.err == nil {
				t.Fatalf("blocked Write returned n=%d, nil error after Close", r.n)
			}
			if r.n >= bigWrite {
				t.Fatalf("blocked Write reported %d bytes written", r.n)
			}
			t.Logf("Write returned (%d, %v)", r.n, r.err)
			if _, err := w.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
				t.Fatalf("Write after Close: %v, want net.ErrClosed", err)
			}
		})
	}
}

// TestCloseOfBlockedWriteReportsErrClosed: Close stops a Write blocked on
// flow control by moving the stream's write deadline into the past; the
// Write must still report net.ErrClosed, not a timeout, since the caller set
// no deadline (a caller that retries on timeouts would retry on a closed
// stream).
func TestCloseOfBlockedWriteReportsErrClosed(t *testing.T) {
	client, server := setup(t)
	opened, _ := streamPair(t, client, server)
	ch := blockedWrite(opened)
	stillBlocked(t, "64 MiB Write", ch)
	if err := opened.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	r := await(t, "Write blocked across Close", ch)
	if r.err == nil {
		t.Fatal("blocked Write succeeded across Close")
	}
	if isTimeout(r.err) || errors.Is(r.err, os.ErrDeadlineExceeded) || !errors.Is(r.err, net.ErrClosed) {
		t.Errorf("Write blocked across Close returned %q (timeout=%v); want net.ErrClosed, not a timeout: no deadline was set", r.err, isTimeout(r.err))
	}
}

// TestCloseIsIdempotentAndRaceFree closes streams repeatedly and from several
// goroutines while other goroutines write. Run with -race.
func TestCloseIsIdempotentAndRaceFree(t *testing.T) {
	client, server := setup(t)

	t.Run("sequential", func(t *testing.T) {
		opened, _ := streamPair(t, client, server)
		for i := range 3 {
			if err := opened.Close(); err != nil {
				t.Fatalf("Close #%d: %v", i+1, err)
			}
		}
		if _, err := opened.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Write after Close: %v, want net.ErrClosed", err)
		}
	})

	t.Run("concurrent", func(t *testing.T) {
		for iter := range 10 {
			opened, accepted := streamPair(t, client, server)
			// The peer drains what it can until the stream ends.
			drained := make(chan struct{})
			go func() {
				defer close(drained)
				_, _ = io.Copy(io.Discard, accepted)
			}()

			var wg sync.WaitGroup
			start := make(chan struct{})
			for range 3 {
				wg.Go(func() {
					<-start
					buf := make([]byte, 32<<10)
					for {
						if _, err := opened.Write(buf); err != nil {
							return
						}
					}
				})
			}
			// One more writer that stays blocked on flow control.
			big := blockedWrite(opened)
			closeErrs := make(chan error, 4)
			for range 4 {
				wg.Go(func() {
					<-start
					if iter%2 == 1 {
						time.Sleep(time.Millisecond)
					}
					closeErrs <- opened.Close()
				})
			}
			close(start)
			done := make(chan struct{})
			go func() { wg.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(bound):
				t.Fatalf("iteration %d: writers or closers did not finish within %v", iter, bound)
			}
			close(closeErrs)
			for err := range closeErrs {
				if err != nil {
					t.Fatalf("concurrent Close: %v", err)
				}
			}
			// The peer drains, so the big Write may have finished before the
			// closers ran; it must return either way.
			await(t, "big Write", big)
			_ = accepted.Close()
			select {
			case <-drained:
			case <-time.After(bound):
				t.Fatalf("peer's reader did not end within %v", bound)
			}
		}
	})
}

func TestReadDeadline(t *testing.T) {
	client, server := setup(t)

	t.Run("past", func(t *testing.T) {
		opened, _ := streamPair(t, client, server)
		if err := opened.SetReadDeadline(time.Now().Add(-time.Second)); err != nil {
			t.Fatalf("SetReadDeadline: %v", err)
		}
		r := await(t, "Read with a past deadline", blockedRead(opened))
		if !isTimeout(r.err) || !errors.Is(r.err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read with a past deadline = %v, want a timeout net.Error wrapping os.ErrDeadlineExceeded", r.err)
		}
	})

	t.Run("expires-while-blocked", func(t *testing.T) {
		opened, accepted := streamPair(t, client, server)
		const d = 100 * time.Millisecond
		start := time.Now()
		if err := accepted.SetReadDeadline(start.Add(d)); err != nil {
			t.Fatalf("SetReadDeadline: %v", err)
		}
		r := await(t, "Read with a deadline", blockedRead(accepted))
		if elapsed := time.Since(start); elapsed < d {
			t.Fatalf("Read returned after %v, before its deadline %v", elapsed, d)
		}
		if !isTimeout(r.err) {
			t.Fatalf("Read past its deadline = %v, want a timeout net.Error", r.err)
		}
		// The stream survives a timeout: clear the deadline and read on.
		if err := accepted.SetReadDeadline(time.Time{}); err != nil {
			t.Fatalf("SetReadDeadline(zero): %v", err)
		}
		if _, err := opened.Write([]byte("late")); err != nil {
			t.Fatalf("Write: %v", err)
		}
		got := make([]byte, 4)
		if _, err := io.ReadFull(accepted, got); err != nil || string(got) != "late" {
			t.Fatalf("Read after clearing the deadline = %q, %v", got, err)
		}
	})

	t.Run("moved-into-past-while-blocked", func(t *testing.T) {
		opened, _ := streamPair(t, client, server)
		ch := blockedRead(opened)
		stillBlocked(t, "Read", ch)
		if err := opened.SetDeadline(time.Now().Add(-time.Second)); err != nil {
			t.Fatalf("SetDeadline: %v", err)
		}
		if r := await(t, "blocked Read after SetDeadline(past)", ch); !isTimeout(r.err) {
			t.Fatalf("blocked Read after SetDeadline(past) = %v, want a timeout net.Error", r.err)
		}
	})
}

func TestWriteDeadline(t *testing.T) {
	client, server := setup(t)

	t.Run("past", func(t *testing.T) {
		opened, _ := streamPair(t, client, server)
		if err := opened.SetWriteDeadline(time.Now().Add(-time.Second)); err != nil {
			t.Fatalf("SetWriteDeadline: %v", err)
		}
		n, err := opened.Write([]byte("x"))
		if n != 0 || !isTimeout(err) || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Write with a past deadline = (%d, %v), want (0, timeout net.Error)", n, err)
		}
	})

	t.Run("moved-into-past-while-blocked", func(t *testing.T) {
		_, accepted := streamPair(t, client, server)
		ch := blockedWrite(accepted)
		stillBlocked(t, "64 MiB Write", ch)
		if err := accepted.SetWriteDeadline(time.Now().Add(-time.Second)); err != nil {
			t.Fatalf("SetWriteDeadline: %v", err)
		}
		r := await(t, "blocked Write after SetWriteDeadline(past)", ch)
		if !isTimeout(r.err) || r.n >= bigWrite {
			t.Fatalf("blocked Write after SetWriteDeadline(past) = (%d, %v), want (n < %d, timeout net.Error)", r.n, r.err, bigWrite)
		}
	})

	t.Run("expires-while-blocked", func(t *testing.T) {
		opened, _ := streamPair(t, client, server)
		const d = 200 * time.Millisecond
		start := time.Now()
		if err := opened.SetDeadline(start.Add(d)); err != nil {
			t.Fatalf("SetDeadline: %v", err)
		}
		r := await(t, "blocked Write with a deadline", blockedWrite(opened))
		if elapsed := time.Since(start); elapsed < d {
			t.Fatalf("Write returned after %v, before its deadline %v", elapsed, d)
		}
		if !isTimeout(r.err) {
			t.Fatalf("Write past its deadline = (%d, %v), want a timeout net.Error", r.n, r.err)
		}
	})
}

// TestCloseCodeReachesPeer closes a session with each code from each side
// and checks what the peer sees.
func TestCloseCodeReachesPeer(t *testing.T) {
	codes := []CloseCode{CodeNormal, CodeShutdown, CodeReplaced, CodeRejected, CodeProtocol, CodeHandshakeTimeout, 4242}
	ln := listen(t, QUICConfig{})
	for _, code := range codes {
		for _, closerSide := range []string{"client", "server"} {
			t.Run(fmt.Sprintf("%s-closes-%d", closerSide, code), func(t *testing.T) {
				client, server := connect(t, ln, QUICConfig{})
				closer, peer := client, server
				if closerSide == "server" {
					closer, peer = server, client
				}
				reason := fmt.Sprintf("closing with %d", code)
				if err := closer.Close(code, reason); err != nil {
					t.Fatalf("Close: %v", err)
				}
				select {
				case <-peer.Context().Done():
				case <-time.After(bound):
					t.Fatalf("peer's Context not done within %v of Close", bound)
				}
				cause := context.Cause(peer.Context())
				gotCode, gotReason, ok := PeerCloseCode(cause)
				if !ok || gotCode != code || gotReason != reason {
					t.Fatalf("PeerCloseCode(cause %v) = (%d, %q, %v), want (%d, %q, true)", cause, gotCode, gotReason, ok, code, reason)
				}

				ctx, cancel := context.WithTimeout(context.Background(), bound)
				defer cancel()
				_, err := peer.AcceptStream(ctx)
				if gotCode, gotReason, ok := PeerCloseCode(err); !ok || gotCode != code || gotReason != reason {
					t.Fatalf("PeerCloseCode(AcceptStream error %v) = (%d, %q, %v), want (%d, %q, true)", err, gotCode, gotReason, ok, code, reason)
				}
				_, err = peer.OpenStream(ctx)
				if gotCode, _, ok := PeerCloseCode(err); !ok || gotCode != code {
					t.Fatalf("PeerCloseCode(OpenStream error %v) = (%d, %v), want (%d, true)", err, gotCode, ok, code)
				}

				// The closer's own context is done too, but it did not receive a code.
				select {
				case <-closer.Context().Done():
				case <-time.After(bound):
					t.Fatal("closer's Context not done")
				}
				if c, r, ok := PeerCloseCode(context.Cause(closer.Context())); ok {
					t.Fatalf("closer sees PeerCloseCode (%d, %q, true) for its own close", c, r)
				}
			})
		}
	}
}

func TestPeerCloseCodeOtherErrors(t *testing.T) {
	for _, err := range []error{nil, io.EOF, context.Canceled, errors.New("x")} {
		if c, r, ok := PeerCloseCode(err); ok || c != 0 || r != "" {
			t.Errorf("PeerCloseCode(%v) = (%d, %q, %v), want (0, \"\", false)", err, c, r, ok)
		}
	}
}

// TestSessionCloseEndsStreams checks that ending the session unblocks the
// streams' blocked reads and writes on both sides.
func TestSessionCloseEndsStreams(t *testing.T) {
	client, server := setup(t)
	reader, _ := streamPair(t, client, server) // the server never writes on it
	_, writer := streamPair(t, client, server) // the client never reads it
	r1 := blockedRead(reader)
	w1 := blockedWrite(writer)
	stillBlocked(t, "Read", r1)
	stillBlocked(t, "Write", w1)
	if err := client.Close(CodeShutdown, "bye"); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if r := await(t, "Read on the closed session", r1); r.err == nil {
		t.Fatal("Read on the closed session succeeded")
	}
	r := await(t, "Write on the peer of the closed session", w1)
	if c, _, ok := PeerCloseCode(r.err); !ok || c != CodeShutdown {
		t.Fatalf("peer's blocked Write = %v, want the peer's close code %d", r.err, CodeShutdown)
	}
}

func TestStopAcceptingKeepsSessions(t *testing.T) {
	ln := listen(t, QUICConfig{})
	client, server := connect(t, ln, QUICConfig{})
	if err := ln.StopAccepting(); err != nil {
		t.Fatalf("StopAccepting: %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	if _, err := ln.Accept(ctx); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Accept after StopAccepting = %v, want a prompt listener-closed error", err)
	}

	roundTrip := func() {
		t.Helper()
		for _, dir := range [][2]Session{{client, server}, {server, client}} {
			o, a := streamPair(t, dir[0], dir[1])
			if _, err := a.Write([]byte("still here")); err != nil {
				t.Fatalf("Write: %v", err)
			}
			got := make([]byte, 10)
			if _, err := io.ReadFull(o, got); err != nil || string(got) != "still here" {
				t.Fatalf("Read = %q, %v", got, err)
			}
		}
	}
	roundTrip()

	// A new session cannot be established any more.
	dctx, dcancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer dcancel()
	s, err := DialQUIC(dctx, ln.Addr().String(), clientTLS(t), QUICConfig{Settings: Settings{HandshakeTimeout: bound}})
	if err == nil {
		_ = s.Close(CodeNormal, "")
		t.Fatal("DialQUIC succeeded after StopAccepting")
	}

	roundTrip()
	if err := client.Context().Err(); err != nil {
		t.Fatalf("established session ended: %v", context.Cause(client.Context()))
	}
	if err := server.Context().Err(); err != nil {
		t.Fatalf("established session ended: %v", context.Cause(server.Context()))
	}
	// StopAccepting twice is harmless.
	if err := ln.StopAccepting(); err != nil {
		t.Fatalf("second StopAccepting: %v", err)
	}
}

func TestListenerCloseEndsSessions(t *testing.T) {
	ln := listen(t, QUICConfig{})
	// The idle timeout is longer than the test waits for the client to hear.
	client, server := connect(t, ln, QUICConfig{Settings: Settings{IdleTimeout: 5 * time.Second}})
	_, accepted := streamPair(t, client, server)
	r := blockedRead(accepted)

	if err := ln.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case <-server.Context().Done():
	case <-time.After(bound):
		t.Fatalf("server session still alive %v after listener Close", bound)
	}
	if res := await(t, "Read on a stream of a closed listener", r); res.err == nil {
		t.Fatal("Read on a stream of a closed listener succeeded")
	}
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	if _, err := server.OpenStream(ctx); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("OpenStream on a closed listener's session = %v, want a prompt error", err)
	}
	if _, err := ln.Accept(ctx); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Accept on a closed listener = %v, want a prompt error", err)
	}

	// The client is told at once, with CodeShutdown, well before its idle
	// timeout would have ended the session.
	select {
	case <-client.Context().Done():
		code, _, ok := PeerCloseCode(context.Cause(client.Context()))
		if !ok || code != CodeShutdown {
			t.Fatalf("client session ended with %v, want the peer's CodeShutdown", context.Cause(client.Context()))
		}
	case <-time.After(900 * time.Millisecond):
		t.Fatal("client session still alive 900ms after the listener closed: the close was not sent")
	}

	// Close is idempotent.
	if err := ln.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := ln.StopAccepting(); err != nil {
		t.Logf("StopAccepting after Close: %v", err)
	}
}

func TestListenerCloseWithoutStart(t *testing.T) {
	ln, err := ListenUDP("127.0.0.1:0")
	if err != nil {
		t.Fatalf("ListenUDP: %v", err)
	}
	if ua, ok := ln.Addr().(*net.UDPAddr); !ok || !ua.IP.IsLoopback() || ua.Port == 0 {
		t.Fatalf("Addr = %v, want a bound loopback UDP address", ln.Addr())
	}
	if err := ln.StopAccepting(); err != nil {
		t.Fatalf("StopAccepting before Start: %v", err)
	}
	if err := ln.Close(); err != nil {
		t.Fatalf("Close before Start: %v", err)
	}
	if err := ln.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}
