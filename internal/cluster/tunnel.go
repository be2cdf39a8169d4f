package cluster

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc/internal/grpcglue"
	"github.com/brpc-go/brpc/internal/muxtls"
)

// A call for a client on another replica does not go through that
// replica's gRPC stack. The origin replica asks the holding replica, over
// a link between the two, for a tunnel to the client's session: the
// holding replica opens a new stream on the session, as it does for its own
// reverse calls, and from then on copies bytes between the tunnel and the
// stream. The origin runs its own HTTP/2 client transport over the tunnel,
// so the client's *grpc.Server sees the origin's calls as it sees its own
// replica's, and the holding replica parses nothing of them.
//
// A link is one TLS 1.3 connection (mutual: the replicas' certificates),
// negotiated with ALPN tunnelALPN on the replica listener that also serves
// the gRPC replica endpoint, and multiplexed with yamux; a tunnel is one
// yamux stream. On a new stream the origin writes a request:
//
//	version (1 byte, tunnelVersion) | ID length (2 bytes, big endian) | ID
//
// and the holding replica answers with one byte before anything else
// flows: answerOK (the stream is the tunnel from now on), answerNotHere
// (no session of that client here: the origin's cache is behind), or
// answerRefused followed by a gRPC code (1 byte), a message length (2
// bytes, big endian) and the message, after which the stream is closed.

// tunnelALPN is the ALPN protocol of a link between replicas.
const tunnelALPN = "brpc-replica-tunnel/1"

const (
	tunnelVersion = 1

	answerOK      = 0
	answerNotHere = 1
	answerRefused = 2

	// maxTunnelID bounds a request's client ID; longer IDs are refused.
	maxTunnelID = 4096
	// tunnelRequestTimeout bounds how long a new stream may take to send
	// its request, and a replica to open the stream on the client's
	// session: a peer that stalls holds a goroutine no longer.
	tunnelRequestTimeout = 10 * time.Second
	// linkHandshakeTimeout bounds an incoming connection's TLS handshake.
	linkHandshakeTimeout = 10 * time.Second
	// spliceBuffer is the size of the pooled buffers tunnels copy through:
	// an HTTP/2 frame of grpc-go's default maximum size and its header.
	spliceBuffer = 16<<10 + 9
)

// errTunnelNotHere is the holding replica's answer that the client is not
// connected there.
var errTunnelNotHere = errors.New("brpc: the replica holds no session of this client")

// linkConfig is yamux's configuration on a link: one per pair of replicas,
// so its keepalive goroutine costs little, and it is what tells a link
// whose peer vanished from an idle one.
func linkConfig() *yamux.Config {
	conf := yamux.DefaultConfig()
	conf.MaxStreamWindowSize = 4 << 20
	conf.LogOutput = io.Discard
	conf.KeepAliveInterval = 15 * time.Second
	return conf
}

// writeRequest asks for a tunnel to the client id.
func writeRequest(w io.Writer, id string) error {
	b := make([]byte, 3+len(id))
	b[0] = tunnelVersion
	binary.BigEndian.PutUint16(b[1:], uint16(len(id)))
	copy(b[3:], id)
	_, err := w.Write(b)
	return err
}

// readRequest reads a tunnel request and returns the client ID it names.
func readRequest(r io.Reader) (string, error) {
	var hdr [3]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return "", err
	}
	if hdr[0] != tunnelVersion {
		return "", status.Errorf(codes.Unimplemented, "brpc: tunnel request version %d, want %d", hdr[0], tunnelVersion)
	}
	n := int(binary.BigEndian.Uint16(hdr[1:]))
	if n == 0 || n > maxTunnelID {
		return "", status.Errorf(codes.InvalidArgument, "brpc: tunnel request for a client ID of %d bytes", n)
	}
	id := make([]byte, n)
	if _, err := io.ReadFull(r, id); err != nil {
		return "", err
	}
	return string(id), nil
}

// writeRefusal answers a tunnel request with err's status.
func writeRefusal(w io.Writer, err error) {
	st := status.Convert(err)
	msg := st.Message()
	if len(msg) > 1024 {
		msg = msg[:1024]
	}
	b := make([]byte, 4+len(msg))
	b[0], b[1] = answerRefused, byte(st.Code())
	binary.BigEndian.PutUint16(b[2:], uint16(len(msg)))
	copy(b[4:], msg)
	w.Write(b)
}

