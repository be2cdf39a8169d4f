package integrationtests

// Hostile and broken peers: garbage datagrams, QUIC clients that stall or
// break the brpc handshake, wrong ALPN, misbehaving authenticators and a
// crowd of half-open handshakes. Every test checks that the bad peer gets a
// clean rejection, that the server keeps serving ordinary clients and (with
// goleak in TestMain) that nothing is left running.

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/handshake"
	"github.com/brpc-go/brpc/internal/handshake/handshakepb"
	"github.com/brpc-go/brpc/internal/session"
	"github.com/brpc-go/brpc/internal/testenv"
)

const (
	// hostileHandshakeTimeout is the server's handshake timeout in these tests.
	hostileHandshakeTimeout = 300 * time.Millisecond
	// hostileBound is the generous upper bound for anything the server is
	// expected to do promptly (cut a stalled client, answer a bad hello).
	hostileBound = 5 * time.Second
	// rawDialBound bounds a raw QUIC dial. It is not what the tests are about,
	// and 50 concurrent TLS handshakes under the race detector on a loaded
	// machine can take a while.
	rawDialBound = 20 * time.Second
)

// hostileEnv is a server whose handshake timeout is short, plus opts.
func hostileEnv(t *testing.T, opts ...brpc.ServerOption) *testenv.Env {
	t.Helper()
	return testenv.New(t, testenv.Config{ServerOpts: append([]brpc.ServerOption{brpc.WithHandshakeTimeout(hostileHandshakeTimeout)}, opts...)})
}

// dialRaw opens a raw QUIC connection to e's server, offering alpn (see
// dialRawTo). It is safe to call from any goroutine.
func dialRaw(t *testing.T, e *testenv.Env, alpn string) (*quic.Conn, error) {
	return dialRawTo(t, e.Endpoint(), alpn, nil)
}

func mustDialRaw(t *testing.T, e *testenv.Env) *quic.Conn {
	t.Helper()
	conn, err := dialRaw(t, e, brpc.ALPN)
	if err != nil {
		t.Fatalf("raw QUIC dial: %v", err)
	}
	return conn
}

// openCtrl opens the stream that the server takes for the control stream.
func openCtrl(t *testing.T, conn *quic.Conn) *quic.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hostileBound)
	defer cancel()
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		t.Fatalf("OpenStreamSync: %v", err)
	}
	return st
}

func write(t *testing.T, st *quic.Stream, b []byte) {
	t.Helper()
	st.SetWriteDeadline(time.Now().Add(hostileBound))
	if _, err := st.Write(b); err != nil {
		t.Fatalf("writing %d bytes on the control stream: %v", len(b), err)
	}
}

// frame returns the length prefix and body of m as the control stream frames them.
func frame(t *testing.T, m proto.Message) (hdr, body []byte) {
	t.Helper()
	body, err := proto.Marshal(m)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	hdr = binary.BigEndian.AppendUint32(nil, uint32(len(body)))
	return hdr, body
}

// readWelcome reads the server's welcome from the control stream.
func readWelcome(t *testing.T, st *quic.Stream) *handshakepb.Welcome {
	t.Helper()
	st.SetReadDeadline(time.Now().Add(hostileBound))
	var w handshakepb.Welcome
	if err := handshake.ReadMsg(st, &w, handshake.DefaultMaxMessageSize); err != nil {
		t.Fatalf("reading the welcome: %v", err)
	}
	return &w
}

// wantRejected checks that w refuses the client with code.
func wantRejected(t *testing.T, w *handshakepb.Welcome, code codes.Code) {
	t.Helper()
	if w.GetStatus() == nil {
		t.Fatalf("welcome %v admits the client (id %q), want a rejection with %v", w, w.GetId(), code)
	}
	if got := codes.Code(w.GetStatus().GetCode()); got != code {
		t.Fatalf("welcome rejects with %v (%q), want %v", got, w.GetStatus().GetMessage(), code)
	}
	if w.GetId() != "" {
		t.Fatalf("rejecting welcome carries ID %q", w.GetId())
	}
}

