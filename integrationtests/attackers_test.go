package integrationtests

// Raw attackers: peers that speak QUIC, or TLS and yamux, themselves, so that
// they can do what brpc's own client never does (open streams before the
// welcome, write on the control stream after it, replay packets), against a
// server in this process (testenv.Env) or in a child (testenv.RemoteServer).

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/qlog"
	"github.com/quic-go/quic-go/qlogwriter"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/handshake"
	"github.com/brpc-go/brpc/internal/handshake/handshakepb"
	"github.com/brpc-go/brpc/internal/testenv"
)

// attackerTLS is what a raw attacker offers in its TLS handshake: alpn,
// and a check of the server's certificate against ep's roots.
func attackerTLS(ep testenv.Endpoint, alpn string) *tls.Config {
	return &tls.Config{RootCAs: ep.Roots, NextProtos: []string{alpn}, ServerName: "localhost"}
}

// dialRawTo opens a QUIC connection to ep with quic-go itself, offering
// alpn, from a UDP socket of its own on the loopback interface; watch, when
// not nil, follows the connection's flow. The socket, transport and
// connection are closed by t.Cleanup. It is safe to call from any goroutine.
func dialRawTo(t *testing.T, ep testenv.Endpoint, alpn string, watch *flowWatch) (*quic.Conn, error) {
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	tr := &quic.Transport{Conn: udp}
	t.Cleanup(func() {
		tr.Close()
		udp.Close()
	})
	raddr, err := net.ResolveUDPAddr("udp", ep.Addr)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), rawDialBound)
	defer cancel()
	conf := &quic.Config{MaxIdleTimeout: 30 * time.Second}
	if watch != nil {
		conf.Tracer = func(context.Context, bool, quic.ConnectionID) qlogwriter.Trace { return watch }
	}
	conn, err := tr.Dial(ctx, raddr, attackerTLS(ep, alpn), conf)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { conn.CloseWithError(0, "test over") })
	return conn, nil
}

// dialControl opens a raw QUIC connection to ep, offering brpc's ALPN,
// whose flow a flowWatch follows, and its first stream: the one the server
// takes for the control stream. Nothing is sent on it yet.
func dialControl(t *testing.T, ep testenv.Endpoint) (*quic.Conn, *flowWatch, *quic.Stream, error) {
	watch := newFlowWatch()
	conn, err := dialRawTo(t, ep, brpc.ALPN, watch)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("raw QUIC dial: %w", err)
	}
	ctrl, err := conn.OpenStream()
	if err != nil {
		return nil, nil, nil, fmt.Errorf("opening the control stream: %w", err)
	}
	return conn, watch, ctrl, nil
}

// helloOn runs the client's side of brpc's handshake by hand on ctrl, the
// first stream of a raw session; it is an error unless the server welcomes
// the client.
func helloOn(ctrl interface {
	io.ReadWriter
	SetDeadline(time.Time) error
}) error {
	ctrl.SetDeadline(time.Now().Add(10 * time.Second))
	defer ctrl.SetDeadline(time.Time{})
	if err := handshake.WriteMsg(ctrl, handshake.NewHello(nil)); err != nil {
		return fmt.Errorf("writing the hello: %w", err)
	}
	var w handshakepb.Welcome
	if err := handshake.ReadMsg(ctrl, &w, 1<<16); err != nil {
		return fmt.Errorf("reading the welcome: %w", err)
	}
	if w.GetId() == "" {
		return fmt.Errorf("the server did not welcome the client: %v", &w)
	}
	return nil
}

// flowWatch follows a raw QUIC attacker's sending from its own qlog events:
// how many STREAM frames it has sent, where flow control holds it back (it
// sent DATA_BLOCKED, or STREAM_DATA_BLOCKED on a stream, at a limit it has
// not sent past since), and the bytes it has in flight, none once all it
// sent has been acknowledged, that is, has reached the server. It is a
// qlogwriter.Trace and its Recorder.
type flowWatch struct {
	mu          sync.Mutex
	frames      int                     // STREAM frames sent
	ends        map[quic.StreamID]int64 // the highest offset sent on each stream
	sent        int64                   // the sum of ends: what connection flow control counts
	connLimit   int64                   // the last DATA_BLOCKED's limit; -1: none
	streamLimit map[quic.StreamID]int64 // the last STREAM_DATA_BLOCKED's limit on each stream
	inFlight    int                     // -1 after a STREAM or blocked frame, until the next report
	changed     chan struct{}           // closed and replaced on every change
}