// readAnswer reads the answer to a tunnel request: nil for a tunnel,
// errTunnelNotHere, or the status the replica refused it with.
func readAnswer(r io.Reader) error {
	var kind [1]byte
	if _, err := io.ReadFull(r, kind[:]); err != nil {
		return err
	}
	switch kind[0] {
	case answerOK:
		return nil
	case answerNotHere:
		return errTunnelNotHere
	case answerRefused:
		var hdr [3]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return err
		}
		msg := make([]byte, binary.BigEndian.Uint16(hdr[1:]))
		if _, err := io.ReadFull(r, msg); err != nil {
			return err
		}
		code := codes.Code(hdr[0])
		if code == codes.OK || code > codes.Unauthenticated {
			code = codes.Unknown
		}
		return status.Error(code, string(msg))
	}
	return fmt.Errorf("brpc: tunnel answer %d", kind[0])
}

// Serve serves the replica listener lis until Close, joining the cluster
// first if this replica has not yet. Each connection is TLS; by its ALPN it
// is a link that carries tunnels or a gRPC connection to the replica
// endpoint.
func (c *Cluster) Serve(lis net.Listener) error {
	if err := c.Join(); err != nil {
		lis.Close()
		return err
	}
	h2 := grpcglue.NewListener(lis.Addr())
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		lis.Close()
		return nil
	}
	c.listeners[lis] = struct{}{}
	c.mu.Unlock()
	served := make(chan struct{})
	go func() {
		// It returns once the endpoint stops or h2 closes; Accept's
		// error below is Serve's.
		c.endpoint.Serve(h2)
		close(served)
	}()
	var err error
	for {
		raw, aerr := lis.Accept()
		if aerr != nil {
			err = aerr
			break
		}
		if !c.track(raw) {
			raw.Close()
			break
		}
		go func() {
			defer c.wg.Done()
			defer c.untrack(raw)
			c.handshake(raw, h2)
		}()
	}
	c.mu.Lock()
	closed := c.closed
	delete(c.listeners, lis)
	c.mu.Unlock()
	lis.Close()
	h2.Close()
	<-served
	if closed {
		return nil
	}
	return err
}

// track records an incoming connection, so that Close can end it, and
// counts its goroutine in c.wg; it reports false once the Cluster is
// closed.
func (c *Cluster) track(conn net.Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.incoming[conn] = struct{}{}
	c.wg.Add(1)
	return true
}

func (c *Cluster) untrack(conn net.Conn) {
	c.mu.Lock()
	delete(c.incoming, conn)
	c.mu.Unlock()
	conn.Close()
}

// handshake completes an incoming connection's TLS handshake and hands it
// to the link server or the gRPC endpoint, by ALPN.
func (c *Cluster) handshake(raw net.Conn, h2 *grpcglue.Listener) {
	raw.SetDeadline(time.Now().Add(linkHandshakeTimeout))
	// A link gets the write stack of the dialing side (remote.startLink);
	// for the gRPC endpoint, the batcher only writes through.
	rb := muxtls.NewBatcher(raw)
	tc := tls.Server(rb, c.serveTLS)
	if err := tc.Handshake(); err != nil {
		return
	}
	raw.SetDeadline(time.Time{})
	if tc.ConnectionState().NegotiatedProtocol == tunnelALPN {
		c.serveLink(tc, muxtls.NewJoiner(tc, rb))
		return
	}
	// The endpoint's transport owns the connection from here; closing the
	// raw one at Close still ends it.
	done := make(chan struct{})
	if !h2.Push(context.Background(), &endpointConn{Conn: tc, done: done}) {
		return
	}
	<-done
}

// endpointConn is a connection handed to the gRPC endpoint; done is closed
// when the endpoint closes it.
type endpointConn struct {
	*tls.Conn
	once sync.Once
	done chan struct{}
}

func (c *endpointConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { close(c.done) })
	return err
}

// serveLink serves the tunnels a replica asks for on one link: yamux on
// mux, the write stack on tc. Whether the peer is a replica is decided
// once, at the link's start; a peer that is not has every tunnel refused
// with the reason.
func (c *Cluster) serveLink(tc *tls.Conn, mux io.ReadWriteCloser) {
	st := tc.ConnectionState()
	ctx := peer.NewContext(c.life, &peer.Peer{
		Addr:      tc.RemoteAddr(),
		LocalAddr: tc.LocalAddr(),
		AuthInfo:  grpcglue.TLSInfo(st),
	})
	refused := c.authorize(ctx)
	sess, err := yamux.Server(mux, linkConfig())
	if err != nil {
		return
	}
	defer sess.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		s, err := sess.AcceptStream()
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.serveTunnel(s, refused)
		}()
	}
}

