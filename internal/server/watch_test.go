package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/brpc-go/brpc/internal/grpcglue"
)

// fakeConn is the connection of a session that exists only for the hub.
type fakeConn struct{}

func (fakeConn) LocalAddr() net.Addr      { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1} }
func (fakeConn) RemoteAddr() net.Addr     { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 2} }
func (fakeConn) TLS() tls.ConnectionState { return tls.ConnectionState{} }
func fakeSession(id string, at time.Time) *Session {
	return &Session{info: grpcglue.NewSessionInfo(grpcglue.Peer{ID: id, Transport: "quic", ConnectedAt: at}, fakeConn{}, nil)}
}

func connected(ss *Session) Event { return Event{Type: Connected, Peer: ss.Peer()} }
func disconnected(ss *Session) Event {
	return Event{Type: Disconnected, Peer: ss.Peer(), Kind: Replaced}
}

// next returns the watch's next event, or why it ended; events are
// published before it is called, so it waits only as long as a bound.
func next(t *testing.T, w *Watch) (Event, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	ev, err := w.Next(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatal("no event came for the watch")
	}
	return ev, err
}

func TestWatchListsTheConnectedSessionsItsEventsContinueFrom(t *testing.T) {
	s := &Server{}
	base := time.Now()
	old, newer, bob := fakeSession("alice", base), fakeSession("alice", base.Add(time.Second)), fakeSession("bob", base)
	// The newer session of alice is reported connected before the older
	// one's disconnect, as a replacement does.
	for _, ss := range []*Session{bob, old, newer} {
		s.watch.publish(ss, connected(ss))
	}

	current, w := s.Watch(WatchConfig{Buffer: 4, Current: true})
	defer w.Close()
	var got []string
	for _, p := range current {
		got = append(got, p.ID+"@"+p.ConnectedAt.Sub(base).String())
	}
	if want := "[alice@0s alice@1s bob@0s]"; "["+strings.Join(got, " ")+"]" != want {
		t.Fatalf("current = %v, want %s (both sessions of alice until the older one's disconnect)", got, want)
	}
	s.watch.publish(old, disconnected(old))
	if ev, err := next(t, w); err != nil || ev.Type != Disconnected || !ev.Peer.ConnectedAt.Equal(base) {
		t.Fatalf("event %+v, want the older alice's Disconnected", ev)
	}
	current, w2 := s.Watch(WatchConfig{Buffer: 1, Current: true})
	defer w2.Close()
	if len(current) != 2 || current[0].ID != "alice" || !current[0].ConnectedAt.Equal(base.Add(time.Second)) {
		t.Fatalf("current after the older alice left = %+v, want the newer alice and bob", current)
	}
}

// A watcher that stops reading is ended alone; the publisher never waits
// and the other watchers get every event.
func TestWatchThatFallsBehindIsEndedWithoutHoldingOthers(t *testing.T) {
	s := &Server{}
	slow := func() *Watch { _, w := s.Watch(WatchConfig{Buffer: 2}); return w }()
	_, fast := s.Watch(WatchConfig{Buffer: 8})
	defer fast.Close()
	sessions := []*Session{fakeSession("a", time.Now()), fakeSession("b", time.Now()), fakeSession("c", time.Now())}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, ss := range sessions {
			s.watch.publish(ss, connected(ss))
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("publishing waited for a watcher that does not read")
	}
	// Its buffer holds a and b, but a watcher that missed c gets neither:
	// what it got would look complete.
	if ev, err := next(t, slow); !errors.Is(err, ErrWatchOverrun) {
		t.Fatalf("the overrun watch gave %+v, %v; want ErrWatchOverrun at once", ev, err)
	}
	slow.Close() // after the end: no double close
	if _, err := next(t, slow); !errors.Is(err, ErrWatchOverrun) {
		t.Fatalf("after Close the overrun watch reports %v, want still ErrWatchOverrun", err)
	}
	for _, want := range []string{"a", "b", "c"} {
		if ev, err := next(t, fast); err != nil || ev.Peer.ID != want {
			t.Fatalf("the other watcher got %q, %v; want %q", ev.Peer.ID, err, want)
		}
	}
	fast.Close()
	if _, err := next(t, fast); !errors.Is(err, ErrWatchClosed) {
		t.Fatalf("a closed watch reports %v, want ErrWatchClosed", err)
	}
}

func TestWatchEndsWhenTheServerStopsAfterItsLastEvents(t *testing.T) {
	s := &Server{}
	_, w := s.Watch(WatchConfig{Buffer: 4})
	_, quiet := s.Watch(WatchConfig{Buffer: 4, Rejected: false})
	_, all := s.Watch(WatchConfig{Buffer: 4, Rejected: true})
	ss := fakeSession("a", time.Now())
	s.watch.publish(nil, Event{Type: Rejected})
	s.watch.publish(ss, connected(ss))
	s.watch.stop()
	if ev, err := next(t, w); err != nil || ev.Type != Connected {
		t.Fatalf("after stop: %+v, %v; want the Connected published before it", ev, err)
	}
	if _, err := next(t, w); !errors.Is(err, ErrWatchStopped) {
		t.Fatalf("after its events the watch must end with ErrWatchStopped, got %v", err)
	}
	if ev, _ := next(t, quiet); ev.Type != Connected {
		t.Errorf("a watch without Rejected got %v first, want Connected", ev.Type)
	}
	if ev, _ := next(t, all); ev.Type != Rejected {
		t.Errorf("a watch with Rejected got %v first, want Rejected", ev.Type)
	}
	_, late := s.Watch(WatchConfig{Buffer: 1})
	if _, err := next(t, late); !errors.Is(err, ErrWatchStopped) {
		t.Fatalf("a watch begun after stop: %v, want ErrWatchStopped", err)
	}
	late.Close()
}

// Sessions publish from their own goroutines while watchers come, read,
// fall behind and go: every watch ends, and the listing a watch starts
// from agrees with the events it then gets.
func TestWatchUnderConcurrentEvents(t *testing.T) {
	s := &Server{}
	const sessions, watchers = 16, 8
	var publishers, readers sync.WaitGroup
	start := make(chan struct{})
	for i := range sessions {
		publishers.Add(1)
		go func() {
			defer publishers.Done()
			<-start
			for j := range 20 {
				ss := fakeSession(fmt.Sprintf("s%d-%d", i, j), time.Now())
				s.watch.publish(ss, connected(ss))
				s.watch.publish(ss, disconnected(ss))
			}
		}()
	}
	for i := range watchers {
		readers.Add(1)
		go func() {
			defer readers.Done()
			<-start
			current, w := s.Watch(WatchConfig{Buffer: 1 + i*64, Current: true})
			live := map[string]bool{}
			for _, p := range current {
				live[p.ID] = true
			}
			for {
				ev, err := w.Next(context.Background())
				if err != nil {
					break
				}
				switch ev.Type {
				case Connected:
					if live[ev.Peer.ID] {
						t.Errorf("a watch got %s connected twice", ev.Peer.ID)
					}
					live[ev.Peer.ID] = true
				case Disconnected:
					if !live[ev.Peer.ID] {
						t.Errorf("a watch got %s disconnected, not connected before", ev.Peer.ID)
					}
					delete(live, ev.Peer.ID)
				}
				if i%2 == 0 && len(live) > 4 {
					w.Close() // a watcher that leaves midway
				}
			}
		}()
	}
	close(start)
	publishers.Wait()
	s.watch.stop()
	readers.Wait()
	if n := len(s.watch.live); n != 0 {
		t.Errorf("%d sessions still live after all disconnected", n)
	}
}
