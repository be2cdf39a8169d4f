package client

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/brpc-go/brpc/internal/grpcglue"
	"github.com/brpc-go/brpc/internal/handshake"
	"github.com/brpc-go/brpc/internal/session"
)

// connect establishes a session and runs the handshake on it.
func (c *Conn) connect(ctx context.Context) (*clientSession, error) {
	sess, err := c.dialSession(ctx)
	if err != nil {
		return nil, handshake.DialError(ctx, "dial "+c.conf.Target, err)
	}
	ctrl, id, err := handshake.SendHello(ctx, sess, c.conf.Metadata)
	if err != nil {
		sess.Close(session.CodeNormal, "handshake failed")
		return nil, err
	}
	cs := &clientSession{sess: sess, ctrl: ctrl, id: id}
	cs.info = grpcglue.NewSessionInfo(grpcglue.Peer{Transport: sess.Transport(), ConnectedAt: time.Now()}, sess, nil)
	return cs, nil
}

// dialSession opens a session on the target's transport or, for a bare
// host:port, races the transports: the preferred one (the last winner, QUIC
// at first) starts at once, the other after the fallback delay or as soon
// as the first fails, and the first session established wins.
func (c *Conn) dialSession(ctx context.Context) (session.Session, error) {
	if c.conf.Scheme != "" {
		return c.dialTransport(ctx, c.conf.Scheme)
	}
	c.mu.Lock()
	first, second := session.TransportQUIC, session.TransportTCP
	if c.winner == session.TransportTCP {
		first, second = second, first
	}
	c.mu.Unlock()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		sess session.Session
		err  error
	}
	results := make(chan result, 2)
	start := func(tr string) {
		go func() {
			s, err := c.dialTransport(ctx, tr)
			results <- result{s, err}
		}()
	}
	start(first)
	fallback := time.NewTimer(c.conf.FallbackDelay)
	defer fallback.Stop()
	started, done := 1, 0
	var errs []error
	for done < started {
		select {
		case <-fallback.C:
			if started == 1 {
				start(second)
				started++
			}
			continue
		case r := <-results:
			done++
			if r.err == nil {
				cancel()
				// The other attempt, if any, is abandoned: close what it
				// may still establish.
				if started > done {
					go func() {
						if r := <-results; r.err == nil {
							r.sess.Close(session.CodeNormal, "lost the transport race")
						}
					}()
				}
				return r.sess, nil
			}
			errs = append(errs, r.err)
			if started == 1 {
				start(second)
				started++
			}
		}
	}
	return nil, errors.Join(errs...)
}

func (c *Conn) dialTransport(ctx context.Context, transport string) (session.Session, error) {
	conf := c.conf.Session
	if transport == session.TransportTCP {
		return session.DialTCP(ctx, c.conf.HostPort, c.conf.TLS, session.TCPConfig{Settings: conf})
	}
	return session.DialQUIC(ctx, c.conf.HostPort, c.conf.TLS, session.QUICConfig{Settings: conf})
}

// dialStream opens a stream for grpc-go's connection to the server on the
// current session. While there is none, it fails at once: grpc-go then
// fails calls fast or holds wait-for-ready ones, and retries the dialer on
// its short backoff until a session is back.
func (c *Conn) dialStream(ctx context.Context, _ string) (net.Conn, error) {
	c.mu.Lock()
	cs, stopErr := c.cur, c.stopErr
	c.mu.Unlock()
	if cs == nil {
		if stopErr != nil {
			return nil, stopErr
		}
		return nil, errors.New("brpc: not connected to the server; reconnecting")
	}
	if cs.goingAway.Load() {
		return nil, errors.New("brpc: the server is going away")
	}
	s, err := cs.sess.OpenStream(ctx)
	if err != nil {
		return nil, err
	}
	return grpcglue.NewStreamConn(s, cs.info), nil
}
