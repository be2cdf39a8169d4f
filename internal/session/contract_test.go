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

	"github.com/hashicorp/yamux"
	"github.com/quic-go/quic-go"
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
	return &tls.Config{RootCAs: ca(t).Pool, ServerName: "localhost", NextProtos: []string{testALPN}, MinVersion: tls.VersionTLS13}
}

// listener is what both transports' listeners offer.
type listener interface {
	Addr() net.Addr
	Accept(ctx context.Context) (Session, error)
	StopAccepting() error
	Close() error
}

// transport is one implementation of the session contract. Every contract
// test runs on each of transports.
type transport struct {
	name string
	// start binds a listener on loopback and starts it with conf.
	start func(t *testing.T, conf Settings) listener
	dial  func(ctx context.Context, addr string, tlsConf *tls.Config, conf Settings) (Session, error)
	// carriesCloseCode: a close's code reaches the peer without a notice
	// on the control stream.
	carriesCloseCode bool
}

var transports = []transport{
	{
		name: TransportQUIC,
		start: func(t *testing.T, conf Settings) listener {
			t.Helper()
			ln, err := ListenUDP("127.0.0.1:0")
			if err != nil {
				t.Fatalf("ListenUDP: %v", err)
			}
			if err := ln.Start(serverTLS(t), QUICConfig{Settings: conf}); err != nil {
				_ = ln.Close()
				t.Fatalf("Start: %v", err)
			}
			return ln
		},
		dial: func(ctx context.Context, addr string, tlsConf *tls.Config, conf Settings) (Session, error) {
			return DialQUIC(ctx, addr, tlsConf, QUICConfig{Settings: conf})
		},
		carriesCloseCode: true,
	},
	{
		name: TransportTCP,
		start: func(t *testing.T, conf Settings) listener {
			t.Helper()
			ln, err := ListenTCP("127.0.0.1:0")
			if err != nil {
				t.Fatalf("ListenTCP: %v", err)
			}
			if err := ln.Start(serverTLS(t), TCPConfig{Settings: conf}); err != nil {
				_ = ln.Close()
				t.Fatalf("Start: %v", err)
			}
			return ln
		},
		dial: func(ctx context.Context, addr string, tlsConf *tls.Config, conf Settings) (Session, error) {
			return DialTCP(ctx, addr, tlsConf, TCPConfig{Settings: conf})
		},
	},
}

// forEachTransport runs test on every transport, as a subtest named after it.
func forEachTransport(t *testing.T, test func(t *testing.T, tr transport)) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) { test(t, tr) })
	}
}

// listen starts a listener of tr on loopback; the test's cleanup closes it.
func listen(t *testing.T, tr transport, conf Settings) listener {
	t.Helper()
	ln := tr.start(t, conf)
	t.Cleanup(func() { _ = ln.Close() })
	return ln
}

