package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/hashicorp/yamux"

	"github.com/brpc-go/brpc/internal/session"
)

// disconnectReason says why a welcomed session ended.
func (ss *Session) disconnectReason() (DisconnectKind, string, error) {
	cause := context.Cause(ss.sess.Context())
	if r := ss.endReason.Load(); r != nil {
		return *ss.endKind.Load(), *r, cause
	}
	if code, reason, ok := session.PeerCloseCode(cause); ok {
		if code == session.CodeNormal {
			return ClientClosed, "client closed the connection", cause
		}
		return ClientClosed, fmt.Sprintf("client closed the connection (code %d): %s", code, reason), cause
	}
	if errors.Is(cause, io.EOF) {
		return ClientClosed, "client closed the connection", cause
	}
	var ne net.Error
	if errors.As(cause, &ne) && ne.Timeout() {
		return KeepaliveTimeout, "client silent past the keepalive timeout", cause
	}
	// The TCP transport reports a silent peer with yamux's error.
	if errors.Is(cause, yamux.ErrKeepAliveTimeout) {
		return KeepaliveTimeout, "client silent past the keepalive timeout", cause
	}
	if cause == nil {
		return ConnectionLost, "connection ended", nil
	}
	return ConnectionLost, "connection ended: " + cause.Error(), cause
}
