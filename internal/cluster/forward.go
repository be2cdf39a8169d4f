package cluster

import (
	"context"
	"errors"
	"io"
	"sync"

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

// outgoing adds the target header to the call's metadata, replacing any
// the caller set.
func (c *Cluster) outgoing(ctx context.Context, id string) context.Context {
	md, _ := metadata.FromOutgoingContext(ctx)
	md = md.Copy()
	md.Set(c.conf.TargetHeader, id)
	return metadata.NewOutgoingContext(ctx, md)
}

// Invoke makes a unary call wherever the client is. When the replica the
// cache named says the client is not there (it moved and the cache is
// behind), the call waits for the cache to change, at most staleWait, and
// is made once more.
func (f *forwardConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	userTrailers, opts := takeTrailers(opts)
	for attempt := 0; ; attempt++ {
		cc, rm, rec, err := f.c.route(f.id)
		if err != nil {
			return err
		}
		if rm == nil {
			for _, t := range userTrailers {
				opts = append(opts, t)
			}
			return cc.Invoke(ctx, method, args, reply, opts...)
		}
		var tr metadata.MD
		err = cc.Invoke(f.c.outgoing(ctx, f.id), method, args, reply, append(opts, grpc.Trailer(&tr))...)
		f.c.release(rm)
		f.c.observeForwarded(rm.name, method, status.Code(err))
		if !notHere(tr) {
			for _, t := range userTrailers {
				*t.TrailerAddr = tr
			}
			return err
		}
		f.c.observe(Event{Kind: EventStale, Replica: rm.name, Method: method})
		if attempt > 0 || !f.c.awaitChange(ctx, f.id, rec) {
			return notFound(f.id)
		}
	}
}

// takeTrailers separates the caller's grpc.Trailer options from the rest:
// a forwarded call reads the trailers itself (for the replica's
// not-here marker) and hands them on.
func takeTrailers(opts []grpc.CallOption) ([]grpc.TrailerCallOption, []grpc.CallOption) {
	var trailers []grpc.TrailerCallOption
	rest := opts[:0:0]
	for _, o := range opts {
		switch t := o.(type) {
		case grpc.TrailerCallOption:
			trailers = append(trailers, t)
		case *grpc.TrailerCallOption:
			trailers = append(trailers, *t)
		default:
			rest = append(rest, o)
		}
	}
	return trailers, rest
}

// NewStream opens a stream wherever the client is. When the replica says
// the client is gone before anything was received, the call is made once
// more as a unary call is, with the messages sent so far: copies are kept
// until the first response, up to resendMaxMessages and resendMaxBytes.
// A stream that sent more, or messages that are not protobuf, is not made
// again and fails, at its first receive, with codes.NotFound.
func (f *forwardConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	cs, rec, err := f.open(ctx, desc, method, opts)
	if err != nil {
		return nil, err
	}
	if _, remote := cs.(*forwardStream); !remote {
		return cs, nil
	}
	return &resendStream{f: f, ctx: ctx, desc: desc, method: method, opts: opts, cur: cs, rec: rec}, nil
}

// What a forwarded stream keeps to make it again on a stale route: its
// first messages (a unary or server-streaming call's one request, the
// opening messages of a bidirectional one), until a response arrives.
const (
	resendMaxMessages = 16
	resendMaxBytes    = 1 << 20
)

// open opens one attempt of a stream: on a local session's connection, or
// forwarded to the replica the cache names (a *forwardStream).
func (f *forwardConn) open(ctx context.Context, desc *grpc.StreamDesc, method string, opts []grpc.CallOption) (grpc.ClientStream, ClientRecord, error) {
	cc, rm, rec, err := f.c.route(f.id)
	if err != nil {
		return nil, rec, err
	}
	if rm == nil {
		cs, err := cc.NewStream(ctx, desc, method, opts...)
		return cs, rec, err
	}
	sctx, cancel := context.WithCancel(ctx)
	cs, err := cc.NewStream(f.c.outgoing(sctx, f.id), desc, method, opts...)
	if err != nil {
		cancel()
		f.c.release(rm)
		f.c.observeForwarded(rm.name, method, status.Code(err))
		return nil, rec, err
	}
	s := &forwardStream{ClientStream: cs, c: f.c, id: f.id, desc: desc, cancel: cancel}
	// The stream is over when it ends or its context does; either way
	// the connection's count and the result are settled once.
	context.AfterFunc(sctx, func() {
		f.c.release(rm)
		code := status.FromContextError(ctx.Err()).Code()
		if r, ok := s.result(); ok {
			code = r
		}
		if s.isStale() {
			f.c.observe(Event{Kind: EventStale, Replica: rm.name, Method: method})
		}
		f.c.observeForwarded(rm.name, method, code)
	})
	return s, rec, nil
}

// resendStream is a stream forwarded to another replica that keeps what
// it sent until a response arrives, so that when the replica says the
// client is gone, the call can be made once more where the cache then
// says the client is.
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
	received bool // a response arrived: the call is past resending
	noResend bool // too much was sent, or a message that is not protobuf
	retried  bool
}

