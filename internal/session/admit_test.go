package session

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// What a listener's session allows its peer before and after Admitted, on
// both transports, with raw quic-go and raw yamux-over-TLS peers.

// acceptOne accepts the next session on ln; the test's cleanup closes it.
func acceptOne(t *testing.T, accept func(context.Context) (Session, error)) Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	s, err := accept(ctx)
	if err != nil {
		t.Fatalf("Accept: %v", err)
	}
	t.Cleanup(func() { _ = s.Close(CodeNormal, "test over") })
	return s
}

// dialRawQUIC opens a plain quic-go connection to ln, as an attacker would.
func dialRawQUIC(t *testing.T, ln *QUICListener) *quic.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	conn, err := quic.DialAddr(ctx, ln.Addr().String(), clientTLS(t), &quic.Config{})
	if err != nil {
		t.Fatalf("DialAddr: %v", err)
	}
	t.Cleanup(func() { _ = conn.CloseWithError(0, "test over") })
	return conn
}

// openRaw opens a QUIC stream and writes b on it, which announces it.
func openRaw(t *testing.T, conn *quic.Conn, b []byte) *quic.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		t.Fatalf("OpenStreamSync: %v", err)
	}
	if _, err := st.Write(b); err != nil {
		t.Fatalf("Write: %v", err)
	}
	return st
}

// wantEnded waits for s to end and checks that its Ending is a close by
// this side with code and a reason.
func wantEnded(t *testing.T, s Session, code CloseCode) {
	t.Helper()
	select {
	case <-s.Context().Done():
	case <-time.After(bound):
		t.Fatalf("the session is still up %v later; want it closed with code %d", bound, code)
	}
	e, ok := s.Ending()
	if !ok || e.Kind != EndClosed || e.ByPeer || e.Code != code || e.Reason == "" {
		t.Fatalf("session ended with %v (ok %v, cause %v), want a close by this side with code %v and a reason", e, ok, context.Cause(s.Context()), code)
	}
	t.Logf("ended: %v", e)
}

// wantPeerCode waits for a raw QUIC peer to be closed by the server with code.
func wantPeerCode(t *testing.T, conn *quic.Conn, code CloseCode) {
	t.Helper()
	select {
	case <-conn.Context().Done():
	case <-time.After(bound):
		t.Fatalf("the server did not close the connection within %v", bound)
	}
	e, ok := EndingOf(context.Cause(conn.Context()))
	if !ok || e.Kind != EndClosed || !e.ByPeer || e.Code != code {
		t.Fatalf("the server closed with %v (%v), want code %d", e, context.Cause(conn.Context()), code)
	}
}

func TestQUICStreamBeforeWelcomeIsProtocolError(t *testing.T) {
	for _, acceptFirst := range []bool{true, false} {
		name := "control stream accepted first"
		if !acceptFirst {
			name = "both streams opened before any accept"
		}
		t.Run(name, func(t *testing.T) {
			ln := listenQUIC(t, QUICConfig{})
			conn := dialRawQUIC(t, ln)
			openRaw(t, conn, []byte("hello"))
			s := acceptOne(t, ln.Accept)
			if acceptFirst {
				ctx, cancel := context.WithTimeout(context.Background(), bound)
				ctrl, err := s.AcceptStream(ctx)
				cancel()
				if err != nil {
					t.Fatalf("AcceptStream (control): %v", err)
				}
				defer ctrl.Close()
			}
			openRaw(t, conn, bytes.Repeat([]byte("x"), 4096))
			wantPeerCode(t, conn, CodeProtocol)
			wantEnded(t, s, CodeProtocol)
		})
	}
}

