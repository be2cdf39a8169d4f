package cluster

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// forwardConn is the connection behind the stub Client(id) returns for a
// client on another replica. It is bound to the client's ID, not to a
// replica: every call looks up where the client is now (a local session
// first, then the cache), so a stub kept across moves follows the client.
type forwardConn struct {
	c  *Cluster
	id string
}

// outgoing is ctx without the target header in its outgoing metadata: a
// forwarded call reaches the client as a local one does, and the header
// names a client only to a gateway. A call that has none, as nearly all
// do, costs one lookup and no copy.
func (c *Cluster) outgoing(ctx context.Context) context.Context {
	if len(metadata.ValueFromOutgoingContext(ctx, c.conf.TargetHeader)) == 0 {
		return ctx
	}
	md, _ := metadata.FromOutgoingContext(ctx)
	delete(md, c.conf.TargetHeader)
	return metadata.NewOutgoingContext(ctx, md)
}

// Invoke makes a unary call wherever the client is. When the replica the
// cache named says the client is not there (it moved and the cache is
// behind), which it says before the call is sent, the call waits for the
// cache to change, at most staleWait, and is made once more.
func (f *forwardConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	for attempt := 0; ; attempt++ {
		cc, fc, rec, err := f.c.route(f.id)
		if err != nil {
			return err
		}
		if fc == nil {
			return cc.Invoke(ctx, method, args, reply, opts...)
		}
		if err := fc.begin(); err != nil {
			continue // retired since route: route again
		}
		err = fc.prepare(ctx)
		if err == nil {
			err = fc.conn.Invoke(f.c.outgoing(ctx), method, args, reply, forwardOpts(opts)...)
			if fc.refusedAtDial(err) {
				err = errTunnelNotHere
			}
		}
		fc.end()
		if errors.Is(err, errRetired) || (attempt == 0 && drained(err)) {
			continue
		}
		if !errors.Is(err, errTunnelNotHere) {
			f.c.observeForwarded(fc.rm.name, method, status.Code(err))
			return err
		}
		if !f.stale(ctx, fc, method, rec, attempt) {
			return notFound(f.id)
		}
	}
}

// drained reports whether err is grpc-go's refusal to start a call on a
// transport that is going away: the call was never sent. grpc-go makes such
// a call once more itself, but only once, and its new attempt can pick the
// same transport before it learns that it is going away (the GOAWAY a
// holding replica sends when the client's session ends); the call is then
// routed once more here.
func drained(err error) bool {
	st, ok := status.FromError(err)
	return ok && st.Code() == codes.Unavailable && st.Message() == "the connection is draining"
}

// stale handles a replica's answer that the client is not there: the
// client's connection through it is dropped, the stale route reported, and
// it reports whether the call is made once more (the first time, once the
// cache has changed).
func (f *forwardConn) stale(ctx context.Context, fc *fwdClient, method string, rec ClientRecord, attempt int) bool {
	f.dropStale(fc, method)
	f.c.observeForwarded(fc.rm.name, method, codes.NotFound)
	return attempt == 0 && f.c.awaitChange(ctx, f.id, rec)
}

// dropStale drops the client's connection through a replica that said the
// client is not there, and reports the stale route.
func (f *forwardConn) dropStale(fc *fwdClient, method string) {
	f.c.mu.Lock()
	fc.retireLocked()
	f.c.mu.Unlock()
	f.c.observe(Event{Kind: EventStale, Replica: fc.rm.name, Method: method})
}

