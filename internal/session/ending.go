package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/hashicorp/yamux"
	"github.com/quic-go/quic-go"
)

// EndKind classifies how a session ended.
type EndKind int

// End kinds.
const (
	// EndClosed: one side closed the session on purpose, with a close code.
	EndClosed EndKind = iota + 1
	// EndKeepaliveTimeout: the peer stayed silent past the idle timeout
	// (a vanished host, a cut network path, a blackholing middlebox).
	EndKeepaliveTimeout
	// EndConnectionLost: the connection failed in another way: a reset, a
	// broken pipe, a transport protocol error, a stateless reset.
	EndConnectionLost
)

// String names the kind, for logs.
func (k EndKind) String() string {
	switch k {
	case EndClosed:
		return "closed"
	case EndKeepaliveTimeout:
		return "keepalive timeout"
	case EndConnectionLost:
		return "connection lost"
	default:
		return fmt.Sprintf("EndKind(%d)", int(k))
	}
}

// Ending is the session layer's account of why a session ended, the same
// for both transports, so that the layers above never look at transport
// errors themselves.
type Ending struct {
	Kind EndKind
	// ByPeer, for EndClosed, says the peer closed the session; false: this
	// side did.
	ByPeer bool
	// Code, for EndClosed, is the close code. A TCP peer's close carries
	// none unless it was announced on the control stream (PeerAnnounced):
	// it is then reported as CodeNormal.
	Code CloseCode
	// Reason is the closer's reason for EndClosed, and a description of
	// the failure otherwise.
	Reason string
	// Err is the transport's error, for logs; nil when this side closed.
	Err error
}

// String says how the session ended, for logs and event reasons.
func (e Ending) String() string {
	if e.Kind != EndClosed {
		return fmt.Sprintf("%v: %s", e.Kind, e.Reason)
	}
	who := "this side"
	if e.ByPeer {
		who = "the peer"
	}
	return fmt.Sprintf("closed by %s (%v): %s", who, e.Code, e.Reason)
}

// EndingOf reports the end of a session that err tells of, err having been
// returned by a session, one of its streams or a dial. ok is false for an
// error that does not say that the session ended (a refused dial, a stream
// reset by the peer, a deadline).
func EndingOf(err error) (Ending, bool) {
	var appErr *quic.ApplicationError
	var idle *quic.IdleTimeoutError
	var local *localCloseError
	var reset *quic.StatelessResetError
	var transport *quic.TransportError
	switch {
	case err == nil:
		return Ending{}, false
	case errors.As(err, &local):
		return Ending{Kind: EndClosed, Code: local.code, Reason: local.reason}, true
	case errors.As(err, &appErr):
		e := Ending{Kind: EndClosed, ByPeer: appErr.Remote, Code: CloseCode(appErr.ErrorCode), Reason: appErr.ErrorMessage}
		if appErr.Remote {
			e.Err = err
		}
		return e, true
	case errors.As(err, &idle), errors.Is(err, yamux.ErrKeepAliveTimeout):
		return Ending{Kind: EndKeepaliveTimeout, Reason: "the peer stayed silent past the idle timeout", Err: err}, true
	case errors.As(err, &reset), errors.As(err, &transport):
		return Ending{Kind: EndConnectionLost, Reason: err.Error(), Err: err}, true
	}
	return Ending{}, false
}

// endingOfCause is the Ending for the cause of a session's ended Context.
// Every cause means the session is over: what EndingOf does not know is a
// lost connection, and a TCP connection's clean end (TLS close_notify or
// FIN) is the peer's close without a code.
func endingOfCause(cause error) Ending {
	if e, ok := EndingOf(cause); ok {
		return e
	}
	if errors.Is(cause, io.EOF) {
		return Ending{Kind: EndClosed, ByPeer: true, Code: CodeNormal, Reason: "the peer closed the connection", Err: cause}
	}
	if cause == nil {
		return Ending{Kind: EndConnectionLost, Reason: "the connection ended"}
	}
	return Ending{Kind: EndConnectionLost, Reason: cause.Error(), Err: cause}
}

// endState keeps the end of a session decided before the connection itself
// ended: a close announced on the control stream, by either side.
type endState struct {
	decided atomic.Pointer[Ending]
}

// decide records e unless an end was decided already or the session is over.
func (s *endState) decide(ctx context.Context, e Ending) {
	if ctx.Err() == nil {
		s.decided.CompareAndSwap(nil, &e)
	}
}

// ending is the session's Ending once ctx, its Context, is done.
func (s *endState) ending(ctx context.Context) (Ending, bool) {
	if ctx.Err() == nil {
		return Ending{}, false
	}
	if d := s.decided.Load(); d != nil {
		return *d, true
	}
	return endingOfCause(context.Cause(ctx)), true
}

// String names the close code (a refusal by its gRPC code number).
func (c CloseCode) String() string {
	switch c {
	case CodeNormal:
		return "normal"
	case CodeShutdown:
		return "shutdown"
	case CodeReplaced:
		return "replaced"
	case CodeRejected:
		return "rejected"
	case CodeProtocol:
		return "protocol error"
	case CodeHandshakeTimeout:
		return "handshake timeout"
	}
	if c > CodeRefused && c <= CodeRefused+16 {
		return fmt.Sprintf("refused with gRPC code %d", uint64(c-CodeRefused))
	}
	return fmt.Sprintf("code %d", uint64(c))
}
