package clustertest

import (
	"context"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc"
	"github.com/brpc-go/brpc/internal/testpb"
)

// to is a context for a gateway call to the client id.
func to(ctx context.Context, id string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, brpc.GatewayTargetHeader, id)
}

// everyKind makes one call of each RPC kind on stub and returns the first
// failure: an error, or an answer that is not the echo service named
// answerer's.
func everyKind(ctx context.Context, stub testpb.EchoClient, answerer string) error {
	want := answerer + ":m"
	answer := func(kind string, i int, r *testpb.EchoResponse, err error) error {
		switch {
		case err != nil:
			return fmt.Errorf("%s, message %d: %w", kind, i, err)
		case r.GetMessage() != want || r.GetIndex() != int32(i):
			return fmt.Errorf("%s, message %d: answered %q (index %d), want %q", kind, i, r.GetMessage(), r.GetIndex(), want)
		}
		return nil
	}
	end := func(kind string, err error) error {
		if err != io.EOF {
			return fmt.Errorf("%s: end %v, want EOF", kind, err)
		}
		return nil
	}
	r, err := stub.Unary(ctx, &testpb.EchoRequest{Message: "m"})
	if err := answer("unary", 0, r, err); err != nil {
		return err
	}
	ss, err := stub.ServerStream(ctx, &testpb.EchoRequest{Message: "m", Count: 3})
	if err != nil {
		return fmt.Errorf("server stream: %w", err)
	}
	for i := range 3 {
		r, err := ss.Recv()
		if err := answer("server stream", i, r, err); err != nil {
			return err
		}
	}
	if _, err := ss.Recv(); err != io.EOF {
		return end("server stream", err)
	}
	cs, err := stub.ClientStream(ctx)
	if err != nil {
		return fmt.Errorf("client stream: %w", err)
	}
	for range 2 {
		if err := cs.Send(&testpb.EchoRequest{Message: "m"}); err != nil {
			return fmt.Errorf("client stream send: %w", err)
		}
	}
	r, err = cs.CloseAndRecv()
	if err := answer("client stream", 2, r, err); err != nil {
		return err
	}
	bs, err := stub.BidiStream(ctx)
	if err != nil {
		return fmt.Errorf("bidi stream: %w", err)
	}
	for i := range 2 {
		if err := bs.Send(&testpb.EchoRequest{Message: "m"}); err != nil {
			return fmt.Errorf("bidi stream send: %w", err)
		}
		r, err := bs.Recv()
		if err := answer("bidi stream", i, r, err); err != nil {
			return err
		}
	}
	if err := bs.CloseSend(); err != nil {
		return fmt.Errorf("bidi stream half-close: %w", err)
	}
	_, err = bs.Recv()
	return end("bidi stream", err)
}

// reach makes a unary call from r to the client id through Client(id),
// within d, and checks that the client answered as answerer.
func reach(r *replica, id, answerer string, d time.Duration) error {
	stub, err := r.srv.Client(id)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	resp, err := stub.Unary(ctx, &testpb.EchoRequest{Message: "m"})
	if err != nil {
		return err
	}
	if resp.GetMessage() != answerer+":m" {
		return fmt.Errorf("%s answered %q, want %q", id, resp.GetMessage(), answerer+":m")
	}
	return nil
}

// unavailableOrNotFound reports whether err says the client cannot be
// reached now (its replica is gone, or it is not connected anywhere).
func unavailableOrNotFound(err error) bool {
	c := status.Code(err)
	return c == codes.Unavailable || c == codes.NotFound
}