// NewStream opens a stream wherever the client is. The replica says
// whether the client is there before the stream is opened, so a stale
// route costs the stream nothing it sent: it is opened once more when the
// cache has changed.
func (f *forwardConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	for attempt := 0; ; attempt++ {
		cc, fc, rec, err := f.c.route(f.id)
		if err != nil {
			return nil, err
		}
		if fc == nil {
			return cc.NewStream(ctx, desc, method, opts...)
		}
		if err := fc.begin(); err != nil {
			continue
		}
		var cs grpc.ClientStream
		err = fc.prepare(ctx)
		if err == nil {
			cs, err = fc.conn.NewStream(f.c.outgoing(ctx), desc, method, forwardOpts(opts)...)
			if fc.refusedAtDial(err) {
				err = errTunnelNotHere
			}
		}
		if err == nil {
			return &resendStream{f: f, ctx: ctx, desc: desc, method: method, opts: opts, rec: rec,
				cur: newForwardStream(ctx, f.c, fc, cs, desc, method)}, nil
		}
		fc.end()
		if errors.Is(err, errRetired) || (attempt == 0 && drained(err)) {
			continue
		}
		if !errors.Is(err, errTunnelNotHere) {
			f.c.observeForwarded(fc.rm.name, method, status.Code(err))
			return nil, err
		}
		if !f.stale(ctx, fc, method, rec, attempt) {
			return nil, notFound(f.id)
		}
	}
}

// forwardStream is a stream to a client on another replica. It counts on
// its fwdClient, and its result is reported, once: when a receive ends it
// or its context does.
type forwardStream struct {
	grpc.ClientStream
	c             *Cluster
	fc            *fwdClient
	method        string
	serverStreams bool
	once          sync.Once
	stop          func() bool
	// unsent is set when the stream ended without ever reaching the
	// client: grpc-go took it back from a tunnel that went away and its
	// new attempt was refused (the client gone from the replica, or the
	// tunnel draining).
	unsent atomic.Bool
}

// newForwardStream wraps cs, opened with ctx. The caller's context, not
// the stream's, ends an abandoned stream: grpc-go cancels the stream's own
// at every end, and the result is the last receive's.
func newForwardStream(ctx context.Context, c *Cluster, fc *fwdClient, cs grpc.ClientStream, desc *grpc.StreamDesc, method string) *forwardStream {
	s := &forwardStream{ClientStream: cs, c: c, fc: fc, method: method, serverStreams: desc.ServerStreams}
	s.stop = context.AfterFunc(ctx, func() {
		s.finish(status.FromContextError(ctx.Err()).Err())
	})
	return s
}

// finish settles the stream's count and result.
func (s *forwardStream) finish(err error) {
	s.once.Do(func() {
		code := codes.OK
		if err != nil && !errors.Is(err, io.EOF) {
			code = status.Code(err)
		}
		s.c.observeForwarded(s.fc.rm.name, s.method, code)
		s.fc.end()
	})
}

// RecvMsg receives from the client. A stream the replica's transport
// took back unprocessed, whose new attempt found the client gone from the
// replica, fails with the NotFound a lookup gives: it was never sent.
func (s *forwardStream) RecvMsg(m any) error {
	err := s.checkUnsent(s.ClientStream.RecvMsg(m))
	if err != nil || !s.serverStreams {
		s.stop()
		s.finish(err)
	}
	return err
}

// Header waits for the client's response headers; a stream that never
// reached the client fails as RecvMsg says.
func (s *forwardStream) Header() (metadata.MD, error) {
	md, err := s.ClientStream.Header()
	return md, s.checkUnsent(err)
}

// checkUnsent notes whether err says that the stream never reached the
// client, and turns the subchannel's not-here refusal into the NotFound
// a lookup gives.
func (s *forwardStream) checkUnsent(err error) error {
	switch {
	case s.fc.refusedAtDial(err):
		s.unsent.Store(true)
		return notFound(s.fc.id)
	case drained(err):
		s.unsent.Store(true)
	}
	return err
}

func (c *Cluster) observeForwarded(replica, method string, code codes.Code) {
	c.observe(Event{Kind: EventForwarded, Replica: replica, Method: method, Code: code.String()})
}

// What a forwarded stream keeps so that it can be opened again when it
// never reached the client: its first messages (a server-streaming call's
// one request, the opening messages of a bidirectional one), until a
// response arrives.
const (
	resendMaxMessages = 16
	resendMaxBytes    = 1 << 20
)