// serveTunnel answers one tunnel request and, when the client is here,
// copies bytes between the tunnel and a new stream on its session until
// either ends.
func (c *Cluster) serveTunnel(s *yamux.Stream, refused error) {
	defer s.Close()
	s.SetReadDeadline(time.Now().Add(tunnelRequestTimeout))
	id, err := readRequest(s)
	if err != nil {
		if _, ok := status.FromError(err); ok {
			writeRefusal(s, err)
		}
		return
	}
	s.SetReadDeadline(time.Time{})
	if refused != nil {
		writeRefusal(s, refused)
		return
	}
	ss, ok := c.core.Lookup(id)
	if !ok {
		s.Write([]byte{answerNotHere})
		return
	}
	ctx, cancel := context.WithTimeout(c.life, tunnelRequestTimeout)
	stream, err := ss.OpenStream(ctx)
	cancel()
	if err != nil {
		writeRefusal(s, status.Errorf(codes.Unavailable, "brpc: opening a stream to client %q: %v", id, err))
		return
	}
	defer stream.Close()
	if !c.tunnelOpened() {
		writeRefusal(s, status.Error(codes.Unavailable, "brpc: the replica is stopping"))
		return
	}
	defer c.tunnelClosed()
	if _, err := s.Write([]byte{answerOK}); err != nil {
		return
	}
	splice(s, stream)
}

// tunnelOpened counts a tunnel served here; it reports false once the
// Cluster is closed.
func (c *Cluster) tunnelOpened() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.tunnels++
	return true
}

func (c *Cluster) tunnelClosed() {
	c.mu.Lock()
	c.tunnels--
	if c.tunnels == 0 && c.tunnelsDone != nil {
		close(c.tunnelsDone)
		c.tunnelsDone = nil
	}
	c.mu.Unlock()
}

// DrainTunnels waits, at most d, until no tunnel through this replica is
// open. A replica that left the presence is told so by the others' caches:
// they stop opening tunnels here, and close theirs once the calls on them
// are over.
func (c *Cluster) DrainTunnels(d time.Duration) {
	c.mu.Lock()
	if c.tunnels == 0 {
		c.mu.Unlock()
		return
	}
	if c.tunnelsDone == nil {
		c.tunnelsDone = make(chan struct{})
	}
	done := c.tunnelsDone
	c.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}

var splicePool = sync.Pool{New: func() any { b := make([]byte, spliceBuffer); return &b }}

// splice copies bytes both ways between the tunnel t and the client's
// stream x until either direction ends, then closes both. A write blocks
// while the other side's window is full, so a slow reader holds back its
// writer: nothing is buffered here beyond one pooled buffer per direction
// in flight.
//
// The bytes are an HTTP/2 connection, the origin's client transport to
// the client's server. splice parses none of it, but follows its frame
// boundaries (9-byte frame headers, lengths), for one purpose: when the
// client's side ends (its session closed), the calls whose HEADERS never
// reached the client's stream must not fail as calls cut off in flight
// do, since the client never saw them. splice then ends the connection as
// an HTTP/2 server going away would: a GOAWAY frame naming the last
// stream the client was given, so that the origin's transport knows the
// later ones unprocessed (grpc-go retries them, and the origin's retry
// finds the client gone from this replica before anything is sent).
func splice(t *yamux.Stream, x net.Conn) {
	var last uint32 // the last stream whose HEADERS went to x
	up := make(chan copyErr, 1)
	go func() {
		tr := h2Frames{preface: h2PrefaceLen}
		err := copyFrames(x, t, &tr, func(typ byte, id uint32) {
			if typ == h2Headers && id > last {
				last = id
			}
		})
		x.Close() // ends the other direction's read
		up <- err
	}()
	var down h2Frames
	goneAway := false
	downErr := copyFrames(t, x, &down, func(typ byte, _ uint32) {
		if typ == h2GoAway {
			goneAway = true
		}
	})
	// The origin may still be writing: its reads here end now.
	t.SetReadDeadline(time.Unix(1, 0))
	x.Close()
	upErr := <-up
	originEnded := upErr.side == sideSrc && !errors.Is(upErr.err, yamux.ErrTimeout)
	if downErr.side == sideSrc && !originEnded && !goneAway && down.atBoundary() {
		t.SetWriteDeadline(time.Now().Add(time.Second))
		t.Write(goAwayFrame(last))
	}
	t.Close()
}

