package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc/internal/grpcglue"
	"github.com/brpc-go/brpc/internal/muxtls"
)

// remote is this replica's way to another replica: one link (dialed on
// the first tunnel, again after it fails) and the clients of that replica
// this one has called lately. A replica that leaves retires its remote:
// no new calls go there, each client's connection closes once its calls
// in flight are over (a replica that stops gracefully still finishes
// them), and the link closes with the last.
type remote struct {
	c          *Cluster
	name, addr string

	// Under the Cluster's mu.
	clients map[string]*fwdClient
	retired bool
	open    int // clients not yet closed

	linkMu sync.Mutex // one dial at a time
	link   *link
}

// link is one TLS connection to another replica's listener, multiplexed.
type link struct {
	sess *yamux.Session
	info *grpcglue.SessionInfo // what the calls on its tunnels report as their peer
}

// linkConn gives a link's TLS connection the view grpcglue.SessionInfo
// reads.
type linkConn struct{ *tls.Conn }

func (c linkConn) TLS() tls.ConnectionState { return c.ConnectionState() }

// getLink returns the link to the replica, dialing it if there is none or
// the last one failed.
func (rm *remote) getLink(ctx context.Context, fresh bool) (*link, error) {
	rm.linkMu.Lock()
	defer rm.linkMu.Unlock()
	if l := rm.link; l != nil && !fresh && !l.sess.IsClosed() {
		return l, nil
	}
	if rm.link != nil {
		rm.link.sess.Close()
		rm.link = nil
	}
	// The caller's context may have no deadline; a link that takes longer
	// than a tunnel request would hold every tunnel to the replica.
	ctx, cancel := context.WithTimeout(ctx, tunnelRequestTimeout)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", rm.addr)
	if err != nil {
		return nil, err
	}
	l, err := rm.startLink(ctx, raw)
	if err != nil {
		raw.Close()
		return nil, err
	}
	rm.link = l
	return l, nil
}

// startLink runs the link's TLS handshake on raw, a connection to the
// replica, and multiplexes it. Writes go yamux, a muxtls.Joiner (a data
// frame's header with its body, in one TLS record), TLS, a muxtls.Batcher
// (a frame's records in one system call), raw: the stack of brpc's TCP
// sessions, which the listener's side of a link builds too (handshake).
func (rm *remote) startLink(ctx context.Context, raw net.Conn) (*link, error) {
	conf := rm.c.dialTLS.Clone()
	if conf.ServerName == "" {
		if host, _, err := net.SplitHostPort(rm.addr); err == nil {
			conf.ServerName = host
		}
	}
	rb := muxtls.NewBatcher(raw)
	tc := tls.Client(rb, conf)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, err
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != tunnelALPN {
		return nil, errors.New("the replica does not serve tunnels (ALPN " + p + ")")
	}
	sess, err := yamux.Client(muxtls.NewJoiner(tc, rb), linkConfig())
	if err != nil {
		return nil, err
	}
	return &link{sess: sess, info: grpcglue.NewSessionInfo(grpcglue.Peer{Transport: "tcp"}, linkConn{tc}, nil)}, nil
}

// closeLink closes the link, ending every tunnel on it.
func (rm *remote) closeLink() {
	rm.linkMu.Lock()
	defer rm.linkMu.Unlock()
	if rm.link != nil {
		rm.link.sess.Close()
		rm.link = nil
	}
}