// resendStream is a stream forwarded to another replica. The holding
// replica's answer comes before the stream is opened, so a stale route
// costs it nothing; but a stream opened on a tunnel as the client's
// session there ends is taken back unprocessed by grpc-go, whose one new
// attempt can find the tunnel draining or the client gone. Such a stream
// never reached the client: it is routed once more and what it sent is
// sent again, as a unary call is made again.
type resendStream struct {
	f      *forwardConn
	ctx    context.Context
	desc   *grpc.StreamDesc
	method string
	opts   []grpc.CallOption

	mu       sync.Mutex
	cur      grpc.ClientStream
	rec      ClientRecord
	sent     []proto.Message // copies, while resending is possible
	size     int
	closed   bool // CloseSend was called
	received bool // headers or a message arrived: past resending
	noResend bool // too much was sent, a message was not protobuf, or it was resent once
}

func (s *resendStream) current() grpc.ClientStream {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

// SendMsg keeps a copy of m while the stream may still be opened again,
// under the lock a new attempt replays under, so that it gets every
// message in order. A send on an attempt that ended fails with io.EOF
// (grpc-go's "ask RecvMsg for the status"); while m is kept for a new
// attempt, that is not the caller's: a caller that stopped sending at it
// would leave the new attempt without the end of its messages.
func (s *resendStream) SendMsg(m any) error {
	s.mu.Lock()
	kept := false
	if !s.received && !s.noResend {
		pm, ok := m.(proto.Message)
		if ok {
			s.size += proto.Size(pm)
		}
		if !ok || len(s.sent) == resendMaxMessages || s.size > resendMaxBytes {
			s.noResend, s.sent = true, nil
		} else {
			s.sent = append(s.sent, proto.Clone(pm))
			kept = true
		}
	}
	cur := s.cur
	s.mu.Unlock()
	err := cur.SendMsg(m)
	if kept && errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

func (s *resendStream) CloseSend() error {
	s.mu.Lock()
	s.closed = true
	cur := s.cur
	s.mu.Unlock()
	return cur.CloseSend()
}

func (s *resendStream) Header() (metadata.MD, error) {
	for {
		cur := s.current()
		md, err := cur.Header()
		if err == nil {
			s.gotResponse()
			return md, nil
		}
		var more bool
		if more, err = s.again(cur, err); !more {
			return md, err
		}
	}
}

func (s *resendStream) RecvMsg(m any) error {
	for {
		cur := s.current()
		err := cur.RecvMsg(m)
		if err == nil {
			s.gotResponse()
			return nil
		}
		var more bool
		if more, err = s.again(cur, err); !more {
			return err
		}
	}
}

func (s *resendStream) gotResponse() {
	s.mu.Lock()
	s.received, s.sent = true, nil
	s.mu.Unlock()
}

func (s *resendStream) Trailer() metadata.MD     { return s.current().Trailer() }
func (s *resendStream) Context() context.Context { return s.current().Context() }

// again reports whether the stream goes on on a new attempt after cur
// ended with err, and otherwise the error it ends with: cur never reached
// the client, nothing was received, what was sent was kept, and no attempt
// was made again before. A stream the client's replica no longer holds
// waits for the cache to change first, as a stale route does.
func (s *resendStream) again(cur grpc.ClientStream, err error) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur != cur {
		return true, nil // another receive made the new attempt already
	}
	fs, ok := cur.(*forwardStream)
	if !ok || !fs.unsent.Load() || s.received || s.noResend {
		return false, err
	}
	s.noResend = true
	fs.stop()
	fs.finish(err)
	// Its finish counted the NotFound as a forwarded call already.
	if status.Code(err) == codes.NotFound {
		s.f.dropStale(fs.fc, s.method)
		if !s.f.c.awaitChange(s.ctx, s.f.id, s.rec) {
			return false, err
		}
	}
	next, nerr := s.f.NewStream(s.ctx, s.desc, s.method, s.opts...)
	if nerr != nil {
		return false, nerr
	}
	if rs, ok := next.(*resendStream); ok {
		next = rs.cur // one new attempt only
	}
	// A failure to send shows on the new attempt's receive.
	replayed := true
	for _, m := range s.sent {
		if next.SendMsg(m) != nil {
			replayed = false
			break
		}
	}
	if replayed && s.closed {
		next.CloseSend()
	}
	s.cur, s.sent = next, nil
	return true, nil
}
