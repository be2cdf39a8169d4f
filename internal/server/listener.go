package server

import "github.com/brpc-go/brpc/internal/session"

// Listener is where a Server accepts sessions: one of the public listeners,
// seen through what the core needs of it.
type Listener interface {
	// Start begins accepting with the server's session settings.
	Start(ListenConfig) (Acceptor, error)
	// Close stops accepting and ends the sessions accepted through it.
	Close() error
}

// ListenConfig is what a Server tells its listeners when it starts serving.
type ListenConfig struct {
	QUIC session.QUICConfig
	TCP  session.TCPConfig
}

// Acceptor yields sessions whose transport handshake completed.
type Acceptor interface {
	Accept() (session.Session, error)
	StopAccepting()
}
