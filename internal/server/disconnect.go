package server

import (
	"fmt"

	"github.com/brpc-go/brpc/internal/session"
)

// disconnectReason says why a welcomed session ended, from the session
// layer's account of it alone: kind and reason come from one Ending, so
// they always agree, and whoever closed the session (Stop, a Listener's
// Close, a replacement) is read from its close code, not from a note kept
// beside it.
func (ss *Session) disconnectReason() (DisconnectKind, string, error) {
	e, ok := ss.sess.Ending()
	return disconnectOf(e, ok)
}

// disconnectOf maps a session's Ending to the disconnect kind, reason and
// error of its Disconnected event. ok false: the session is not over as far
// as the transport knows (it should not happen once serving ended).
func disconnectOf(e session.Ending, ok bool) (DisconnectKind, string, error) {
	if !ok {
		return ConnectionLost, "connection ended", nil
	}
	switch e.Kind {
	case session.EndClosed:
		if !e.ByPeer {
			switch e.Code {
			case session.CodeShutdown:
				return ServerStopped, e.Reason, e.Err
			case session.CodeReplaced:
				return Replaced, e.Reason, e.Err
			}
			return ConnectionLost, fmt.Sprintf("server closed the connection (%v): %s", e.Code, e.Reason), e.Err
		}
		if e.Code == session.CodeNormal {
			return ClientClosed, "client closed the connection", e.Err
		}
		return ClientClosed, fmt.Sprintf("client closed the connection (%v): %s", e.Code, e.Reason), e.Err
	case session.EndKeepaliveTimeout:
		return KeepaliveTimeout, "client silent past the keepalive timeout", e.Err
	}
	return ConnectionLost, "connection ended: " + e.Reason, e.Err
}