// wantServerClose waits until conn has ended and checks that the server
// closed it on purpose with code.
func wantServerClose(t *testing.T, conn *quic.Conn, code session.CloseCode, within time.Duration) {
	t.Helper()
	timer := time.NewTimer(within)
	defer timer.Stop()
	select {
	case <-conn.Context().Done():
	case <-timer.C:
		t.Fatalf("the server did not close the connection within %v", within)
	}
	err := context.Cause(conn.Context())
	var appErr *quic.ApplicationError
	if !errors.As(err, &appErr) {
		t.Fatalf("connection ended with %v (%T), want a *quic.ApplicationError", err, err)
	}
	if !appErr.Remote {
		t.Fatalf("connection ended with a local error %v, want the server's close", appErr)
	}
	if got := session.CloseCode(appErr.ErrorCode); got != code {
		t.Fatalf("server closed with code %d (%q), want %d", got, appErr.ErrorMessage, code)
	}
}

func wantNoPeers(t *testing.T, e *testenv.Env) {
	t.Helper()
	if p := e.Srv.Peers(); len(p) != 0 {
		t.Fatalf("Peers() = %v, want none", p)
	}
}

// garbageDatagrams returns random datagrams: pure noise, and noise dressed
// as QUIC packets (v1 Initial, Handshake and 0-RTT long headers, unknown and
// zero versions, short headers) so that the server's parser gets past the
// first byte, in sizes from 1 byte to beyond the 1200-byte Initial minimum.
func garbageDatagrams(r *rand.Rand) [][]byte {
	sizes := []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 20, 21, 22, 30, 45, 64, 100, 200, 512, 1000, 1199, 1200, 1201, 1252, 1280, 1350, 1452, 1472, 1500, 3000}
	var out [][]byte
	for round := 0; round < 2; round++ {
		for _, size := range sizes {
			for kind := 0; kind < 7; kind++ {
				b := make([]byte, size)
				for i := range b {
					b[i] = byte(r.Uint32())
				}
				dressAsQUIC(b, kind, r)
				out = append(out, b)
			}
		}
	}
	r.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

func dressAsQUIC(b []byte, kind int, r *rand.Rand) {
	if len(b) < 7 {
		return
	}
	switch kind {
	case 0: // pure noise
		return
	case 1: // short header
		b[0] = 0x40 | b[0]&0x3f
		return
	case 2, 3, 4: // v1 Initial, 0-RTT, Handshake
		b[0] = 0xc0 | byte(kind-2)<<4 | b[0]&0x0f
		binary.BigEndian.PutUint32(b[1:5], 1)
	case 5: // an unknown version: the server may answer with version negotiation
		b[0] |= 0x80
		binary.BigEndian.PutUint32(b[1:5], 0x1a2a3a4a)
	case 6: // version 0: a version negotiation packet sent to a server
		b[0] |= 0x80
		binary.BigEndian.PutUint32(b[1:5], 0)
	}
	// Plausible connection ID lengths, a zero-length token for Initials and a
	// packet length that matches the datagram, so that parsing gets far.
	dcid := 8 + r.IntN(13)
	if len(b) < 5+1+dcid+1+2+2 {
		return
	}
	b[5] = byte(dcid)
	i := 6 + dcid
	b[i] = 0 // SCID length
	i++
	if kind == 2 {
		b[i] = 0 // token length
		i++
	}
	if rest := len(b) - i - 2; rest > 0 && rest < 1<<14 {
		binary.BigEndian.PutUint16(b[i:], 0x4000|uint16(rest))
	}
}