// connect dials addr (ln's address, or a relay's) and accepts the resulting
// session on ln. Both sessions are closed by the test's cleanup.
func connect(t *testing.T, tr transport, ln listener, addr string, conf Settings) (client, server Session) {
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

	client, err := tr.dial(ctx, addr, clientTLS(t), conf)
	if err != nil {
		cancel()
		<-accepted
		t.Fatalf("dial %s: %v", tr.name, err)
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

// setup is listen followed by connect with default settings.
func setup(t *testing.T, tr transport) (client, server Session) {
	t.Helper()
	ln := listen(t, tr, Settings{})
	return connect(t, tr, ln, ln.Addr().String(), Settings{})
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
	forEachTransport(t, func(t *testing.T, tr transport) {
		client, server := setup(t, tr)
		for _, s := range []struct {
			name string
			sess Session
		}{{"client", client}, {"server", server}} {
			if got := s.sess.Transport(); got != tr.name {
				t.Errorf("%s Transport() = %q, want %q", s.name, got, tr.name)
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
			if e, ok := s.sess.Ending(); ok {
				t.Errorf("%s Ending() = %v, true on a live session", s.name, e)
			}
			select {
			case <-s.sess.Closed():
				t.Errorf("%s Closed() is closed on a live session", s.name)
			default:
			}
		}
		// A QUIC dialer's socket is bound to the wildcard address: compare
		// ports, and hosts where both are bound.
		port := func(a net.Addr) string {
			_, p, err := net.SplitHostPort(a.String())
			if err != nil {
				t.Fatalf("address %v: %v", a, err)
			}
			return p
		}
		if client.RemoteAddr().String() != server.LocalAddr().String() {
			t.Errorf("client RemoteAddr %v != server LocalAddr %v", client.RemoteAddr(), server.LocalAddr())
		}
		if port(server.RemoteAddr()) != port(client.LocalAddr()) {
			t.Errorf("server RemoteAddr %v does not match client LocalAddr %v", server.RemoteAddr(), client.LocalAddr())
		}
		if host, _, _ := net.SplitHostPort(server.RemoteAddr().String()); host != "127.0.0.1" {
			t.Errorf("server RemoteAddr %v, want a 127.0.0.1 address", server.RemoteAddr())
		}
		// A stream's addresses are its session's.
		for _, dir := range [][2]Session{{client, server}, {server, client}} {
			o, a := streamPair(t, dir[0], dir[1])
			for _, c := range []struct {
				name string
				conn net.Conn
				sess Session
			}{{"opened", o, dir[0]}, {"accepted", a, dir[1]}} {
				if c.conn.LocalAddr().String() != c.sess.LocalAddr().String() || c.conn.RemoteAddr().String() != c.sess.RemoteAddr().String() {
					t.Errorf("%s stream addresses %v -> %v, want its session's %v -> %v", c.name, c.conn.LocalAddr(), c.conn.RemoteAddr(), c.sess.LocalAddr(), c.sess.RemoteAddr())
				}
			}
		}
	})
}

// TestStreamsCarryDataBothWays opens streams from either side, exchanges
// data in both directions, and checks that each end reads io.EOF after the
// peer's Close.
func TestStreamsCarryDataBothWays(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		client, server := setup(t, tr)
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
	})
}

// TestManyConcurrentStreams runs several independent streams at once.
func TestManyConcurrentStreams(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		client, server := setup(t, tr)
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
	})
}

// TestMaxIncomingStreams checks the limit on streams the peer may have open
// at once: on QUIC, OpenStream blocks at the limit until ctx is done; yamux
// has no stream credit, so on TCP the peer refuses (closes) a stream past
// the limit as it arrives. Either way a new stream is served once one is
// finished.
func TestMaxIncomingStreams(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		ln := listen(t, tr, Settings{MaxIncomingStreams: 2})
		client, server := connect(t, tr, ln, ln.Addr().String(), Settings{})
		o1, a1 := streamPair(t, client, server)
		streamPair(t, client, server)

		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		c, err := client.OpenStream(ctx)
		cancel()
		if tr.name == TransportQUIC {
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("third OpenStream at limit 2: %v, want context.DeadlineExceeded", err)
			}
		} else {
			if err != nil {
				t.Fatalf("third OpenStream: %v", err)
			}
			t.Cleanup(func() { _ = c.Close() })
			if _, err := c.Write([]byte("!")); err != nil {
				t.Fatalf("Write on the third stream: %v", err)
			}
			actx, acancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			_, err := server.AcceptStream(actx)
			acancel()
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("AcceptStream of a third stream at limit 2: %v, want context.DeadlineExceeded (the stream refused)", err)
			}
			if r := await(t, "Read on a refused stream", blockedRead(c)); r.n != 0 || r.err == nil {
				t.Fatalf("Read on a refused stream = (%d, %v), want (0, an error)", r.n, r.err)
			}
		}

		// Finish one stream on both ends: the server grants a new one.
		_ = o1.Close()
		if _, err := io.ReadAll(a1); err != nil {
			t.Fatalf("draining closed stream: %v", err)
		}
		_ = a1.Close()
		streamPair(t, client, server)
	})
}

func TestCloseUnblocksRead(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		client, server := setup(t, tr)
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
	})
}

func TestCloseUnblocksWriteBlockedOnFlowControl(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		client, server := setup(t, tr)
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
	})
}

// TestCloseOfBlockedWriteReportsErrClosed: Close stops a Write blocked on
// flow control by moving the stream's write deadline into the past; the
// Write must still report net.ErrClosed, not a timeout, since the caller set
// no deadline (a caller that retries on timeouts would retry on a closed
// stream).
func TestCloseOfBlockedWriteReportsErrClosed(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		client, server := setup(t, tr)
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
	})
}

