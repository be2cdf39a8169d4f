// Package testenv is the harness brpc's black-box and integration tests
// share: an environment of a brpc server and its clients on either
// transport, the echo service both sides serve, relays that put faults on
// the path between them, and child processes that run a server or clients
// away from the test's own memory.
package testenv

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/testpb"
)

// Echo implements testpb.Echo the same way on both sides. Each response
// carries who answered (Name) and the brpc ID the handler saw for its
// caller. Call, when set, is run by Unary and its result appended: the
// server uses it to call its caller back.
type Echo struct {
	testpb.UnimplementedEchoServer
	Name string
	Call func(ctx context.Context) (string, error)

	sleeping atomic.Int64
}

// Sleeping is the number of handlers waiting out a request's SleepMs right
// now: tests wait for it to know that a slow call has reached its handler.
func (e *Echo) Sleeping() int64 { return e.sleeping.Load() }

func (e *Echo) respond(ctx context.Context, r *testpb.EchoRequest, i int32) (*testpb.EchoResponse, error) {
	if r.GetSleepMs() > 0 {
		e.sleeping.Add(1)
		defer e.sleeping.Add(-1)
		select {
		case <-time.After(time.Duration(r.GetSleepMs()) * time.Millisecond):
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	if r.GetFailCode() != 0 {
		st, err := status.New(codes.Code(r.GetFailCode()), e.Name+": failing as asked").
			WithDetails(&testpb.EchoResponse{Message: e.Name + ":detail"})
		if err != nil {
			return nil, err
		}
		return nil, st.Err()
	}
	p, _ := brpc.PeerFromContext(ctx)
	return &testpb.EchoResponse{Message: e.Name + ":" + r.GetMessage(), Payload: r.GetPayload(), PeerId: p.ID, Index: i}, nil
}

// echoMetadata returns the caller's "x-echo-*" metadata, which handlers send
// back as both header and trailer.
func echoMetadata(ctx context.Context) metadata.MD {
	in, _ := metadata.FromIncomingContext(ctx)
	out := metadata.MD{}
	for k, v := range in {
		if strings.HasPrefix(k, "x-echo-") {
			out[k] = v
		}
	}
	return out
}

// Unary answers one request, after running Call when it is set.
func (e *Echo) Unary(ctx context.Context, r *testpb.EchoRequest) (*testpb.EchoResponse, error) {
	md := echoMetadata(ctx)
	grpc.SetHeader(ctx, md)
	grpc.SetTrailer(ctx, md)
	resp, err := e.respond(ctx, r, 0)
	if err != nil || e.Call == nil {
		return resp, err
	}
	extra, err := e.Call(ctx)
	if err != nil {
		return nil, err
	}
	resp.Message += "|" + extra
	return resp, nil
}

// ServerStream answers the request Count times.
func (e *Echo) ServerStream(r *testpb.EchoRequest, st testpb.Echo_ServerStreamServer) error {
	md := echoMetadata(st.Context())
	st.SetHeader(md)
	st.SetTrailer(md)
	for i := int32(0); i < r.GetCount(); i++ {
		resp, err := e.respond(st.Context(), r, i)
		if err != nil {
			return err
		}
		if err := st.Send(resp); err != nil {
			return err
		}
	}
	return nil
}

// ClientStream answers the last request, with the number of requests as
// its index.
func (e *Echo) ClientStream(st testpb.Echo_ClientStreamServer) error {
	md := echoMetadata(st.Context())
	st.SetHeader(md)
	st.SetTrailer(md)
	var n int32
	var last *testpb.EchoRequest
	for {
		r, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		n++
		last = r
	}
	if last == nil {
		last = &testpb.EchoRequest{}
	}
	resp, err := e.respond(st.Context(), last, n)
	if err != nil {
		return err
	}
	return st.SendAndClose(resp)
}

// BidiStream answers each request as it arrives.
func (e *Echo) BidiStream(st testpb.Echo_BidiStreamServer) error {
	md := echoMetadata(st.Context())
	if err := st.SendHeader(md); err != nil {
		return err
	}
	st.SetTrailer(md)
	for i := int32(0); ; i++ {
		r, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		resp, err := e.respond(st.Context(), r, i)
		if err != nil {
			return err
		}
		if err := st.Send(resp); err != nil {
			return err
		}
	}
}