func TestHostileGarbageDatagrams(t *testing.T) {
	e := hostileEnv(t)
	before := e.WantServes(t, "before")

	seed := uint64(time.Now().UnixNano())
	t.Logf("garbage seed %d", seed)
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	dgrams := garbageDatagrams(r)

	raddr, err := net.ResolveUDPAddr("udp", e.Addr)
	if err != nil {
		t.Fatal(err)
	}
	// Several sources, so that the server sees garbage from more than one
	// address.
	var socks []*net.UDPConn
	for i := 0; i < 4; i++ {
		u, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, raddr)
		if err != nil {
			t.Fatal(err)
		}
		defer u.Close()
		socks = append(socks, u)
	}
	big := 0
	for i, d := range dgrams {
		if _, err := socks[i%len(socks)].Write(d); err != nil {
			t.Fatalf("sending garbage datagram %d (%d bytes): %v", i, len(d), err)
		}
		if len(d) >= 1200 {
			big++
		}
		if i%25 == 24 {
			time.Sleep(time.Millisecond) // let the server read rather than drop
		}
	}
	t.Logf("sent %d garbage datagrams, %d of them of 1200 bytes or more", len(dgrams), big)

	// The client connected before keeps working, a new one connects, and
	// the garbage has admitted nobody.
	testenv.CallOK(t, before, "before")
	e.WantServes(t, "after")
	if n := len(e.Srv.Peers()); n != 2 {
		t.Fatalf("Peers() has %d clients, want the 2 real ones: %v", n, e.Srv.Peers())
	}
}

func TestHostileSilentConnection(t *testing.T) {
	t.Run("no stream", func(t *testing.T) {
		e := hostileEnv(t)
		conn := mustDialRaw(t, e)
		wantNoPeers(t, e)
		wantServerClose(t, conn, session.CodeHandshakeTimeout, hostileBound)
		wantNoPeers(t, e)
		e.WantServes(t, "alice")
	})
	t.Run("stream opened, nothing written", func(t *testing.T) {
		e := hostileEnv(t)
		conn := mustDialRaw(t, e)
		openCtrl(t, conn)
		wantServerClose(t, conn, session.CodeHandshakeTimeout, hostileBound)
		wantNoPeers(t, e)
		e.WantServes(t, "alice")
	})
}

func TestHostilePartialHello(t *testing.T) {
	hello := handshake.NewHello(metadata.Pairs("token", strings.Repeat("t", 200)))
	cases := []struct {
		name string
		send func(hdr, body []byte) []byte
	}{
		{"2 of 4 length bytes", func(hdr, _ []byte) []byte { return hdr[:2] }},
		{"length only", func(hdr, _ []byte) []byte { return hdr }},
		{"length and half the body", func(hdr, body []byte) []byte { return append(hdr, body[:len(body)/2]...) }},
		{"body one byte short", func(hdr, body []byte) []byte { return append(hdr, body[:len(body)-1]...) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := hostileEnv(t)
			conn := mustDialRaw(t, e)
			st := openCtrl(t, conn)
			hdr, body := frame(t, hello)
			write(t, st, tc.send(hdr, body))
			wantServerClose(t, conn, session.CodeHandshakeTimeout, hostileBound)
			wantNoPeers(t, e)
			e.WantServes(t, "alice")
		})
	}
}

func TestHostileOversizedHelloFrame(t *testing.T) {
	for _, announced := range []uint32{brpc.DefaultMaxHelloSize + 1, 1 << 30, 0xffffffff} {
		t.Run(fmt.Sprint(announced), func(t *testing.T) {
			e := hostileEnv(t)
			conn := mustDialRaw(t, e)
			st := openCtrl(t, conn)
			// The announced length and a little of the body: the server must
			// refuse on the length alone, without waiting for the rest.
			msg := binary.BigEndian.AppendUint32(nil, announced)
			msg = append(msg, make([]byte, 100)...)
			write(t, st, msg)
			wantRejected(t, readWelcome(t, st), codes.ResourceExhausted)
			conn.CloseWithError(0, "read the rejection")
			wantNoPeers(t, e)
			e.WantServes(t, "alice")
		})
	}
}