// TestCloseIsIdempotentAndRaceFree closes streams repeatedly and from several
// goroutines while other goroutines write. Run with -race.
func TestCloseIsIdempotentAndRaceFree(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		client, server := setup(t, tr)

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
	})
}

func TestReadDeadline(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		client, server := setup(t, tr)

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
	})
}

func TestWriteDeadline(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		client, server := setup(t, tr)

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
	})
}

// awaitEnd waits for s to end and returns its Ending.
func awaitEnd(t *testing.T, what string, s Session) Ending {
	t.Helper()
	select {
	case <-s.Context().Done():
	case <-time.After(bound):
		t.Fatalf("%s: Context not done within %v", what, bound)
	}
	select {
	case <-s.Closed():
	case <-time.After(bound):
		t.Fatalf("%s: Context done but Closed() still open after %v", what, bound)
	}
	e, ok := s.Ending()
	if !ok {
		t.Fatalf("%s: Ending() reports a live session after its Context ended (cause %v)", what, context.Cause(s.Context()))
	}
	if context.Cause(s.Context()) == nil {
		t.Errorf("%s: Context done without a cause", what)
	}
	return e
}

// TestCloseEnding closes a session with each code from each side, as a
// plain Close and as a close announced on the control stream, and checks
// the Ending both sides report. Only QUIC carries a plain Close's code to
// the peer; an announced close is reported alike on both transports.
func TestCloseEnding(t *testing.T) {
	closeCodes := []CloseCode{CodeNormal, CodeShutdown, CodeReplaced, CodeRejected, CodeProtocol, CodeHandshakeTimeout, CodeRefused + 8, 4242}
	forEachTransport(t, func(t *testing.T, tr transport) {
		ln := listen(t, tr, Settings{})
		for _, code := range closeCodes {
			for _, closerSide := range []string{"client", "server"} {
				for _, how := range []string{"close", "announce"} {
					t.Run(fmt.Sprintf("%s-%ss-%d", closerSide, how, code), func(t *testing.T) {
						client, server := connect(t, tr, ln, ln.Addr().String(), Settings{})
						closer, peer := client, server
						if closerSide == "server" {
							closer, peer = server, client
						}
						reason := fmt.Sprintf("closing with %d", code)
						if how == "announce" {
							// The closer records its close and writes the notice;
							// the peer reads it and closes the session.
							closer.Announce(code, reason)
							if err := peer.PeerAnnounced(code, reason); err != nil {
								t.Fatalf("PeerAnnounced: %v", err)
							}
						} else if err := closer.Close(code, reason); err != nil {
							t.Fatalf("Close: %v", err)
						}

						want := Ending{Kind: EndClosed, Code: code, Reason: reason}
						if e := awaitEnd(t, "closer", closer); e.Kind != want.Kind || e.ByPeer || e.Code != want.Code || e.Reason != want.Reason {
							t.Errorf("closer's Ending = %+v, want %+v", e, want)
						}
						want.ByPeer = true
						if how == "close" && !tr.carriesCloseCode {
							want.Code, want.Reason = CodeNormal, "the peer closed the connection"
						}
						pe := awaitEnd(t, "peer", peer)
						if pe.Kind != want.Kind || !pe.ByPeer || pe.Code != want.Code || pe.Reason != want.Reason {
							t.Errorf("peer's Ending = %+v, want %+v", pe, want)
						}

						// Over, the session fails at once, and on QUIC its errors
						// tell of the same end.
						ctx, cancel := context.WithTimeout(context.Background(), bound)
						defer cancel()
						_, err := peer.AcceptStream(ctx)
						if err == nil || errors.Is(err, context.DeadlineExceeded) {
							t.Fatalf("AcceptStream on an ended session = %v, want a prompt error", err)
						}
						if how == "close" && tr.carriesCloseCode {
							if e, ok := EndingOf(err); !ok || e.Kind != EndClosed || !e.ByPeer || e.Code != code || e.Reason != reason {
								t.Errorf("EndingOf(AcceptStream error %v) = %+v, %v; want the peer's close with %d", err, e, ok, code)
							}
						}
						if _, err := peer.OpenStream(ctx); err == nil || errors.Is(err, context.DeadlineExceeded) {
							t.Fatalf("OpenStream on an ended session = %v, want a prompt error", err)
						}
					})
				}
			}
		}
	})
}

