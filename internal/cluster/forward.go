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
		if !notHere(tr) {
			for _, t := range userTrailers {
				*t.TrailerAddr = tr
			}
			f.c.observeForwarded(rm.name, method, status.Code(err))
			return err
		}
		f.c.observe(Event{Kind: EventStale, Replica: rm.name, Method: method})
		if attempt > 0 || !f.c.awaitChange(ctx, f.id, rec) {
			f.c.observeForwarded(rm.name, method, codes.NotFound)
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

// NewStream opens a stream wherever the client is. Streams are not made
// again when the replica says the client is gone: the caller may have
// sent messages already. The stream then fails, on its first receive,
// with codes.NotFound.
func (f *forwardConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	cc, rm, _, err := f.c.route(f.id)
	if err != nil {
		return nil, err
	}
	if rm == nil {
		return cc.NewStream(ctx, desc, method, opts...)
	}
	sctx, cancel := context.WithCancel(ctx)
	cs, err := cc.NewStream(f.c.outgoing(sctx, f.id), desc, method, opts...)
	if err != nil {
		cancel()
		f.c.release(rm)
		f.c.observeForwarded(rm.name, method, status.Code(err))
		return nil, err
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
		f.c.observeForwarded(rm.name, method, code)
	})
	return s, nil
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
		if notHere(s.ClientStream.Trailer()) {
			s.c.observe(Event{Kind: EventStale})
			err = notFound(s.id)
		}
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
	if err != nil && notHere(s.ClientStream.Trailer()) {
		return nil, notFound(s.id)
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
