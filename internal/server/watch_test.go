package server

import (
	"crypto/tls"
	"errors"
	"net"
	"strings"
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

// next returns the watch's next event, failing if none is waiting.
func next(t *testing.T, w *Watch) (Event, bool) {
	t.Helper()
	select {
	case ev, ok := <-w.Events():
		return ev, ok
	default:
		t.Fatal("no event is waiting for the watch")
		return Event{}, false
	}
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
	if ev, _ := next(t, w); ev.Type != Disconnected || !ev.Peer.ConnectedAt.Equal(base) {
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
	if ev, ok := <-slow.Events(); ok {
		t.Fatalf("the overrun watch still delivered %+v; its unread events should be dropped", ev)
	}
	if !errors.Is(slow.Err(), ErrWatchOverrun) {
		t.Fatalf("overrun watch ended with %v, want ErrWatchOverrun", slow.Err())
	}
	slow.Close() // after the end: no double close
	for _, want := range []string{"a", "b", "c"} {
		if ev, _ := next(t, fast); ev.Peer.ID != want {
			t.Fatalf("the other watcher got %q, want %q", ev.Peer.ID, want)
		}
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
	if ev, ok := next(t, w); !ok || ev.Type != Connected {
		t.Fatalf("after stop: %+v, %v; want the Connected published before it", ev, ok)
	}
	if _, ok := next(t, w); ok || !errors.Is(w.Err(), ErrWatchStopped) {
		t.Fatalf("after its events the watch must end with ErrWatchStopped, got open=%v err=%v", ok, w.Err())
	}
	if ev, _ := next(t, quiet); ev.Type != Connected {
		t.Errorf("a watch without Rejected got %v first, want Connected", ev.Type)
	}
	if ev, _ := next(t, all); ev.Type != Rejected {
		t.Errorf("a watch with Rejected got %v first, want Rejected", ev.Type)
	}
	_, late := s.Watch(WatchConfig{Buffer: 1})
	if _, ok := <-late.Events(); ok || !errors.Is(late.Err(), ErrWatchStopped) {
		t.Fatalf("a watch begun after stop: open=%v err=%v, want it ended with ErrWatchStopped", ok, late.Err())
	}
	late.Close()
}