func TestHostileOversizedHelloDial(t *testing.T) {
	e := hostileEnv(t, brpc.WithMaxHelloSize(1024))
	md := metadata.Pairs("blob", strings.Repeat("x", 2048))
	start := time.Now()
	c, err := e.Dial(testenv.ClientConfig{Name: "big", MD: md})
	if err == nil {
		c.Shutdown()
		t.Fatalf("Dial with a %d-byte hello succeeded against a 1024-byte limit", proto.Size(handshake.NewHello(md)))
	}
	testenv.WantCode(t, err, codes.ResourceExhausted, "Dial with an oversized hello")
	if d := time.Since(start); d > hostileBound {
		t.Fatalf("the rejection took %v", d)
	}
	wantNoPeers(t, e)
	// A hello within the limit is still welcome.
	c, err = e.Dial(testenv.ClientConfig{Name: "small", MD: metadata.Pairs("blob", strings.Repeat("x", 100))})
	if err != nil {
		t.Fatalf("Dial with a small hello: %v", err)
	}
	defer c.Shutdown()
	testenv.CallOK(t, c, "small")
}

// A hello above the limit is refused with codes.ResourceExhausted whatever
// its size. The server refuses it on its length prefix and does not read the
// body, so a hello larger than QUIC's initial stream flow-control window
// (512 KiB in quic-go) cannot be written completely: the client must still
// learn that its hello was too large.
func TestHostileHugeHelloDial(t *testing.T) {
	for _, size := range []int{256 << 10, 1 << 20} {
		t.Run(fmt.Sprintf("%dKiB", size>>10), func(t *testing.T) {
			e := hostileEnv(t)
			md := metadata.Pairs("blob", strings.Repeat("x", size))
			start := time.Now()
			c, err := e.Dial(testenv.ClientConfig{Name: "huge", MD: md})
			if err == nil {
				c.Shutdown()
				t.Fatalf("Dial with a %d KiB hello succeeded against the %d-byte default limit", size>>10, brpc.DefaultMaxHelloSize)
			}
			t.Logf("Dial returned after %v: %v", time.Since(start), err)
			testenv.WantCode(t, err, codes.ResourceExhausted, "Dial with an oversized hello")
			wantNoPeers(t, e)
			e.WantServes(t, "alice")
		})
	}
}

func TestHostileMalformedHello(t *testing.T) {
	for _, body := range [][]byte{
		{0xff, 0xff, 0xff},             // a truncated varint tag
		{0x0a, 0x05, 0x01},             // field 1 as a 5-byte string with 1 byte present
		{0x1a, 0x02, 0x0a, 0xff},       // a metadata entry whose key overruns it
		{0x1a, 0x03, 0x0a, 0x01, 0xc3}, // a metadata key that is not UTF-8
	} {
		t.Run("", func(t *testing.T) {
			t.Parallel() // each waits out the server's linger after a rejection
			e := hostileEnv(t)
			conn := mustDialRaw(t, e)
			st := openCtrl(t, conn)
			write(t, st, append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...))
			wantRejected(t, readWelcome(t, st), codes.InvalidArgument)
			// The client does not go away by itself: the server ends the
			// session, with the refusal's code in the close code too.
			wantServerClose(t, conn, handshake.RefusedCode(codes.InvalidArgument), hostileBound)
			wantNoPeers(t, e)
			e.WantServes(t, "alice")
		})
	}
}

