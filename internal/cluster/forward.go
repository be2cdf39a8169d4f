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
	f.c.mu.Lock()
	fc.retireLocked()
	f.c.mu.Unlock()
	f.c.observe(Event{Kind: EventStale, Replica: fc.rm.name, Method: method})
	f.c.observeForwarded(fc.rm.name, method, codes.NotFound)
	return attempt == 0 && f.c.awaitChange(ctx, f.id, rec)
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
			return newForwardStream(ctx, f.c, fc, cs, desc, method), nil
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
	err := s.ClientStream.RecvMsg(m)
	if s.fc.refusedAtDial(err) {
		err = notFound(s.fc.id)
	}
	if err != nil || !s.serverStreams {
		s.stop()
		s.finish(err)
	}
	return err
}

func (c *Cluster) observeForwarded(replica, method string, code codes.Code) {
	c.observe(Event{Kind: EventForwarded, Replica: replica, Method: method, Code: code.String()})
}