func TestTCPStreamBeforeWelcomeIsProtocolError(t *testing.T) {
	client, _, s, _ := pendingTCP(t, TCPConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	// yamux announces a stream with its SYN when it is opened.
	if st, err := client.OpenStream(ctx); err == nil {
		defer st.Close()
	}
	wantEnded(t, s, CodeProtocol)
	select {
	case <-client.Closed():
	case <-time.After(bound):
		t.Fatalf("the client's session is still up %v after the server failed it", bound)
	}
}

func TestTCPControlStreamOverrunBeforeWelcome(t *testing.T) {
	_, ctrlC, s, ctrl := pendingTCP(t, TCPConfig{MaxControlBytes: 1024})
	// The server reads (as it reads a hello), which opens yamux's window to
	// 4 MiB; the inspector still allows only yamux's initial 256 KiB.
	if _, err := io.ReadFull(ctrl, make([]byte, 5)); err != nil {
		t.Fatalf("reading the start of the hello: %v", err)
	}
	ctrlC.SetWriteDeadline(time.Now().Add(bound))
	go func() { _, _ = ctrlC.Write(make([]byte, 1<<20)) }()
	wantEnded(t, s, CodeProtocol)
}

func TestTCPDataOnControlStreamAfterWelcome(t *testing.T) {
	client, ctrlC, s, ctrl := pendingTCP(t, TCPConfig{})
	if _, err := io.ReadFull(ctrl, make([]byte, 5)); err != nil {
		t.Fatalf("reading the hello: %v", err)
	}
	s.Admitted()

	// Admitted: the client may open streams, and the server still writes
	// notices on the control stream.
	opened, accepted := streamPair(t, client, s)
	echo(t, opened, accepted)
	if _, err := ctrl.Write([]byte("notice")); err != nil {
		t.Fatalf("writing a notice: %v", err)
	}
	if _, err := io.ReadFull(ctrlC, make([]byte, 6)); err != nil {
		t.Fatalf("reading the notice: %v", err)
	}
	if err := s.Context().Err(); err != nil {
		t.Fatalf("the session ended: %v", context.Cause(s.Context()))
	}

	// A FIN on the control stream carries no data and is fine; data is not.
	// The client's Write may report the session's shutdown: yamux confirms
	// a write after its frame went out, and the server may have ended the
	// session for it by then. Whether the data left is what wantEnded sees.
	_, _ = ctrlC.Write([]byte("more"))
	wantEnded(t, s, CodeProtocol)
}

func TestQUICControlStreamAfterWelcomeIsDropped(t *testing.T) {
	ln := listenQUIC(t, QUICConfig{})
	conn := dialRawQUIC(t, ln)
	ctrlC := openRaw(t, conn, []byte("hello"))
	s := acceptOne(t, ln.Accept)
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	ctrl, err := s.AcceptStream(ctx)
	if err != nil {
		t.Fatalf("AcceptStream (control): %v", err)
	}
	defer ctrl.Close()
	if _, err := io.ReadFull(ctrl, make([]byte, 5)); err != nil {
		t.Fatalf("reading the hello: %v", err)
	}
	s.Admitted()

	// The server stops reading the control stream: quic-go tells the
	// client (STOP_SENDING), so writing there fails instead of filling
	// buffers on the server.
	ctrlC.SetWriteDeadline(time.Now().Add(bound))
	_, err = ctrlC.Write(make([]byte, 8<<20))
	var se *quic.StreamError
	if !errors.As(err, &se) || !se.Remote {
		t.Fatalf("client Write on the control stream after the welcome: %v, want the server's STOP_SENDING", err)
	}

	// The session and its control stream's other direction go on.
	if _, err := ctrl.Write([]byte("notice")); err != nil {
		t.Fatalf("writing a notice: %v", err)
	}
	ctrlC.SetReadDeadline(time.Now().Add(bound))
	if _, err := io.ReadFull(ctrlC, make([]byte, 6)); err != nil {
		t.Fatalf("reading the notice: %v", err)
	}
	st := openRaw(t, conn, []byte("!"))
	a, err := s.AcceptStream(ctx)
	if err != nil {
		t.Fatalf("AcceptStream after the welcome: %v", err)
	}
	defer a.Close()
	if _, err := io.ReadFull(a, make([]byte, 1)); err != nil {
		t.Fatalf("reading a stream opened after the welcome: %v", err)
	}
	st.CancelRead(0)
	st.Close()
	if err := s.Context().Err(); err != nil {
		t.Fatalf("the session ended: %v", context.Cause(s.Context()))
	}
}

// echo checks that bytes written on one end of a stream arrive at the other.
func echo(t *testing.T, from, to net.Conn) {
	t.Helper()
	msg := []byte("ping")
	if _, err := from.Write(msg); err != nil {
		t.Fatalf("Write: %v", err)
	}
	got := make([]byte, len(msg))
	to.SetReadDeadline(time.Now().Add(bound))
	if _, err := io.ReadFull(to, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("read %q, %v; want %q", got, err, msg)
	}
}

// listenTCP starts a TCP listener on loopback; the test's cleanup closes it.
// listenQUIC starts a QUIC listener on 127.0.0.1 with conf.
func listenQUIC(t *testing.T, conf QUICConfig) *QUICListener {
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

// pendingTCP is a TCP session not admitted yet: the client has opened its
// control stream (ctrlC) and written "hello" on it, and the server has
// accepted the session (s) and the control stream (ctrl). Both streams are
// closed by t.Cleanup.
func pendingTCP(t *testing.T, conf TCPConfig) (client Session, ctrlC net.Conn, s Session, ctrl net.Conn) {
	t.Helper()
	ln := listenTCP(t, conf)
	client = dialTCP(t, ln)
	ctrlC = openTCP(t, client, []byte("hello"))
	t.Cleanup(func() { ctrlC.Close() })
	s = acceptOne(t, ln.Accept)
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	ctrl, err := s.AcceptStream(ctx)
	if err != nil {
		t.Fatalf("AcceptStream (control): %v", err)
	}
	t.Cleanup(func() { ctrl.Close() })
	return client, ctrlC, s, ctrl
}

func listenTCP(t *testing.T, conf TCPConfig) *TCPListener {
	t.Helper()
	ln, err := ListenTCP("127.0.0.1:0")
	if err != nil {
		t.Fatalf("ListenTCP: %v", err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	if err := ln.Start(serverTLS(t), conf); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return ln
}

// dialTCP opens a yamux-over-TLS session to ln; it may open streams
// whenever it likes, as an attacker would.
func dialTCP(t *testing.T, ln *TCPListener) Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	conf := clientTLS(t)
	conf.ServerName = "localhost"
	s, err := DialTCP(ctx, ln.Addr().String(), conf, TCPConfig{})
	if err != nil {
		t.Fatalf("DialTCP: %v", err)
	}
	t.Cleanup(func() { _ = s.Close(CodeNormal, "test over") })
	return s
}

// openTCP opens a stream on s and writes b on it.
func openTCP(t *testing.T, s Session, b []byte) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	st, err := s.OpenStream(ctx)
	if err != nil {
		t.Fatalf("OpenStream: %v", err)
	}
	if _, err := st.Write(b); err != nil {
		t.Fatalf("Write: %v", err)
	}
	return st
}

// captureInitial returns the first datagram of a fresh QUIC dial to addr:
// an Initial packet with a connection ID of its own, which a raw UDP socket
// can replay as a flood would.
func captureInitial(t *testing.T, addr net.Addr) []byte {
	t.Helper()
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatalf("ListenUDP: %v", err)
	}
	cc := &captureConn{UDPConn: udp, got: make(chan []byte, 1)}
	tr := &quic.Transport{Conn: cc}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		conn, err := tr.Dial(ctx, addr, clientTLS(t), &quic.Config{})
		if err == nil {
			_ = conn.CloseWithError(0, "")
		}
	}()
	var pkt []byte
	select {
	case pkt = <-cc.got:
	case <-time.After(bound):
		t.Fatal("no Initial packet was sent")
	}
	cancel()
	<-done
	_ = tr.Close()
	_ = udp.Close()
	return pkt
}

