package brpc

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/brpc-go/brpc/internal/server"
	"github.com/brpc-go/brpc/internal/session"
)

// ALPN is the TLS application protocol name brpc negotiates. A TLS or QUIC
// client that does not offer it (a browser, an HTTP/3 client) is refused
// during the TLS handshake.
const ALPN = "brpc/1"

// Listener is where a Server accepts clients. Only listeners made by this
// package (ListenQUIC, ListenTCP) are accepted by Serve.
type Listener interface {
	// Addr is the address the listener is bound to.
	Addr() net.Addr
	// Close stops accepting clients and ends the sessions accepted through
	// this listener.
	Close() error

	start(cfg server.ListenConfig) (server.Acceptor, error)
}

// coreListener shows a Listener to the server core.
type coreListener struct{ Listener }

func (l coreListener) Start(cfg server.ListenConfig) (server.Acceptor, error) { return l.start(cfg) }

// ListenQUIC binds a UDP socket on addr (e.g. ":4433" or "127.0.0.1:0") and
// returns a Listener for QUIC sessions. tlsConf must hold the server
// certificate; set ClientAuth and ClientCAs for mTLS. brpc clones it and sets
// TLS 1.3 minimum and its ALPN protocol name.
func ListenQUIC(addr string, tlsConf *tls.Config) (Listener, error) {
	conf, err := serverTLS(tlsConf)
	if err != nil {
		return nil, err
	}
	ul, err := session.ListenUDP(addr)
	if err != nil {
		return nil, fmt.Errorf("brpc: listen quic %s: %w", addr, err)
	}
	return &listener{sl: ul, transport: "quic", begin: func(cfg server.ListenConfig) error {
		return ul.Start(conf, cfg.QUIC)
	}}, nil
}

// ListenTCP binds a TCP socket on addr and returns a Listener for
// TLS-over-TCP sessions, whose streams are multiplexed with
// hashicorp/yamux. It is the transport for networks that block UDP; it
// behaves like ListenQUIC in every other way. tlsConf is used as for ListenQUIC. A
// QUIC and a TCP listener may share a port number.
func ListenTCP(addr string, tlsConf *tls.Config) (Listener, error) {
	conf, err := serverTLS(tlsConf)
	if err != nil {
		return nil, err
	}
	tl, err := session.ListenTCP(addr)
	if err != nil {
		return nil, fmt.Errorf("brpc: listen tcp %s: %w", addr, err)
	}
	return &listener{sl: tl, transport: "tcp", begin: func(cfg server.ListenConfig) error {
		return tl.Start(conf, cfg.TCP)
	}}, nil
}

func serverTLS(c *tls.Config) (*tls.Config, error) {
	if c == nil || (len(c.Certificates) == 0 && c.GetCertificate == nil && c.GetConfigForClient == nil) {
		return nil, errors.New("brpc: the server tls.Config needs a certificate")
	}
	return protocolTLS(c), nil
}

// protocolTLS clones c and sets what brpc's protocol needs.
func protocolTLS(c *tls.Config) *tls.Config {
	c = c.Clone()
	if c.MinVersion < tls.VersionTLS13 {
		c.MinVersion = tls.VersionTLS13
	}
	c.NextProtos = []string{ALPN}
	return c
}

// sessionListener is what the session package's listeners have in common.
type sessionListener interface {
	Addr() net.Addr
	Accept(ctx context.Context) (session.Session, error)
	StopAccepting() error
	Close() error
}

// listener is the Listener of either transport. It is also its own
// acceptor once started.
type listener struct {
	sl        sessionListener
	transport string
	begin     func(server.ListenConfig) error // starts accepting with the server's settings

	mu      sync.Mutex
	started bool
	closed  bool
}

func (l *listener) Addr() net.Addr { return l.sl.Addr() }

func (l *listener) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	return l.sl.Close()
}

func (l *listener) start(cfg server.ListenConfig) (server.Acceptor, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.closed:
		return nil, net.ErrClosed
	case l.started:
		return nil, errors.New("brpc: listener is already being served")
	}
	if err := l.begin(cfg); err != nil {
		return nil, fmt.Errorf("brpc: listen %s: %w", l.transport, err)
	}
	l.started = true
	return l, nil
}

func (l *listener) Accept() (session.Session, error) { return l.sl.Accept(context.Background()) }

func (l *listener) StopAccepting() { _ = l.sl.StopAccepting() }