// HTTP/2 as splice follows it (RFC 9113).
const (
	h2PrefaceLen = 24 // "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
	h2Headers    = 0x1
	h2GoAway     = 0x7
)

// goAwayFrame is a GOAWAY frame with NO_ERROR and lastStream.
func goAwayFrame(lastStream uint32) []byte {
	b := make([]byte, 9+8)
	b[2] = 8 // length
	b[3] = h2GoAway
	binary.BigEndian.PutUint32(b[9:], lastStream&0x7fffffff)
	return b
}

// h2Frames follows the frame boundaries of one direction of an HTTP/2
// connection.
type h2Frames struct {
	preface int // bytes of the client preface still to come
	hdr     [9]byte
	hdrN    int // bytes of hdr read
	payload int // bytes of the current frame's payload still to come
}

// scan advances over p, calling fn with the type and stream of each frame
// whose header completes in p.
func (f *h2Frames) scan(p []byte, fn func(typ byte, stream uint32)) {
	for len(p) > 0 {
		switch {
		case f.preface > 0:
			n := min(f.preface, len(p))
			f.preface -= n
			p = p[n:]
		case f.payload > 0:
			n := min(f.payload, len(p))
			f.payload -= n
			p = p[n:]
		default:
			n := copy(f.hdr[f.hdrN:], p)
			f.hdrN += n
			p = p[n:]
			if f.hdrN == len(f.hdr) {
				f.hdrN = 0
				f.payload = int(f.hdr[0])<<16 | int(f.hdr[1])<<8 | int(f.hdr[2])
				fn(f.hdr[3], binary.BigEndian.Uint32(f.hdr[5:])&0x7fffffff)
			}
		}
	}
}

// atBoundary reports whether the bytes so far end with a whole frame.
func (f *h2Frames) atBoundary() bool { return f.preface == 0 && f.hdrN == 0 && f.payload == 0 }

type side int

const (
	sideSrc side = iota + 1 // reading the source failed (or it ended)
	sideDst                 // writing the destination failed
)

type copyErr struct {
	side side
	err  error
}

// copyFrames copies src to dst, following the frames of what it wrote
// with tr. It waits for data before taking a buffer from the pool, so an
// idle tunnel holds none.
func copyFrames(dst, src net.Conn, tr *h2Frames, fn func(typ byte, stream uint32)) copyErr {
	wait := waitFunc(src)
	for {
		if wait != nil {
			if err := wait(); err != nil {
				return copyErr{sideSrc, err}
			}
		}
		bp := splicePool.Get().(*[]byte)
		n, err := src.Read(*bp)
		if n > 0 {
			w, werr := dst.Write((*bp)[:n])
			tr.scan((*bp)[:w], fn)
			if werr != nil {
				splicePool.Put(bp)
				return copyErr{sideDst, werr}
			}
		}
		splicePool.Put(bp)
		if err != nil {
			return copyErr{sideSrc, err}
		}
	}
}

// waitFunc returns how to wait for data on c without reading it: a
// session stream's or an origin's tunnel's WaitReadable, a yamux stream's
// read of nothing.
func waitFunc(c net.Conn) func() error {
	switch s := c.(type) {
	case interface{ WaitReadable() error }:
		return s.WaitReadable
	case *yamux.Stream:
		return func() error { _, err := s.Read(nil); return err }
	}
	return nil
}

// endpointCreds are the gRPC endpoint's transport credentials: the TLS
// handshake is over when the endpoint gets a connection, so they report
// it as grpc-go's TLS credentials would.
type endpointCreds struct{}

func (endpointCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("brpc: the replica endpoint's credentials do not dial")
}

func (endpointCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	ec, ok := conn.(*endpointConn)
	if !ok {
		return nil, nil, errors.New("brpc: a replica endpoint connection without TLS")
	}
	return conn, grpcglue.TLSInfo(ec.ConnectionState()), nil
}

func (endpointCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls", SecurityVersion: "1.3"}
}

func (c endpointCreds) Clone() credentials.TransportCredentials { return c }

func (endpointCreds) OverrideServerName(string) error { return nil }

// Tunnels is how many tunnels through this replica are open now.
func (c *Cluster) Tunnels() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.tunnels
}