func TestHostileUnsupportedVersion(t *testing.T) {
	for _, tc := range []struct {
		name  string
		hello *handshakepb.Hello
	}{
		{"99 only", &handshakepb.Hello{ProtocolVersion: 99, MinProtocolVersion: 99}},
		{"2 and up", &handshakepb.Hello{ProtocolVersion: 7, MinProtocolVersion: 2}},
		{"no version", &handshakepb.Hello{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // each waits out the server's linger after a rejection
			e := hostileEnv(t)
			conn := mustDialRaw(t, e)
			st := openCtrl(t, conn)
			hdr, body := frame(t, tc.hello)
			write(t, st, append(hdr, body...))
			wantRejected(t, readWelcome(t, st), codes.FailedPrecondition)
			wantServerClose(t, conn, handshake.RefusedCode(codes.FailedPrecondition), hostileBound)
			wantNoPeers(t, e)
			e.WantServes(t, "alice")
		})
	}
}

func TestHostileWrongALPN(t *testing.T) {
	e := hostileEnv(t)
	for _, alpn := range []string{"h3", "brpc/0", "brpc/2"} {
		start := time.Now()
		conn, err := dialRaw(t, e, alpn)
		if err == nil {
			conn.CloseWithError(0, "")
			t.Fatalf("QUIC handshake offering ALPN %q succeeded", alpn)
		}
		var terr *quic.TransportError
		if !errors.As(err, &terr) || !terr.ErrorCode.IsCryptoError() {
			t.Fatalf("dial offering %q: %v (%T), want a TLS alert from the server", alpn, err, err)
		}
		if d := time.Since(start); d > hostileBound {
			t.Fatalf("dial offering %q took %v to fail", alpn, d)
		}
		t.Logf("ALPN %q refused: %v", alpn, err)
	}
	// quic.DialAddr, with its own single-use transport, fails the same way.
	ctx, cancel := context.WithTimeout(context.Background(), hostileBound)
	defer cancel()
	conn, err := quic.DialAddr(ctx, e.Addr, &tls.Config{RootCAs: e.CA.Pool, NextProtos: []string{"h3"}, ServerName: "localhost"}, nil)
	if err == nil {
		conn.CloseWithError(0, "")
		t.Fatal("quic.DialAddr offering h3 succeeded")
	}
	wantNoPeers(t, e)
	e.WantServes(t, "alice")
}

// hostileAuth admits clients whose metadata has no "mode"; the others get
// what their mode says. running counts the calls in progress.
func hostileAuth(running *atomic.Int32) brpc.Authenticator {
	var n atomic.Int32
	return func(ctx context.Context, info brpc.AuthInfo) (string, error) {
		running.Add(1)
		defer running.Add(-1)
		mode := info.Metadata.Get("mode")
		if len(mode) == 0 {
			return "good-" + string(rune('a'+n.Add(1))), nil
		}
		switch mode[0] {
		case "panic":
			panic("hostile authenticator")
		case "nil-panic":
			var m map[string]int
			m["boom"]++
			return "", nil
		case "deny":
			return "", status.Error(codes.PermissionDenied, "not you")
		case "plain":
			return "", errors.New("bad token")
		case "block":
			<-ctx.Done()
			return "", ctx.Err()
		}
		return "", status.Error(codes.InvalidArgument, "unknown mode")
	}
}

func TestHostileAuthenticator(t *testing.T) {
	for _, tc := range []struct {
		mode string
		want codes.Code // codes.OK: any error will do
	}{
		{"panic", codes.Internal},
		{"nil-panic", codes.Internal},
		{"deny", codes.PermissionDenied},
		{"plain", codes.Unauthenticated},
		{"block", codes.OK},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			var running atomic.Int32
			e := hostileEnv(t, brpc.WithAuthenticator(hostileAuth(&running)))
			before := e.WantServes(t, "before")

			start := time.Now()
			c, err := e.Dial(testenv.ClientConfig{Name: "bad", MD: metadata.Pairs("mode", tc.mode)})
			if err == nil {
				c.Shutdown()
				t.Fatalf("Dial with mode %q was admitted as %q", tc.mode, c.ID())
			}
			if d := time.Since(start); d > hostileBound {
				t.Fatalf("Dial with mode %q took %v to fail", tc.mode, d)
			}
			if tc.want != codes.OK {
				testenv.WantCode(t, err, tc.want, "Dial with mode "+tc.mode)
			} else if status.Code(err) == codes.OK || status.Code(err) == codes.Unknown {
				t.Fatalf("Dial with mode %q: %v, want a gRPC status error", tc.mode, err)
			}
			t.Logf("mode %s: %v", tc.mode, err)
			testenv.WaitFor(t, hostileBound, "the authenticator calls to return", func() bool { return running.Load() == 0 })

			if n := len(e.Srv.Peers()); n != 1 {
				t.Fatalf("Peers() = %v, want only the client connected before", e.Srv.Peers())
			}
			testenv.CallOK(t, before, "before")
			e.WantServes(t, "after")
		})
	}
}