func newFlowWatch() *flowWatch {
	return &flowWatch{
		ends: map[quic.StreamID]int64{}, connLimit: -1, streamLimit: map[quic.StreamID]int64{},
		inFlight: -1, changed: make(chan struct{}),
	}
}

func (w *flowWatch) AddProducer() qlogwriter.Recorder { return w }
func (w *flowWatch) Close() error                     { return nil }

func (w *flowWatch) RecordEvent(ev qlogwriter.Event) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch ev := ev.(type) {
	case qlog.PacketSent:
		for _, f := range ev.Frames {
			switch f := f.Frame.(type) {
			case *qlog.StreamFrame:
				w.frames, w.inFlight = w.frames+1, -1
				if end := f.Offset + f.Length; end > w.ends[f.StreamID] {
					w.sent += end - w.ends[f.StreamID]
					w.ends[f.StreamID] = end
				}
			case *qlog.DataBlockedFrame:
				w.connLimit, w.inFlight = int64(f.MaximumData), -1
			case *qlog.StreamDataBlockedFrame:
				w.streamLimit[f.StreamID], w.inFlight = int64(f.MaximumStreamData), -1
			}
		}
	case qlog.MetricsUpdated:
		w.inFlight = ev.BytesInFlight
	default:
		return
	}
	close(w.changed)
	w.changed = make(chan struct{})
}

// flowState is a snapshot of a flowWatch.
type flowState struct {
	frames   int
	inFlight int
	// stopped reports whether flow control holds the attacker back on all
	// of streams (or on the whole connection).
	stopped func(streams []*quic.Stream) bool
	changed <-chan struct{} // closed at the next change
}

func (w *flowWatch) state() flowState {
	w.mu.Lock()
	defer w.mu.Unlock()
	connBlocked := w.connLimit >= 0 && w.sent <= w.connLimit
	blocked := map[quic.StreamID]bool{}
	for id, limit := range w.streamLimit {
		if w.ends[id] <= limit {
			blocked[id] = true
		}
	}
	return flowState{
		frames:   w.frames,
		inFlight: w.inFlight,
		stopped: func(streams []*quic.Stream) bool {
			return connBlocked || !slices.ContainsFunc(streams, func(st *quic.Stream) bool { return !blocked[st.StreamID()] })
		},
		changed: w.changed,
	}
}

// smallFrame is what a QUIC attacker sends in one STREAM frame: quic-go
// keeps a received STREAM frame of 128 bytes or more in the buffer of the
// whole packet it came in (1452 bytes), so one frame of exactly that size
// per packet makes unread data cost the most.
const smallFrame = 128

// fillQUIC writes smallFrame bytes on each of streams in turn, waiting after
// each write until it has been sent, so that every packet carries one small
// STREAM frame, until flow control has stopped the attacker or it has
// written max bytes, and all it wrote has reached the server (watch); or
// until the server has ended the connection or every stream. It returns the
// bytes written, and an error when that has not happened within
// attackLanding.
//
// max spares time where the server is known to fail: a server that lets
// max bytes in such frames through holds at least max. With all set, the
// attacker writes all max bytes: the server reads what arrives, so flow
// control holds the attacker back only until the server has read.
func fillQUIC(conn *quic.Conn, streams []*quic.Stream, watch *flowWatch, max int, all bool) (int, error) {
	chunk := make([]byte, smallFrame)
	for i := range chunk {
		chunk[i] = byte(i)
	}
	deadline := time.Now().Add(attackLanding)
	written := 0
	for i := 0; len(streams) > 0 && conn.Context().Err() == nil; i++ {
		if time.Now().After(deadline) {
			return written, fmt.Errorf("the attack had not landed after %v (%d bytes written)", attackLanding, written)
		}
		s := watch.state()
		if !all && s.stopped(streams) || written >= max {
			// Nothing more goes out: wait for the acknowledgements.
			if s.inFlight == 0 {
				break
			}
			waitFlow(conn, s.changed)
			continue
		}
		st := streams[i%len(streams)]
		one := []*quic.Stream{st}
		if !all && s.stopped(one) {
			continue // this stream is held back, others are not
		}
		// A write of a packet's worth or less returns at once unless the
		// stream already holds that much unsent. One on a stream that flow
		// control holds back waits in quic-go, and goes out as soon as the
		// server lets it.
		st.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		n, err := st.Write(chunk)
		written += n
		var ne net.Error
		if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
			// The server stopped or reset the stream, or closed the
			// connection.
			streams = slices.DeleteFunc(streams, func(x *quic.Stream) bool { return x == st })
			continue
		}
		for n > 0 {
			now := watch.state()
			if now.frames > s.frames {
				break
			}
			if now.stopped(one) {
				if all {
					waitFlow(conn, now.changed) // until the server reads
				}
				break
			}
			if !waitFlow(conn, now.changed) {
				break
			}
		}
	}
	return written, nil
}

