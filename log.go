package brpc

import (
	"context"
	"log/slog"
	"net"
	"time"

	"google.golang.org/grpc/status"
)

// logPeerEvent logs a server's peer event, if there is a logger.
func logPeerEvent(l *slog.Logger, ev PeerEvent) {
	if l == nil {
		return
	}
	attrs := []slog.Attr{
		slog.String("transport", ev.Peer.Transport),
		slog.String("remote_addr", addrString(ev.Peer.RemoteAddr)),
	}
	if ev.Peer.ID != "" {
		attrs = append([]slog.Attr{slog.String("peer_id", ev.Peer.ID)}, attrs...)
	}
	switch ev.Type {
	case PeerConnected:
		l.LogAttrs(context.Background(), slog.LevelInfo, "brpc: client connected", attrs...)
	case PeerDisconnected:
		attrs = append(attrs, slog.String("kind", string(ev.Kind)), slog.String("reason", ev.Reason),
			slog.Duration("connected_for", time.Since(ev.Peer.ConnectedAt)))
		level := slog.LevelInfo
		if ev.Kind == DisconnectKeepaliveTimeout || ev.Kind == DisconnectConnectionLost || ev.Kind == DisconnectReplaced {
			level = slog.LevelWarn
		}
		l.LogAttrs(context.Background(), level, "brpc: client disconnected", attrs...)
	case PeerRejected:
		st := status.Convert(ev.Err)
		attrs = append(attrs, slog.String("code", st.Code().String()), slog.String("reason", st.Message()))
		l.LogAttrs(context.Background(), slog.LevelWarn, "brpc: client refused", attrs...)
	}
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}
