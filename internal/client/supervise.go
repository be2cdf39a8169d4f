package client

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc/internal/grpcglue"
	"github.com/brpc-go/brpc/internal/handshake"
	"github.com/brpc-go/brpc/internal/handshake/handshakepb"
	"github.com/brpc-go/brpc/internal/session"
)

// supervise runs sessions one after the other until Close: it serves the
// current one until it ends, then reconnects.
func (c *Conn) supervise(cs *clientSession) {
	defer c.wg.Done()
	for {
		c.serveSession(cs)
		if c.ctx.Err() != nil {
			return
		}
		err := c.sessionEnded(cs)
		e, _ := cs.sess.Ending()
		c.log(slog.LevelInfo, "brpc: session ended", cs, slog.String("cause", e.String()))
		if err != nil {
			c.log(slog.LevelWarn, "brpc: not reconnecting", cs, slog.String("reason", err.Error()))
			c.stop(err)
			return
		}
		if cs = c.reconnect(cs.endpoint, cs.reconnectWindow); cs == nil || !c.setSession(cs) {
			return
		}
	}
}

// serveSession feeds the streams the server opens to the client's gRPC
// server and reads the server's notices, until the session ends.
func (c *Conn) serveSession(cs *clientSession) {
	var accepting sync.WaitGroup
	accepting.Add(1)
	go func() {
		defer accepting.Done()
		ctx := cs.sess.Context()
		for {
			s, err := cs.sess.AcceptStream(ctx)
			if err != nil {
				return
			}
			c.streams.Push(ctx, grpcglue.NewStreamConn(s, cs.info))
		}
	}()
	for {
		var n handshakepb.Notice
		if err := handshake.ReadMsg(cs.ctrl, &n, handshake.MaxWelcomeSize); err != nil {
			if errors.Is(err, handshake.ErrTooLarge) || errors.Is(err, handshake.ErrMalformed) {
				cs.sess.Close(session.CodeProtocol, "bad control message")
			}
			break
		}
		switch {
		case n.GetGoAway() != nil:
			cs.goingAway.Store(true)
		case n.GetClosing() != nil:
			// The server's last word: close the session from this side,
			// with the server's code and reason as the session's Ending
			// (TCP would carry neither).
			cs.goingAway.Store(true)
			cs.reconnectWindow = handshake.ReconnectWindow(n.GetClosing())
			cs.sess.PeerAnnounced(session.CloseCode(n.GetClosing().GetCode()), n.GetClosing().GetReason())
		}
	}
	// The control stream lives as long as the session: past it, the
	// session is over whatever the transport says.
	cs.sess.Close(session.CodeNormal, "control stream ended")
	accepting.Wait()
	c.setSession(nil)
}

// sessionEnded decides what the end of cs means: nil to reconnect, or the
// error the Conn stops with.
func (c *Conn) sessionEnded(cs *clientSession) error {
	if e, _ := cs.sess.Ending(); e.Kind == session.EndClosed && e.ByPeer && e.Code == session.CodeReplaced {
		return status.Errorf(codes.Unavailable, "brpc: another connection took this client's ID %q: %s", cs.id, e.Reason)
	}
	return nil
}

// reconnect dials until a session is welcomed, with grpc-go's backoff
// semantics: the first attempt at once, then exponentially growing,
// jittered delays. A server that announced a reconnect window (window,
// from its Closing notice) gets the first attempt at a uniformly random
// point of it instead, so that the fleet it told of its shutdown does not
// come back all at once. Each attempt tries every endpoint, the one of the
// session that ended (prev) last. It returns nil once the Conn is closed.
func (c *Conn) reconnect(prev int, window time.Duration) *clientSession {
	for attempt := 0; ; attempt++ {
		var d time.Duration
		if attempt == 0 {
			d = firstAttemptDelay(window, c.conf.MaxReconnectWindow)
		} else {
			d = backoffDelay(c.conf.Backoff, attempt-1)
		}
		if d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-c.ctx.Done():
				t.Stop()
				return nil
			}
		}
		c.log(slog.LevelDebug, "brpc: reconnecting", nil, slog.Int("attempt", attempt+1), slog.Duration("delay", d))
		c.setState(connectivity.Connecting)
		ctx, cancel := context.WithTimeout(c.ctx, minConnectTimeout)
		cs, err := c.connect(ctx, prev)
		cancel()
		if err == nil {
			return cs
		}
		if c.ctx.Err() != nil {
			return nil
		}
		c.log(slog.LevelWarn, "brpc: reconnect failed", nil, slog.Int("attempt", attempt+1), slog.String("error", err.Error()))
		c.setState(connectivity.TransientFailure)
	}
}

// firstAttemptDelay is the delay before the first reconnect attempt: a
// uniformly random point of the announced window, capped at limit (0: at
// once).
func firstAttemptDelay(window, limit time.Duration) time.Duration {
	window = min(window, limit)
	if window <= 0 {
		return 0
	}
	return rand.N(window)
}

// backoffDelay is the delay before retry number retries (0-based), as
// grpc-go computes it.
func backoffDelay(bc backoff.Config, retries int) time.Duration {
	d, max := float64(bc.BaseDelay), float64(bc.MaxDelay)
	for ; d < max && retries > 0; retries-- {
		d *= bc.Multiplier
	}
	d = min(d, max)
	d *= 1 + bc.Jitter*(rand.Float64()*2-1)
	if d < 0 {
		return 0
	}
	return time.Duration(d)
}