// attackLanding bounds how long an attacker may take to get all it writes
// to the server, so that a test fails instead of hanging.
const attackLanding = 45 * time.Second

// waitFlow waits for changed, and reports false when conn ended first or
// nothing changed for a second (then the caller looks again).
func waitFlow(conn *quic.Conn, changed <-chan struct{}) bool {
	select {
	case <-changed:
		return true
	case <-conn.Context().Done():
		return false
	case <-time.After(time.Second):
		return false
	}
}

// rawYamux is a TLS connection to ep, with brpc's ALPN, carrying a yamux
// client session, as brpc's TCP transport speaks it but without brpc's
// handshake. t.Cleanup closes it. It is safe to call from any goroutine.
func rawYamux(t *testing.T, ep testenv.Endpoint) (*yamux.Session, error) {
	d := &tls.Dialer{Config: attackerTLS(ep, brpc.ALPN)}
	ctx, cancel := context.WithTimeout(context.Background(), rawDialBound)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", ep.Addr)
	if err != nil {
		return nil, fmt.Errorf("raw TLS dial: %w", err)
	}
	conf := yamux.DefaultConfig()
	conf.EnableKeepAlive = false
	conf.LogOutput = io.Discard
	mux, err := yamux.Client(c, conf)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("yamux client: %w", err)
	}
	t.Cleanup(func() { mux.Close() })
	return mux, nil
}

// yamuxControl is rawYamux with its first stream, the one the server
// takes for the control stream. It is safe to call from any goroutine.
func yamuxControl(t *testing.T, ep testenv.Endpoint) (*yamux.Session, *yamux.Stream, error) {
	mux, err := rawYamux(t, ep)
	if err != nil {
		return nil, nil, err
	}
	ctrl, err := mux.OpenStream()
	if err != nil {
		return nil, nil, fmt.Errorf("opening the control stream: %w", err)
	}
	return mux, ctrl, nil
}

// yamuxWindow is the receive window yamux's protocol gives every stream at
// its start.
const yamuxWindow = 256 << 10

// fillYamux writes on st until yamux's flow control stops it (a write that
// gets nothing through within a second, with the server reading nothing)
// or the server ends the stream or the session, or max bytes are written.
// It returns the bytes written.
func fillYamux(st *yamux.Stream, max int) int {
	chunk := make([]byte, 32<<10)
	written := 0
	for written < max {
		st.SetWriteDeadline(time.Now().Add(time.Second))
		n, err := st.Write(chunk[:min(len(chunk), max-written)])
		written += n
		if err != nil && n == 0 {
			break
		}
	}
	st.SetWriteDeadline(time.Time{})
	return written
}

// landedYamux returns once everything mux wrote before has reached the
// server's yamux session: the server answers a ping in the order it reads
// frames, after buffering the data that came before it. It reports whether
// the session is still open.
func landedYamux(mux *yamux.Session) bool {
	_, err := mux.Ping()
	return err == nil
}

