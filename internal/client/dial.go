package client

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc/internal/grpcglue"
	"github.com/brpc-go/brpc/internal/handshake"
	"github.com/brpc-go/brpc/internal/session"
)

// connect establishes a session with one of the endpoints and runs the
// handshake on it. Several endpoints are tried one after the other,
// starting at a random one (avoid, the endpoint of the session that just
// ended, if any, goes last), until one welcomes the client: one that
// cannot be reached or refuses with codes.Unavailable or
// codes.ResourceExhausted (stopping or full) passes the turn to the next;
// any other refusal ends the attempt with its status. Each endpoint gets at
// most minConnectTimeout and, when ctx has a deadline, an equal share of
// the time left, so that one that never answers leaves time for the others.
func (c *Conn) connect(ctx context.Context, avoid int) (*clientSession, error) {
	eps := c.conf.Endpoints
	if len(eps) == 1 {
		return c.connectTo(ctx, 0, "dial "+c.conf.Target)
	}
	order := endpointOrder(len(eps), avoid)
	var (
		errs      []string
		exhausted int
	)
	for i, ep := range order {
		actx, cancel := endpointContext(ctx, len(order)-i)
		cs, err := c.connectTo(actx, ep, "dial "+eps[ep].HostPort)
		shareOver := actx.Err() != nil
		cancel()
		if err == nil {
			return cs, nil
		}
		if ctx.Err() != nil {
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		switch code := status.Code(err); {
		case shareOver:
			// Its share of ctx ran out: as unreachable as a refused dial,
			// whatever the error says.
		case code == codes.ResourceExhausted:
			exhausted++
		case code != codes.Unavailable:
			return nil, err
		}
		c.log(slog.LevelInfo, "brpc: endpoint passed over", nil, slog.String("endpoint", eps[ep].HostPort), slog.String("error", err.Error()))
		errs = append(errs, status.Convert(err).Message())
	}
	// Every endpoint passed: full everywhere says so, anything else is
	// the server being unreachable.
	code := codes.Unavailable
	if exhausted == len(order) {
		code = codes.ResourceExhausted
	}
	return nil, status.Errorf(code, "brpc: no endpoint of %q welcomed the client: %s", c.conf.Target, strings.Join(errs, "; "))
}

// endpointOrder is the order in which n endpoints are tried: from a random
// one on, wrapping around, with avoid (when it is one of them) last.
func endpointOrder(n, avoid int) []int {
	order := make([]int, 0, n)
	start := rand.IntN(n)
	for i := range n {
		if ep := (start + i) % n; ep != avoid {
			order = append(order, ep)
		}
	}
	if avoid >= 0 && avoid < n {
		order = append(order, avoid)
	}
	return order
}

// endpointContext bounds one of left endpoint attempts (of a list of
// several) to an equal share of what remains of ctx's deadline, and to
// minConnectTimeout in any case: without the cap, a Dial whose ctx has no
// deadline would wait for ever on an endpoint that accepts TCP connections
// but never answers, and never try the next.
func endpointContext(ctx context.Context, left int) (context.Context, context.CancelFunc) {
	d := minConnectTimeout
	if dl, ok := ctx.Deadline(); ok && left > 0 {
		d = min(d, time.Until(dl)/time.Duration(left))
	}
	return context.WithTimeout(ctx, d)
}

// connectTo establishes a session with endpoint ep and runs the handshake
// on it; what names the attempt in errors.
func (c *Conn) connectTo(ctx context.Context, ep int, what string) (*clientSession, error) {
	sess, err := c.dialSession(ctx, c.conf.Endpoints[ep])
	if err != nil {
		return nil, handshake.DialError(ctx, what, err)
	}
	ctrl, id, err := handshake.SendHello(ctx, sess, c.conf.Metadata)
	if err != nil {
		sess.Close(session.CodeNormal, "handshake failed")
		return nil, err
	}
	cs := &clientSession{sess: sess, endpoint: ep, ctrl: ctrl, id: id}
	cs.info = grpcglue.NewSessionInfo(grpcglue.Peer{Transport: sess.Transport(), ConnectedAt: time.Now()}, sess, nil)
	return cs, nil
}

// dialSession opens a session on the target's transport or, for a bare
// host:port, races the transports: the preferred one (the last winner, QUIC
// at first) starts at once, the other after the fallback delay or as soon
// as the first fails, and the first session established wins.
func (c *Conn) dialSession(ctx context.Context, ep Endpoint) (session.Session, error) {
	if c.conf.Scheme != "" {
		return c.dialTransport(ctx, ep, c.conf.Scheme)
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
			s, err := c.dialTransport(ctx, ep, tr)
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

func (c *Conn) dialTransport(ctx context.Context, ep Endpoint, transport string) (session.Session, error) {
	conf := c.conf.Session
	if transport == session.TransportTCP {
		return session.DialTCP(ctx, ep.HostPort, ep.TLS, session.TCPConfig{Settings: conf})
	}
	if conf.HandshakeTimeout == 0 {
		conf.HandshakeTimeout = quicHandshakeIdle
	}
	return session.DialQUIC(ctx, ep.HostPort, ep.TLS, session.QUICConfig{Settings: conf})
}

// quicHandshakeIdle is how long a client's QUIC handshake waits for the
// server to say anything before it is abandoned (quic-go's handshake idle
// timeout, 5 s by default): as long as a brpc server lets a handshake take
// by default, so that a client whose Initial a busy server holds until it
// has a handshake slot free (a reconnect storm) is not gone by then.
const quicHandshakeIdle = 10 * time.Second

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