// openTunnel asks the replica for a tunnel to the client id. Its errors:
// errTunnelNotHere when the replica holds no session of id, the status
// the replica refused it with, or codes.Unavailable when the replica
// could not be reached.
func (rm *remote) openTunnel(ctx context.Context, id string) (*tunnel, error) {
	var lastErr error
	// A link that failed since its last use is dialed once more.
	for attempt := range 2 {
		l, err := rm.getLink(ctx, attempt > 0)
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "brpc: connecting to replica %q at %s: %v", rm.name, rm.addr, err)
		}
		s, err := l.sess.OpenStream()
		if err != nil {
			lastErr = err
			continue
		}
		t, err := rm.request(ctx, l, s, id)
		if err == nil || errors.Is(err, errTunnelNotHere) {
			return t, err
		}
		if _, ok := status.FromError(err); ok {
			return nil, err
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	if ctx.Err() != nil {
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	return nil, status.Errorf(codes.Unavailable, "brpc: opening a tunnel through replica %q: %v", rm.name, lastErr)
}

// request sends the tunnel request on s and reads the answer, within
// ctx and tunnelRequestTimeout.
func (rm *remote) request(ctx context.Context, l *link, s *yamux.Stream, id string) (*tunnel, error) {
	deadline := time.Now().Add(tunnelRequestTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	s.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { s.SetDeadline(time.Unix(1, 0)) })
	err := writeRequest(s, id)
	if err == nil {
		err = readAnswer(s)
	}
	if !stop() || err != nil {
		s.Close()
		if err == nil {
			err = ctx.Err()
		}
		return nil, err
	}
	s.SetDeadline(time.Time{})
	return &tunnel{Stream: s, link: l}, nil
}

// tunnel is this end of a tunnel to a client: what an HTTP/2 client
// transport runs on. It tells its fwdClient when it fails or closes.
type tunnel struct {
	*yamux.Stream
	link   *link
	dead   atomic.Bool
	onDead atomic.Pointer[func()]
}

func (t *tunnel) died() {
	if t.dead.CompareAndSwap(false, true) {
		if f := t.onDead.Load(); f != nil {
			(*f)()
		}
	}
}

func (t *tunnel) Read(p []byte) (int, error) {
	n, err := t.Stream.Read(p)
	if err != nil {
		t.died()
	}
	return n, err
}

func (t *tunnel) Write(p []byte) (int, error) {
	n, err := t.Stream.Write(p)
	if err != nil {
		t.died()
	}
	return n, err
}

// WaitReadable waits for data without taking any (grpcglue's ready
// reader): a yamux read of nothing waits as any read does.
func (t *tunnel) WaitReadable() error {
	_, err := t.Stream.Read(nil)
	if err != nil {
		t.died()
	}
	return err
}

func (t *tunnel) Close() error {
	t.died()
	return t.Stream.Close()
}

// fwdClient is this replica's connection to one client of another
// replica: an HTTP/2 client transport (a subchannel of the Cluster's
// shared connection) over a tunnel through that replica, made on the
// first call and released after the idle time, like a local session's
// reverse connection.
type fwdClient struct {
	rm   *remote
	id   string
	conn *grpcglue.LazyConn

	openMu sync.Mutex // one tunnel being opened at a time

	mu       sync.Mutex
	pending  *tunnel // opened for the next connection of the subchannel
	live     *tunnel // the subchannel's connection, until it fails
	inflight int
	retired  bool // no new calls
	closed   bool
	// notHere is set when the subchannel's own dial (a reconnection) was
	// answered that the client is not there.
	notHere atomic.Bool
}

// errRetired is what a call gets that found its fwdClient retired before
// anything was sent: it is routed again.
var errRetired = status.Error(codes.Unavailable, "brpc: the connection to the client was retired")

// notHereMarker is in the message of the error the subchannel reports when
// its dial was answered with errTunnelNotHere.
const notHereMarker = "brpc-cluster-tunnel-not-here"

func newFwdClient(rm *remote, id string) *fwdClient {
	f := &fwdClient{rm: rm, id: id}
	f.conn = grpcglue.NewLazyConn(func() (grpcglue.Channel, error) {
		r, err := rm.c.shared.NewRoute(f.dial)
		if err != nil {
			return nil, err
		}
		return fwdRoute{r, f}, nil
	}, rm.c.conf.TunnelIdle)
	return f
}

// fwdRoute is a fwdClient's subchannel; closing it (idle, or the
// fwdClient's close) also drops a tunnel opened for it and not used.
type fwdRoute struct {
	*grpcglue.Route
	f *fwdClient
}

func (r fwdRoute) Close() error {
	err := r.Route.Close()
	r.f.mu.Lock()
	p := r.f.pending
	r.f.pending = nil
	r.f.mu.Unlock()
	if p != nil {
		p.Close()
	}
	return err
}

// begin counts a call; errRetired once the fwdClient is retired.
func (f *fwdClient) begin() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.retired {
		return errRetired
	}
	f.inflight++
	return nil
}

// end ends a call counted by begin, closing a retired fwdClient whose last
// call it was.
func (f *fwdClient) end() {
	f.mu.Lock()
	f.inflight--
	last := f.retired && f.inflight == 0
	f.mu.Unlock()
	if last {
		f.close()
	}
}