func TestEndingOf(t *testing.T) {
	tests := []struct {
		name string
		err  error
		ok   bool
		want Ending
	}{
		{"nil", nil, false, Ending{}},
		{"EOF", io.EOF, false, Ending{}},
		{"context canceled", context.Canceled, false, Ending{}},
		{"other", errors.New("x"), false, Ending{}},
		{"a stream reset", &quic.StreamError{ErrorCode: 1, Remote: true}, false, Ending{}},
		{"peer's close", fmt.Errorf("read: %w", &quic.ApplicationError{Remote: true, ErrorCode: 0x108, ErrorMessage: "full"}), true,
			Ending{Kind: EndClosed, ByPeer: true, Code: CodeRefused + 8, Reason: "full"}},
		{"own QUIC close", &quic.ApplicationError{ErrorCode: 1, ErrorMessage: "bye"}, true, Ending{Kind: EndClosed, Code: CodeShutdown, Reason: "bye"}},
		{"own TCP close", fmt.Errorf("x: %w", &localCloseError{code: CodeReplaced, reason: "newer"}), true, Ending{Kind: EndClosed, Code: CodeReplaced, Reason: "newer"}},
		{"QUIC idle timeout", &quic.IdleTimeoutError{}, true, Ending{Kind: EndKeepaliveTimeout}},
		{"TCP keepalive timeout", fmt.Errorf("session: %w", yamux.ErrKeepAliveTimeout), true, Ending{Kind: EndKeepaliveTimeout}},
		{"stateless reset", &quic.StatelessResetError{}, true, Ending{Kind: EndConnectionLost}},
		{"transport error", &quic.TransportError{ErrorCode: quic.ProtocolViolation}, true, Ending{Kind: EndConnectionLost}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, ok := EndingOf(tt.err)
			if ok != tt.ok || e.Kind != tt.want.Kind || e.ByPeer != tt.want.ByPeer || e.Code != tt.want.Code ||
				(tt.want.Reason != "" && e.Reason != tt.want.Reason) {
				t.Fatalf("EndingOf(%v) = %+v, %v; want %+v, %v", tt.err, e, ok, tt.want, tt.ok)
			}
			if ok && e.Kind != EndClosed && e.Err == nil {
				t.Errorf("EndingOf(%v).Err is nil: the transport's error is lost", tt.err)
			}
		})
	}
}

// TestSessionCloseEndsStreams checks that ending the session unblocks the
// streams' blocked reads and writes on both sides.
func TestSessionCloseEndsStreams(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		client, server := setup(t, tr)
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
		if r.err == nil {
			t.Fatal("peer's blocked Write succeeded across the session's close")
		}
		if e, ok := EndingOf(r.err); tr.carriesCloseCode && (!ok || e.Code != CodeShutdown) {
			t.Fatalf("peer's blocked Write = %v, want the peer's close code %d", r.err, CodeShutdown)
		}
		if e := awaitEnd(t, "peer", server); e.Kind != EndClosed || !e.ByPeer {
			t.Fatalf("peer's Ending = %+v, want the peer's close", e)
		}
	})
}

func TestStopAcceptingKeepsSessions(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		ln := listen(t, tr, Settings{})
		client, server := connect(t, tr, ln, ln.Addr().String(), Settings{})
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
		s, err := tr.dial(dctx, ln.Addr().String(), clientTLS(t), Settings{HandshakeTimeout: bound})
		if err == nil {
			_ = s.Close(CodeNormal, "")
			t.Fatal("dial succeeded after StopAccepting")
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
	})
}

func TestListenerCloseEndsSessions(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		ln := listen(t, tr, Settings{})
		// The idle timeout is longer than the test waits for the client to hear.
		client, server := connect(t, tr, ln, ln.Addr().String(), Settings{IdleTimeout: 5 * time.Second})
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

		if e := awaitEnd(t, "server", server); e.Kind != EndClosed || e.ByPeer || e.Code != CodeShutdown {
			t.Errorf("server's Ending = %+v, want its own close with CodeShutdown", e)
		}
		// The client is told at once, well before its idle timeout would have
		// ended the session: with CodeShutdown where the transport carries it.
		select {
		case <-client.Context().Done():
			want := CodeShutdown
			if !tr.carriesCloseCode {
				want = CodeNormal
			}
			if e, _ := client.Ending(); e.Kind != EndClosed || !e.ByPeer || e.Code != want {
				t.Fatalf("client session ended with %+v (cause %v), want the peer's close with %v", e, context.Cause(client.Context()), want)
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
	})
}