// captureInitial returns the first datagram a quic-go client offering
// brpc's ALPN sends to a server at ep's address: its Initial packet, which
// carries its ClientHello. The capture stands in for the server, so the
// client never hears back.
func captureInitial(t *testing.T, ep testenv.Endpoint) []byte {
	t.Helper()
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	ctx, cancel := context.WithCancel(context.Background())
	dialed := make(chan struct{})
	go func() {
		defer close(dialed)
		if conn, err := quic.DialAddr(ctx, udp.LocalAddr().String(), attackerTLS(ep, brpc.ALPN), nil); err == nil {
			conn.CloseWithError(0, "")
		}
	}()
	defer func() {
		cancel()
		<-dialed
	}()
	buf := make([]byte, 64<<10)
	udp.SetReadDeadline(time.Now().Add(rawDialBound))
	n, _, err := udp.ReadFromUDP(buf)
	if err != nil {
		t.Fatalf("capturing a client's Initial packet: %v", err)
	}
	return buf[:n:n]
}

// isRetry reports whether b is a QUIC version 1 Retry packet.
func isRetry(b []byte) bool {
	return len(b) > 5 && b[0]&0xf0 == 0xf0 && binary.BigEndian.Uint32(b[1:5]) == 1
}

// replayer sends one datagram to a server again and again, from several
// sockets of its own in turn, and counts what the server answers.
// quic-go routes an Initial by its Destination Connection ID, whatever its
// source: an exact copy reaches the connection the first one started, and
// is dropped as a duplicate. A replayer that renames gives every copy a
// connection ID of its own instead, as a flood of new connections would
// have; the server cannot decrypt such a copy (Initial keys derive from
// that ID), but only after it has set up a connection for it.
type replayer struct {
	socks   []*net.UDPConn
	sent    atomic.Int64
	retries atomic.Int64 // Retry packets received
	others  atomic.Int64 // other datagrams received
	stop    chan struct{}
	wg      sync.WaitGroup
}

// startReplay sends pkt to addr, rate datagrams a second in all, from
// sources sockets in turn, until stopped, each copy with a Destination
// Connection ID of its own when rename is set; t.Cleanup stops it.
func startReplay(t *testing.T, addr string, pkt []byte, sources, rate int, rename bool) *replayer {
	t.Helper()
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	r := &replayer{stop: make(chan struct{})}
	t.Cleanup(r.Stop)
	for range sources {
		u, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, raddr)
		if err != nil {
			t.Fatal(err)
		}
		r.socks = append(r.socks, u)
		r.wg.Go(func() {
			buf := make([]byte, 64<<10)
			for {
				n, err := u.Read(buf)
				if err != nil {
					var ne net.Error
					if errors.As(err, &ne) && !ne.Timeout() || errors.Is(err, net.ErrClosed) {
						return
					}
					continue
				}
				if isRetry(buf[:n]) {
					r.retries.Add(1)
				} else {
					r.others.Add(1)
				}
			}
		})
	}
	r.wg.Go(func() {
		// Datagrams go out in bursts every millisecond, so that the rate
		// holds whatever the timer's resolution.
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		start := time.Now()
		out := slices.Clone(pkt)
		dcid := out[6 : 6+int(out[5])]
		for i := 0; ; {
			select {
			case <-r.stop:
				return
			case now := <-tick.C:
				due := int(now.Sub(start).Seconds() * float64(rate))
				for ; i < due; i++ {
					if rename {
						binary.BigEndian.PutUint64(dcid, uint64(i)^0x9e3779b97f4a7c15)
					}
					r.socks[i%len(r.socks)].Write(out)
					r.sent.Add(1)
				}
			}
		}
	})
	return r
}

// Stop stops sending, closes the sockets and waits for the readers. It may
// be called more than once.
func (r *replayer) Stop() {
	select {
	case <-r.stop:
		return
	default:
	}
	close(r.stop)
	for _, u := range r.socks {
		u.Close()
	}
	r.wg.Wait()
}

// String sums the replay up for a test's log.
func (r *replayer) String() string {
	return fmt.Sprintf("%d datagrams sent from %d sockets; answers: %d Retry packets, %d other datagrams",
		r.sent.Load(), len(r.socks), r.retries.Load(), r.others.Load())
}