// prepare makes sure the subchannel has a tunnel to connect on: the one
// it has, or one opened now. Opening one is where a stale route shows:
// errTunnelNotHere, before anything of the call was sent.
func (f *fwdClient) prepare(ctx context.Context) error {
	f.mu.Lock()
	ready := f.live != nil || f.pending != nil
	f.mu.Unlock()
	if ready {
		return nil
	}
	f.openMu.Lock()
	defer f.openMu.Unlock()
	f.mu.Lock()
	ready = f.live != nil || f.pending != nil
	f.mu.Unlock()
	if ready {
		return nil
	}
	t, err := f.rm.openTunnel(ctx, f.id)
	if err != nil {
		return err
	}
	f.mu.Lock()
	closed := f.closed
	if !closed {
		f.pending = t
	}
	f.mu.Unlock()
	if closed {
		t.Close()
		return errRetired
	}
	return nil
}

// dial is the subchannel's dialer: the tunnel prepare opened or, when the
// subchannel reconnects by itself (its connection went away under calls
// waiting for it), a new one.
func (f *fwdClient) dial(ctx context.Context) (net.Conn, error) {
	f.openMu.Lock()
	defer f.openMu.Unlock()
	f.mu.Lock()
	t := f.pending
	f.pending = nil
	f.mu.Unlock()
	if t == nil {
		var err error
		t, err = f.rm.openTunnel(ctx, f.id)
		if errors.Is(err, errTunnelNotHere) {
			f.notHere.Store(true)
			return nil, errors.New(notHereMarker)
		}
		if err != nil {
			return nil, err
		}
	}
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		t.Close()
		return nil, grpcglue.ErrPeerGone
	}
	f.live = t
	f.mu.Unlock()
	gone := func() {
		f.mu.Lock()
		if f.live == t {
			f.live = nil
		}
		f.mu.Unlock()
	}
	t.onDead.Store(&gone)
	if t.dead.Load() {
		gone()
	}
	return grpcglue.NewStreamConn(t, t.link.info), nil
}

// refusedAtDial reports whether err is a call's failure because the
// subchannel's own dial was told the client is not there: the call was
// never sent.
func (f *fwdClient) refusedAtDial(err error) bool {
	if err == nil || !f.notHere.Load() {
		return false
	}
	st, ok := status.FromError(err)
	return ok && st.Code() == codes.Unavailable && strings.Contains(st.Message(), notHereMarker)
}

// close closes the connection to the client, once.
func (f *fwdClient) close() {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	f.closed, f.retired = true, true
	p := f.pending
	f.pending = nil
	f.mu.Unlock()
	if p != nil {
		p.Close()
	}
	f.conn.Close(grpcglue.ErrPeerGone)
	rm := f.rm
	c := rm.c
	c.mu.Lock()
	delete(c.fwd, f)
	rm.open--
	last := rm.retired && rm.open == 0
	c.mu.Unlock()
	if last {
		rm.closeLink()
	}
}

// retireLocked takes f out of use (the Cluster's mu is held): new calls
// route again, and f closes once its calls in flight are over.
func (f *fwdClient) retireLocked() {
	rm := f.rm
	if rm.clients[f.id] == f {
		delete(rm.clients, f.id)
	}
	f.mu.Lock()
	already := f.retired
	f.retired = true
	idle := f.inflight == 0
	f.mu.Unlock()
	if already || !idle {
		return
	}
	c := rm.c
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		f.close()
	}()
}

// retireLocked takes the way to a replica out of use; its connections
// close as their calls end, and its link with the last.
func (c *Cluster) retireLocked(name string) {
	rm := c.remotes[name]
	if rm == nil {
		return
	}
	delete(c.remotes, name)
	rm.retired = true
	for _, f := range rm.clients {
		f.retireLocked()
	}
	if rm.open == 0 {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			rm.closeLink()
		}()
	}
}

// forwardOpts are the call options of a call on a fwdClient: the caller's,
// then fail-fast. A call waiting for a connection would wait on a tunnel
// through a replica the client may have left; this replica opens tunnels
// itself, before the call, and routes a call again when it has to.
func forwardOpts(opts []grpc.CallOption) []grpc.CallOption {
	return append(opts[:len(opts):len(opts)], grpc.WaitForReady(false))
}
