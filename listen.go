package brpc

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"

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

	start(cfg listenConfig) (acceptor, error)
}

// listenConfig is what a Server tells its listeners when it starts serving.
type listenConfig struct {
	quic session.QUICConfig
	tcp  session.TCPConfig
}

// acceptor yields sessions whose transport handshake completed.
type acceptor interface {
	accept() (session.Session, error)
	stopAccepting()
}

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
	return &quicListener{ul: ul, tls: conf}, nil
}

// ListenTCP binds a TCP socket on addr and returns a Listener for
// TLS-over-TCP sessions, whose streams are multiplexed with smux (protocol
// version 2). It is the transport for networks that block UDP; it behaves
// like ListenQUIC in every other way. tlsConf is used as for ListenQUIC. A
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
	return &tcpListener{tl: tl, tls: conf}, nil
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

type quicListener struct {
	ul  *session.QUICListener
	tls *tls.Config

	mu      sync.Mutex
	started bool
	closed  bool
}

func (l *quicListener) Addr() net.Addr { return l.ul.Addr() }

func (l *quicListener) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	return l.ul.Close()
}

func (l *quicListener) start(cfg listenConfig) (acceptor, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.closed:
		return nil, net.ErrClosed
	case l.started:
		return nil, errors.New("brpc: listener is already being served")
	}
	if err := l.ul.Start(l.tls, cfg.quic); err != nil {
		return nil, fmt.Errorf("brpc: listen quic: %w", err)
	}
	l.started = true
	return quicAcceptor{l.ul}, nil
}

type quicAcceptor struct{ ul *session.QUICListener }

func (a quicAcceptor) accept() (session.Session, error) {
	return a.ul.Accept(context.Background())
}

func (a quicAcceptor) stopAccepting() { _ = a.ul.StopAccepting() }

type tcpListener struct {
	tl  *session.TCPListener
	tls *tls.Config

	mu      sync.Mutex
	started bool
	closed  bool
}

func (l *tcpListener) Addr() net.Addr { return l.tl.Addr() }

func (l *tcpListener) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	return l.tl.Close()
}

func (l *tcpListener) start(cfg listenConfig) (acceptor, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.closed:
		return nil, net.ErrClosed
	case l.started:
		return nil, errors.New("brpc: listener is already being served")
	}
	if err := l.tl.Start(l.tls, cfg.tcp); err != nil {
		return nil, fmt.Errorf("brpc: listen tcp: %w", err)
	}
	l.started = true
	return tcpAcceptor{l.tl}, nil
}

type tcpAcceptor struct{ tl *session.TCPListener }

func (a tcpAcceptor) accept() (session.Session, error) {
	return a.tl.Accept(context.Background())
}

func (a tcpAcceptor) stopAccepting() { _ = a.tl.StopAccepting() }