func TestHostileManyHalfOpen(t *testing.T) {
	// A longer handshake timeout than elsewhere, so that the ordinary client
	// really connects while the half-open ones are still waiting.
	const timeout = time.Second
	e := testenv.New(t, testenv.Config{ServerOpts: []brpc.ServerOption{brpc.WithHandshakeTimeout(timeout)}})
	const n = 50
	conns := make([]*quic.Conn, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			conns[i], errs[i] = dialRaw(t, e, brpc.ALPN)
			if errs[i] != nil || i%2 == 0 {
				return
			}
			// Half of them open a stream and send a fragment of a frame.
			// On a loaded machine the server may already have cut this
			// connection: that is fine, it is checked below.
			ctx, cancel := context.WithTimeout(context.Background(), hostileBound)
			defer cancel()
			st, err := conns[i].OpenStreamSync(ctx)
			if err == nil {
				st.SetWriteDeadline(time.Now().Add(hostileBound))
				_, err = st.Write([]byte{0, 0, 1})
			}
			if err != nil && conns[i].Context().Err() == nil {
				errs[i] = err
			}
		})
	}
	wg.Wait()
	// The server's handshake timeout bounds the TLS handshake too: on a
	// loaded machine it may drop a raw dial before the dial completes,
	// which that dial sees as silence (an idle timeout). That is the bound
	// at work; any other dial error is not.
	dialed := 0
	for i, err := range errs {
		var idle *quic.IdleTimeoutError
		switch {
		case err == nil:
			dialed++
		case conns[i] == nil && errors.As(err, &idle):
			t.Logf("half-open connection %d was dropped during its TLS handshake: %v", i, err)
		default:
			t.Fatalf("half-open connection %d: %v", i, err)
		}
	}
	if dialed < n/5 {
		t.Fatalf("only %d of %d half-open connections got through their TLS handshake", dialed, n)
	}

	c := e.WantServes(t, "alice")
	open := 0
	for _, conn := range conns {
		if conn != nil && conn.Context().Err() == nil {
			open++
		}
	}
	t.Logf("%d of %d half-open connections were still open when the ordinary call completed", open, n)

	for _, conn := range conns {
		if conn != nil {
			wantServerClose(t, conn, session.CodeHandshakeTimeout, hostileBound)
		}
	}
	if p := e.Srv.Peers(); len(p) != 1 || p[0].ID != c.ID() {
		t.Fatalf("Peers() = %v, want only %q", p, c.ID())
	}
	testenv.CallOK(t, c, "alice")
}

