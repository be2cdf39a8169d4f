package handshake

import (
	"context"
	"errors"
	"math"
	"net"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc/internal/handshake/handshakepb"
	"github.com/brpc-go/brpc/internal/session"
)

// Linger bounds how long a client that is told to go (rejected, or replaced
// by a newer session) is given to read why and close the session itself
// before the server closes it. TCP carries no close code, and closing first
// could reset the connection before the client has read the reason.
const Linger = 2 * time.Second

// ServerConfig bounds the server's side of a handshake.
type ServerConfig struct {
	// Timeout bounds the whole handshake, from the session's start to the
	// welcome, the Admit callback included.
	Timeout time.Duration
	// MaxHelloSize caps the hello; a larger one is refused with
	// codes.ResourceExhausted.
	MaxHelloSize int
	// MaxMetadataValues caps the metadata values a hello carries (a key
	// without values counts as one), and MaxMetadataValueSize the bytes of
	// any one key or value; a hello beyond either is refused with
	// codes.ResourceExhausted. 0 sets no cap. Every value is a string and a
	// slice entry once decoded, so a hello of many tiny values costs several
	// times its size: the count cap bounds that.
	MaxMetadataValues    int
	MaxMetadataValueSize int
}

// Admit decides on a client whose hello was read and whose protocol version
// is supported. md is the hello's metadata, the callee's to keep. It returns
// the ID to welcome the client under, or the gRPC status that rejects it.
// revoke, when not nil, is called if the welcome then cannot be delivered,
// before the session is closed, to take the admission back. ctx ends at the
// handshake's deadline or with the session.
type Admit func(ctx context.Context, md metadata.MD) (id string, revoke func(), err error)

// ServeHello runs the server's side of the handshake on sess: it accepts the
// control stream, reads the hello, negotiates the protocol version, asks
// admit, and welcomes or rejects the client. Once the welcome is written it
// returns the control stream, which stays open for the session's life.
// Otherwise it returns the gRPC status the client was refused with, having
// closed the session: a rejected client is sent the status in the welcome
// and given Linger to close the session itself.
func ServeHello(sess session.Session, conf ServerConfig, admit Admit) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(sess.Context(), conf.Timeout)
	defer cancel()

	ctrl, err := sess.AcceptStream(ctx)
	if err != nil {
		st := handshakeEnded(ctx, sess, err, "no control stream")
		sess.Close(session.CodeHandshakeTimeout, "no control stream")
		return nil, st
	}
	deadline, _ := ctx.Deadline()
	ctrl.SetDeadline(deadline)

	var hello handshakepb.Hello
	if err := ReadMsg(ctrl, &hello, conf.MaxHelloSize); err != nil {
		switch {
		case errors.Is(err, ErrTooLarge):
			return nil, reject(sess, ctrl, status.Errorf(codes.ResourceExhausted, "brpc: hello too large (limit %d bytes)", conf.MaxHelloSize))
		case errors.Is(err, ErrMalformed):
			return nil, reject(sess, ctrl, status.Error(codes.InvalidArgument, "brpc: malformed hello"))
		default:
			st := handshakeEnded(ctx, sess, err, "no hello")
			sess.Close(session.CodeHandshakeTimeout, "no hello")
			ctrl.Close()
			return nil, st
		}
	}
	// A stream buffer that grew to hold the hello (yamux keeps a drained
	// buffer's capacity) would stay for the session's life.
	if sh, ok := ctrl.(interface{ Shrink() }); ok {
		sh.Shrink()
	}
	version, err := Negotiate(&hello)
	if err != nil {
		return nil, reject(sess, ctrl, err)
	}

	if err := checkMetadata(hello.GetMetadata(), conf); err != nil {
		return nil, reject(sess, ctrl, err)
	}
	id, revoke, err := admit(ctx, MDFromProto(hello.GetMetadata()))
	if err != nil {
		return nil, reject(sess, ctrl, err)
	}
	// Before the welcome: a client may open streams as soon as it has
	// read it, and until Admitted the session layer treats a second
	// stream as a protocol error.
	sess.Admitted()
	if err := WriteMsg(ctrl, Accept(version, id)); err != nil {
		if revoke != nil {
			revoke()
		}
		st := brokeProtocol(sess, err)
		if st == nil {
			st = status.Errorf(codes.Unavailable, "brpc: the welcome could not be delivered: %v", err)
		}
		sess.Close(session.CodeProtocol, "welcome not delivered")
		return nil, st
	}
	ctrl.SetDeadline(time.Time{})
	return ctrl, nil
}