// captureConn keeps the first datagram written and sends nothing.
type captureConn struct {
	*net.UDPConn
	once sync.Once
	got  chan []byte
}

func (c *captureConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	c.once.Do(func() { c.got <- bytes.Clone(b) })
	return len(b), nil
}

func (c *captureConn) WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (int, int, error) {
	n, err := c.WriteTo(b, addr)
	return n, len(oob), err
}

// replay sends pkt from a new UDP socket to addr and returns the long-header
// packet type of the first answer (0 Initial, 3 Retry), or -1 when none came.
func replay(t *testing.T, pkt []byte, addr net.Addr) int {
	t.Helper()
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatalf("ListenUDP: %v", err)
	}
	defer udp.Close()
	if _, err := udp.WriteTo(pkt, addr); err != nil {
		t.Fatalf("WriteTo: %v", err)
	}
	udp.SetReadDeadline(time.Now().Add(bound))
	buf := make([]byte, 2048)
	n, _, err := udp.ReadFrom(buf)
	if err != nil || n == 0 {
		return -1
	}
	if buf[0]&0x80 == 0 {
		t.Fatalf("the answer to an Initial has a short header: %x", buf[:min(n, 16)])
	}
	return int(buf[0]>>4) & 0x3
}

const (
	packetInitial = 0
	packetRetry   = 3
)