func (s *resendStream) current() grpc.ClientStream {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

// SendMsg keeps a copy of m while the call may still be made again. The
// copy is taken under the lock that a new attempt replays under, so the
// new attempt gets every message in order.
//
// An attempt that has ended (the replica's not-here answer among the ways)
// fails its sends with io.EOF, grpc-go's "ask RecvMsg for the status".
// While m is kept for a new attempt, that io.EOF is not the caller's: a
// caller that stopped sending (and half-closing) at it would leave the new
// attempt without its messages' end, and a generated stub would fail the
// call. The next receive says whether the call goes on.
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

// Header waits for the client's response headers. grpc-go reports a
// response without headers (the replica's not-here answer is one) as no
// headers and no error, the stream over.
func (s *resendStream) Header() (metadata.MD, error) {
	for {
		cur := s.current()
		md, err := cur.Header()
		if md != nil {
			s.gotResponse()
			return md, err
		}
		if !s.again(cur) {
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
		if !s.again(cur) {
			return err
		}
	}
}

// gotResponse ends resending: the client has answered, on this attempt.
func (s *resendStream) gotResponse() {
	s.mu.Lock()
	s.received, s.sent = true, nil
	s.mu.Unlock()
}

func (s *resendStream) Trailer() metadata.MD     { return s.current().Trailer() }
func (s *resendStream) Context() context.Context { return s.current().Context() }

// again reports whether the call goes on on a new attempt after cur
// ended: cur was told the client is not there, nothing was received, what
// was sent was kept, and the cache has changed since (waiting for that as
// a unary call does).
func (s *resendStream) again(cur grpc.ClientStream) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur != cur {
		return true // another receive made the new attempt already
	}
	fs, ok := cur.(*forwardStream)
	if !ok || !fs.staleNow() || s.retried || s.received || s.noResend {
		return false
	}
	s.retried = true
	if !s.f.c.awaitChange(s.ctx, s.f.id, s.rec) {
		return false
	}
	next, rec, err := s.f.open(s.ctx, s.desc, s.method, s.opts)
	if err != nil {
		return false
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
	s.cur, s.rec, s.sent = next, rec, nil
	s.noResend = true // one retry only
	return true
}

// forwardStream is a stream forwarded to another replica.
type forwardStream struct {
	grpc.ClientStream
	c      *Cluster
	id     string
	desc   *grpc.StreamDesc
	cancel context.CancelFunc

	mu    sync.Mutex
	code  codes.Code
	ended bool
	stale bool // the replica said the client is not there
}

func (s *forwardStream) isStale() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stale
}

// staleNow reports whether the stream, which is over, ended with the
// replica's not-here answer, reading its trailers if no receive has.
func (s *forwardStream) staleNow() bool {
	if s.isStale() {
		return true
	}
	if notHere(s.ClientStream.Trailer()) {
		s.mu.Lock()
		s.stale = true
		s.mu.Unlock()
		s.end(notFound(s.id))
		return true
	}
	return false
}

// checkStale turns the replica's not-here answer into the NotFound a local
// lookup gives, and remembers it.
func (s *forwardStream) checkStale(err error) error {
	if !notHere(s.ClientStream.Trailer()) {
		return err
	}
	s.mu.Lock()
	s.stale = true
	s.mu.Unlock()
	return notFound(s.id)
}

func (s *forwardStream) result() (codes.Code, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.code, s.ended
}

// end records the stream's result and lets the connection go.
func (s *forwardStream) end(err error) {
	s.mu.Lock()
	if !s.ended {
		s.ended = true
		s.code = codes.OK
		if err != nil && !errors.Is(err, io.EOF) {
			s.code = status.Code(err)
		}
	}
	s.mu.Unlock()
	s.cancel()
}

// RecvMsg receives from the client; a replica's not-here answer becomes
// the same NotFound a local lookup gives.
func (s *forwardStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if err != nil {
		err = s.checkStale(err)
		s.end(err)
		return err
	}
	if !s.desc.ServerStreams {
		// grpc-go has read the status after the one response already.
		s.end(nil)
	}
	return nil
}

// Header waits for the client's response headers.
func (s *forwardStream) Header() (metadata.MD, error) {
	md, err := s.ClientStream.Header()
	if err != nil {
		return nil, s.checkStale(err)
	}
	return md, err
}

// Trailer is the client's trailers, without the replica's marker.
func (s *forwardStream) Trailer() metadata.MD {
	tr := s.ClientStream.Trailer()
	if notHere(tr) {
		tr = tr.Copy()
		delete(tr, notHereKey)
	}
	return tr
}

func (c *Cluster) observeForwarded(replica, method string, code codes.Code) {
	c.observe(Event{Kind: EventForwarded, Replica: replica, Method: method, Code: code.String()})
}