// checkMetadata refuses hello metadata beyond the caps, before any of it is
// decoded into gRPC metadata.
func checkMetadata(entries []*handshakepb.MetadataEntry, conf ServerConfig) error {
	n := 0
	for _, e := range entries {
		n += max(len(e.GetValues()), 1)
		if conf.MaxMetadataValues > 0 && n > conf.MaxMetadataValues {
			return status.Errorf(codes.ResourceExhausted, "brpc: hello metadata has more than %d values", conf.MaxMetadataValues)
		}
		if size := conf.MaxMetadataValueSize; size > 0 {
			if len(e.GetKey()) > size {
				return status.Errorf(codes.ResourceExhausted, "brpc: hello metadata key of %d bytes (limit %d)", len(e.GetKey()), size)
			}
			for _, v := range e.GetValues() {
				if len(v) > size {
					return status.Errorf(codes.ResourceExhausted, "brpc: hello metadata value of %d bytes under %q (limit %d)", len(v), e.GetKey(), size)
				}
			}
		}
	}
	return nil
}

// handshakeEnded describes a handshake the client never finished, err
// being the error that stopped it and what the step it stopped at.
func handshakeEnded(ctx context.Context, sess session.Session, err error, what string) error {
	if ctx.Err() == context.DeadlineExceeded {
		return status.Errorf(codes.DeadlineExceeded, "brpc: handshake timed out: %s", what)
	}
	if st := brokeProtocol(sess, err); st != nil {
		return st
	}
	return status.Errorf(codes.Unavailable, "brpc: the connection ended during the handshake: %s", what)
}

// brokeProtocol reports, as the status the client is refused with, a
// session that this side's session layer closed with CodeProtocol because
// the client sent what brpc's protocol forbids (a second stream before the
// welcome, a hello beyond the control stream's limit, a ping flood). err,
// the error the handshake stopped at, may carry the session's end itself
// (QUIC's close error) before the session's Context ends; otherwise the
// session's Ending tells it (the TCP session layer decides its end before
// any stream sees it). The status's code is what the client makes of the
// close code (GRPCCode), so both sides tell the same story. nil: the
// session did not end that way.
func brokeProtocol(sess session.Session, err error) error {
	e, ok := session.EndingOf(err)
	if !ok {
		e, ok = sess.Ending()
	}
	if !ok || e.Kind != session.EndClosed || e.ByPeer || e.Code != session.CodeProtocol {
		return nil
	}
	return status.Errorf(GRPCCode(e.Code), "brpc: the client broke the protocol during the handshake: %s", e.Reason)
}

// reject sends the client a welcome carrying err, gives it a moment to read
// it and close the session itself, then closes the session.
func reject(sess session.Session, ctrl net.Conn, err error) error {
	ctrl.SetWriteDeadline(time.Now().Add(Linger))
	werr := WriteMsg(ctrl, Reject(err))
	// Closing the stream stops reading the rest of the hello, which unblocks
	// a client still writing it, and ends the welcome with FIN.
	ctrl.Close()
	if werr == nil {
		t := time.NewTimer(Linger)
		select {
		case <-sess.Closed():
		case <-t.C:
		}
		t.Stop()
	}
	Refuse(sess, err)
	return err
}

// Refuse closes sess as refused with err's gRPC status, without a welcome
// (or after one). The close code carries the status's code (RefusedCode)
// and the reason its message, for a client that gets no welcome.
func Refuse(sess session.Session, err error) {
	st := status.Convert(err)
	sess.Close(RefusedCode(st.Code()), st.Message())
}

// NewGoAway builds the notice that tells a client the server is going away.
func NewGoAway(reason string) *handshakepb.Notice {
	return &handshakepb.Notice{Kind: &handshakepb.Notice_GoAway{GoAway: &handshakepb.GoAway{Reason: reason}}}
}

// NewClosing builds the server's last word on a session it is about to
// close: the close code and reason, which TCP cannot carry itself, and the
// window over which the client should spread its first reconnect attempt
// (0: none; whole milliseconds on the wire, a shorter window is none).
func NewClosing(code session.CloseCode, reason string, reconnectWindow time.Duration) *handshakepb.Notice {
	ms := min(reconnectWindow.Milliseconds(), math.MaxUint32)
	return &handshakepb.Notice{Kind: &handshakepb.Notice_Closing{Closing: &handshakepb.Closing{
		Code: uint32(code), Reason: reason, ReconnectWindowMs: uint32(max(ms, 0)),
	}}}
}

// ReconnectWindow is the window a Closing notice asks the client to spread
// its first reconnect attempt over; 0 when it announces none (a server that
// predates the field sends none).
func ReconnectWindow(c *handshakepb.Closing) time.Duration {
	return time.Duration(c.GetReconnectWindowMs()) * time.Millisecond
}