// waitHandshaking waits until ln counts want handshakes in progress.
func waitHandshaking(t *testing.T, ln *QUICListener, want int64, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for ln.handshaking.Load() != want {
		if time.Now().After(deadline) {
			t.Fatalf("%d handshakes in progress after %v, want %d", ln.handshaking.Load(), within, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestQUICRetryPastThreshold(t *testing.T) {
	const timeout = 300 * time.Millisecond // handshake idle timeout: replayed Initials go no further
	ln := listenQUIC(t, QUICConfig{Settings: Settings{HandshakeTimeout: timeout}, RetryThreshold: 2})
	i1, i2, i3 := captureInitial(t, ln.Addr()), captureInitial(t, ln.Addr()), captureInitial(t, ln.Addr())

	// Below the threshold, an Initial starts a handshake.
	if got := replay(t, i1, ln.Addr()); got != packetInitial {
		t.Fatalf("answer to an Initial below the threshold: packet type %d, want Initial", got)
	}
	waitHandshaking(t, ln, 1, bound)
	// A completed handshake counts until Accept takes its connection.
	held := dialRawQUIC(t, ln)
	waitHandshaking(t, ln, 2, bound)

	// At the threshold, Initials without a token get a Retry: no handshake.
	for _, pkt := range [][]byte{i2, i3} {
		if got := replay(t, pkt, ln.Addr()); got != packetRetry {
			t.Fatalf("answer to an Initial at the threshold: packet type %d, want Retry", got)
		}
	}
	if n := ln.handshaking.Load(); n != 2 {
		t.Fatalf("%d handshakes in progress after two Retries, want 2", n)
	}

	// An ordinary client answers the Retry and connects.
	ordinary := dialRawQUIC(t, ln)
	acceptOne(t, ln.Accept)
	acceptOne(t, ln.Accept)
	_, _ = held, ordinary

	// The replayed Initial's handshake times out: nothing is left counted.
	waitHandshaking(t, ln, 0, 3*timeout+bound)
}

func TestQUICMaxPendingHandshakes(t *testing.T) {
	const timeout = 300 * time.Millisecond
	ln := listenQUIC(t, QUICConfig{Settings: Settings{HandshakeTimeout: timeout}, MaxPendingHandshakes: 1, RetryThreshold: 100})
	if got := replay(t, captureInitial(t, ln.Addr()), ln.Addr()); got != packetInitial {
		t.Fatalf("answer to the first Initial: packet type %d, want Initial", got)
	}
	waitHandshaking(t, ln, 1, bound)

	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	_, err := quic.DialAddr(ctx, ln.Addr().String(), clientTLS(t), &quic.Config{})
	var te *quic.TransportError
	if !errors.As(err, &te) || te.ErrorCode != quic.ConnectionRefused {
		t.Fatalf("dial beyond the cap: %v, want CONNECTION_REFUSED", err)
	}

	waitHandshaking(t, ln, 0, 3*timeout+bound)
	dialRawQUIC(t, ln)
	acceptOne(t, ln.Accept)
	if n := ln.handshaking.Load(); n != 0 {
		t.Fatalf("%d handshakes in progress after Accept, want 0", n)
	}
}

func TestTCPPingFloodFromPeerThatDoesNotRead(t *testing.T) {
	ln := listenTCP(t, TCPConfig{})
	conf := clientTLS(t)
	conf.ServerName = "localhost"
	tc, err := tls.Dial("tcp", ln.Addr().String(), conf)
	if err != nil {
		t.Fatalf("tls.Dial: %v", err)
	}
	defer tc.Close()
	s := acceptOne(t, ln.Accept)

	// Raw yamux ping requests (version 0, type 2, flag SYN), and no reads:
	// the answers pile up until the server stops taking more.
	pings := make([]byte, 12*1024)
	for i := 0; i < len(pings); i += 12 {
		pings[i+1], pings[i+3] = 2, 1
		binary.BigEndian.PutUint32(pings[i+8:], uint32(i))
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		tc.SetWriteDeadline(time.Now().Add(10 * bound))
		for {
			if _, err := tc.Write(pings); err != nil {
				return
			}
		}
	}()
	defer func() { tc.Close(); <-done }()
	select {
	case <-s.Context().Done():
	case <-time.After(10 * bound):
		t.Fatalf("the session is still up after %v of pings", 10*bound)
	}
	wantEnded(t, s, CodeProtocol)
}

// listenQUICSlots is listenQUIC for a listener that runs one TLS
// handshake at a time and refuses a connection that waited wait for it.
func listenQUICSlots(t *testing.T, handshakeTimeout, wait time.Duration) *QUICListener {
	t.Helper()
	ln, err := ListenUDP("127.0.0.1:0")
	if err != nil {
		t.Fatalf("ListenUDP: %v", err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	ln.slotWait = wait
	conf := QUICConfig{Settings: Settings{HandshakeTimeout: handshakeTimeout}, MaxHandshaking: 1, RetryThreshold: 100}
	if err := ln.Start(serverTLS(t), conf); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return ln
}

// TestQUICHandshakesBeyondTheLimitWait shows a listener that runs one TLS
// handshake at a time: a client arriving while another's handshake holds
// the slot (done, its connection not accepted yet) waits for it rather
// than being refused, and is admitted once Accept frees it.
func TestQUICHandshakesBeyondTheLimitWait(t *testing.T) {
	ln := listenQUICSlots(t, bound, time.Minute)
	dialRawQUIC(t, ln) // its handshake is done; Accept has not taken it
	// The client that waits stays connected until the server has accepted
	// it: closed at once, it could be gone before the server's side of the
	// handshake is done, and never reach Accept.
	type dialResult struct {
		conn *quic.Conn
		err  error
	}
	dialed := make(chan dialResult, 1)
	ctls := clientTLS(t)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*bound)
		defer cancel()
		conn, err := quic.DialAddr(ctx, ln.Addr().String(), ctls, &quic.Config{HandshakeIdleTimeout: 10 * bound})
		dialed <- dialResult{conn, err}
	}()
	deadline := time.Now().Add(5 * bound)
	for ln.waiting.Load() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the second client did not wait for the handshake slot within %v", 5*bound)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := ln.handshaking.Load(); n != 1 {
		t.Fatalf("%d handshakes in progress while one client waits, want 1", n)
	}
	acceptOne(t, ln.Accept) // frees the slot
	d := <-dialed
	if d.err != nil {
		t.Fatalf("the client that waited for the slot: %v, want connected", d.err)
	}
	acceptOne(t, ln.Accept)
	_ = d.conn.CloseWithError(0, "test over")
	waitHandshaking(t, ln, 0, bound)
}

// TestQUICHandshakeSlotHeldBySilentPeer shows that a client finding the
// one slot held, for longer than it may wait, by a handshake whose peer
// went silent is refused, and that the slot is free again once that
// handshake times out.
func TestQUICHandshakeSlotHeldBySilentPeer(t *testing.T) {
	const timeout, wait = 2 * time.Second, 200 * time.Millisecond
	ln := listenQUICSlots(t, timeout, wait)
	if got := replay(t, captureInitial(t, ln.Addr()), ln.Addr()); got != packetInitial {
		t.Fatalf("answer to a replayed Initial: packet type %d, want Initial", got)
	}
	waitHandshaking(t, ln, 1, bound)
	ctx, cancel := context.WithTimeout(context.Background(), 3*bound)
	defer cancel()
	_, err := quic.DialAddr(ctx, ln.Addr().String(), clientTLS(t), &quic.Config{})
	var te *quic.TransportError
	if !errors.As(err, &te) || te.ErrorCode != quic.ConnectionRefused {
		t.Fatalf("dial while a silent handshake holds the slot: %v, want CONNECTION_REFUSED", err)
	}
	waitHandshaking(t, ln, 0, 3*timeout+bound)
	dialRawQUIC(t, ln)
	acceptOne(t, ln.Accept)
}