func TestListenerCloseWithoutStart(t *testing.T) {
	for _, tt := range []struct {
		name   string
		listen func() (listener, error)
	}{
		{TransportQUIC, func() (listener, error) { return ListenUDP("127.0.0.1:0") }},
		{TransportTCP, func() (listener, error) { return ListenTCP("127.0.0.1:0") }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ln, err := tt.listen()
			if err != nil {
				t.Fatalf("listen: %v", err)
			}
			host, port, err := net.SplitHostPort(ln.Addr().String())
			if err != nil || host != "127.0.0.1" || port == "0" {
				t.Fatalf("Addr = %v, want a bound loopback address", ln.Addr())
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
		})
	}
}

// readyWaiter is what grpc-go's framers reach through brpc's stream adapter
// to wait for data without holding a read buffer.
type readyWaiter interface{ WaitReadable() error }

// blockedWait starts WaitReadable on c.
func blockedWait(c net.Conn) <-chan ioResult {
	ch := make(chan ioResult, 1)
	go func() { ch <- ioResult{err: c.(readyWaiter).WaitReadable()} }()
	return ch
}

// TestWaitReadable: a stream waits for data without consuming it, and
// returns at once with Read's error once reading would fail.
func TestWaitReadable(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		client, server := setup(t, tr)
		for _, side := range []string{"opened", "accepted"} {
			t.Run(side+"/data", func(t *testing.T) {
				opened, accepted := streamPair(t, client, server)
				r, w := accepted, opened
				if side == "opened" {
					r, w = opened, accepted
				}
				if _, ok := r.(readyWaiter); !ok {
					t.Fatalf("%T has no WaitReadable", r)
				}
				ch := blockedWait(r)
				stillBlocked(t, "WaitReadable on an empty stream", ch)
				if _, err := w.Write([]byte("hello")); err != nil {
					t.Fatalf("Write: %v", err)
				}
				if res := await(t, "WaitReadable after a Write", ch); res.err != nil {
					t.Fatalf("WaitReadable with data = %v, want nil", res.err)
				}
				// Data is there: it returns again at once, and the data is
				// all still there to read.
				if res := await(t, "WaitReadable with data", blockedWait(r)); res.err != nil {
					t.Fatalf("second WaitReadable = %v", res.err)
				}
				got := make([]byte, 5)
				if _, err := io.ReadFull(r, got); err != nil || string(got) != "hello" {
					t.Fatalf("read after WaitReadable: %q, %v; want all of %q", got, err, "hello")
				}
			})
		}
		t.Run("peer-closes", func(t *testing.T) {
			opened, accepted := streamPair(t, client, server)
			ch := blockedWait(accepted)
			stillBlocked(t, "WaitReadable", ch)
			if err := opened.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if res := await(t, "WaitReadable across the peer's Close", ch); res.err == nil {
				t.Fatal("WaitReadable after the peer closed = nil, want Read's error")
			}
		})
		t.Run("local-close", func(t *testing.T) {
			opened, _ := streamPair(t, client, server)
			ch := blockedWait(opened)
			stillBlocked(t, "WaitReadable", ch)
			if err := opened.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			res := await(t, "WaitReadable across Close", ch)
			if res.err == nil || res.err == io.EOF {
				t.Fatalf("WaitReadable after a local Close = %v, want an error other than io.EOF", res.err)
			}
		})
		t.Run("deadline", func(t *testing.T) {
			opened, _ := streamPair(t, client, server)
			ch := blockedWait(opened)
			stillBlocked(t, "WaitReadable", ch)
			if err := opened.SetReadDeadline(time.Now().Add(-time.Second)); err != nil {
				t.Fatalf("SetReadDeadline: %v", err)
			}
			if res := await(t, "WaitReadable after SetReadDeadline(past)", ch); !isTimeout(res.err) {
				t.Fatalf("WaitReadable after SetReadDeadline(past) = %v, want a timeout net.Error", res.err)
			}
		})
	})
}
