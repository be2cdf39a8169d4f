package handshake

import (
	"context"
	"net"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc/internal/handshake/handshakepb"
	"github.com/brpc-go/brpc/internal/session"
)

// MaxWelcomeSize caps the messages a client reads from the server's side of
// the control stream.
const MaxWelcomeSize = DefaultMaxMessageSize

// SendHello runs the client's side of the handshake on sess: it opens the
// control stream, sends the hello with md and waits for the welcome, within
// ctx. It returns the control stream, which stays open for the session's
// life, and the ID the server gave the client. Errors are gRPC statuses: the
// server's rejection as it sent it, or what DialError makes of a failure.
// On error the control stream is closed; the session is the caller's to
// close.
func SendHello(ctx context.Context, sess session.Session, md metadata.MD) (ctrl net.Conn, id string, err error) {
	ctrl, err = sess.OpenStream(ctx)
	if err != nil {
		return nil, "", DialError(ctx, "handshake", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		ctrl.SetDeadline(dl)
	}
	// The callback may still run after SendHello has returned (ctx ending
	// just then): it must hold the stream itself, not read the result
	// variable that the returns below set to nil.
	stream := ctrl
	stop := context.AfterFunc(ctx, func() { stream.SetDeadline(time.Unix(1, 0)) })
	fail := func(err error) (net.Conn, string, error) {
		stop()
		ctrl.Close()
		return nil, "", DialError(ctx, "handshake", err)
	}
	werr := WriteMsg(ctrl, NewHello(md))
	// A server that refuses the hello part-way (too large) stops reading it
	// and answers at once: the welcome is worth reading even when the write
	// failed.
	var w handshakepb.Welcome
	if err := ReadMsg(ctrl, &w, MaxWelcomeSize); err != nil {
		if werr != nil {
			return fail(werr)
		}
		return fail(err)
	}
	if w.GetStatus() != nil {
		stop()
		ctrl.Close()
		return nil, "", StatusFromProto(w.GetStatus())
	}
	if err := CheckWelcomeVersion(&w); err != nil {
		return fail(err)
	}
	if w.GetId() == "" {
		return fail(status.Error(codes.Internal, "brpc: the server's welcome carries no ID"))
	}
	if !stop() {
		// ctx ended just as the welcome came: the control stream's deadline
		// may already have been cut short.
		ctrl.Close()
		return nil, "", status.FromContextError(ctx.Err()).Err()
	}
	ctrl.SetDeadline(time.Time{})
	return ctrl, w.GetId(), nil
}

// DialError turns a failure to reach the server or to finish the handshake
// into a gRPC status: ctx's own end, a status as it is, a session the server
// closed (its close code mapped by GRPCCode: a refusal's own code) or, for
// anything else, codes.Unavailable. what names the step that failed.
func DialError(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return status.FromContextError(ctx.Err()).Err()
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	if e, ok := session.EndingOf(err); ok && e.Kind == session.EndClosed && e.ByPeer {
		return status.Errorf(GRPCCode(e.Code), "brpc: %s: server closed the session: %s", what, e.Reason)
	}
	return status.Errorf(codes.Unavailable, "brpc: %s: %v", what, err)
}