// A welcomed raw client that opens a stream and writes garbage where grpc-go
// expects the HTTP/2 preface loses that stream; the server stays up.
func TestHostileGarbageStreamAfterWelcome(t *testing.T) {
	e := hostileEnv(t)
	conn := mustDialRaw(t, e)
	ctrl := openCtrl(t, conn)
	hdr, body := frame(t, handshake.NewHello(nil))
	write(t, ctrl, append(hdr, body...))
	w := readWelcome(t, ctrl)
	if w.GetStatus() != nil || w.GetId() == "" {
		t.Fatalf("a proper hello was not welcomed: %v", w)
	}
	testenv.WaitFor(t, hostileBound, "the raw client to be registered", func() bool { return len(e.Srv.Peers()) == 1 })

	st := openCtrl(t, conn)
	garbage := make([]byte, 300)
	for i := range garbage {
		garbage[i] = byte(i*7 + 3)
	}
	write(t, st, garbage)
	st.SetReadDeadline(time.Now().Add(hostileBound))
	buf := make([]byte, 4096)
	var err error
	for err == nil {
		_, err = st.Read(buf)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the server kept a stream of garbage open for %v", hostileBound)
	}
	t.Logf("garbage stream ended with %v", err)

	e.WantServes(t, "alice")
	conn.CloseWithError(0, "bye")
	testenv.WaitFor(t, hostileBound, "the raw client to leave Peers()", func() bool { return len(e.Srv.Peers()) == 1 })
}

// Stop ends every session whatever state its handshake is in: connections
// that never spoke, a partial hello, an authenticator still deciding, a
// rejection lingering for the client to read it. It returns promptly and
// every one of those clients sees the connection closed by the server.
func TestHostileStopDuringHandshakes(t *testing.T) {
	var running atomic.Int32
	e := testenv.New(t, testenv.Config{ServerOpts: []brpc.ServerOption{
		brpc.WithHandshakeTimeout(time.Minute), // nothing ends by itself during the test
		brpc.WithAuthenticator(hostileAuth(&running)),
	}})
	good := e.WantServes(t, "alice")

	var silent, partial, authing, lingering []*quic.Conn
	for range 10 {
		silent = append(silent, mustDialRaw(t, e))
	}
	for range 5 {
		conn := mustDialRaw(t, e)
		write(t, openCtrl(t, conn), []byte{0, 0})
		partial = append(partial, conn)
	}
	for range 3 {
		conn := mustDialRaw(t, e)
		hdr, body := frame(t, handshake.NewHello(metadata.Pairs("mode", "block")))
		write(t, openCtrl(t, conn), append(hdr, body...))
		authing = append(authing, conn)
	}
	for range 3 {
		conn := mustDialRaw(t, e)
		st := openCtrl(t, conn)
		write(t, st, []byte{0, 0, 0, 3, 0xff, 0xff, 0xff})
		wantRejected(t, readWelcome(t, st), codes.InvalidArgument)
		lingering = append(lingering, conn)
	}
	testenv.WaitFor(t, hostileBound, "3 authenticator calls in progress", func() bool { return running.Load() == 3 })
	if p := e.Srv.Peers(); len(p) != 1 || p[0].ID != good.ID() {
		t.Fatalf("Peers() = %v, want only %q", p, good.ID())
	}

	start := time.Now()
	e.Srv.Stop()
	if d := time.Since(start); d > hostileBound {
		t.Fatalf("Stop took %v with handshakes pending", d)
	}
	if n := running.Load(); n != 0 {
		t.Fatalf("%d authenticator calls still running after Stop", n)
	}
	for _, conn := range append(authing, lingering...) {
		wantServerClose(t, conn, session.CodeShutdown, hostileBound)
	}
	for i, conn := range append(silent, partial...) {
		select {
		case <-conn.Context().Done():
		case <-time.After(hostileBound):
			t.Fatalf("half-open connection %d still open %v after Stop", i, hostileBound)
		}
		err := context.Cause(conn.Context())
		var appErr *quic.ApplicationError
		var trErr *quic.TransportError
		switch {
		case errors.As(err, &appErr) && appErr.Remote:
		case errors.As(err, &trErr) && trErr.Remote:
		default:
			t.Fatalf("half-open connection %d ended with %v (%T), want a close from the server", i, err, err)
		}
	}
	if p := e.Srv.Peers(); len(p) != 0 {
		t.Fatalf("Peers() = %v after Stop", p)
	}
}
