package server

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/brpc-go/brpc/internal/grpcglue"
)

// Errors a Watch ends with.
var (
	// ErrWatchOverrun: the watch's buffer was full when an event came.
	ErrWatchOverrun = errors.New("brpc: the watch fell behind the server's peer events")
	// ErrWatchStopped: the server stopped; no more events will come.
	ErrWatchStopped = errors.New("brpc: the server stopped")
	// ErrWatchClosed: the watch's own Close ended it.
	ErrWatchClosed = errors.New("brpc: the watch was closed")
)

// WatchConfig says what a Watch receives.
type WatchConfig struct {
	// Buffer is how many events may wait for the watcher; one more ends
	// the watch with ErrWatchOverrun. At least 1.
	Buffer int
	// Current asks for the clients connected when the watch begins.
	Current bool
	// Rejected asks for Rejected events too.
	Rejected bool
}

// Watch receives a server's peer events from the moment it was made, in the
// order the server reported them. Events never wait for a watcher: one
// that lets its buffer fill up is ended instead, so a slow watcher holds up
// neither the sessions that report events nor the other watchers.
type Watch struct {
	hub      *watchHub
	events   chan Event
	rejected bool
	// overrun is set, before events is closed, when an event found the
	// buffer full. From then on Next hands out nothing, not even what is
	// buffered: what a watcher gets is then all the events up to some
	// point, never a sequence with one missing.
	overrun atomic.Bool
	err     error // why events was closed (under hub.mu)
}

// Next returns the watch's next event, waiting for one until ctx ends. Once
// the watch has ended it returns why: ErrWatchOverrun, ErrWatchStopped
// (after the events that came before the stop) or ErrWatchClosed.
func (w *Watch) Next(ctx context.Context) (Event, error) {
	select {
	case <-ctx.Done():
		return Event{}, ctx.Err()
	case ev, ok := <-w.events:
		if w.overrun.Load() {
			return Event{}, ErrWatchOverrun
		}
		if !ok {
			w.hub.mu.Lock()
			defer w.hub.mu.Unlock()
			return Event{}, w.err
		}
		return ev, nil
	}
}

// Close ends the watch; Next reports ErrWatchClosed, unless the watch had
// ended already.
func (w *Watch) Close() {
	w.hub.mu.Lock()
	defer w.hub.mu.Unlock()
	if _, ok := w.hub.watches[w]; ok {
		w.hub.end(w, ErrWatchClosed)
	}
}

// watchHub hands peer events to the watches. It keeps its own set of the
// sessions it reported connected and not yet disconnected, rather than
// reading the registry: the registry holds a client from before its welcome
// and hands its ID to a newer session before the older one's disconnect is
// reported, so a listing taken from it could disagree with the events that
// follow.
type watchHub struct {
	mu      sync.Mutex
	live    map[*Session]struct{}
	watches map[*Watch]struct{}
	stopped bool
}

// Watch starts a watch. With conf.Current it also returns the clients
// connected right then, ordered by ID and then by connection time (a
// replaced session and its successor may both be listed, until the
// older one's Disconnected event): exactly those whose Connected event came
// before the watch began and whose Disconnected event did not.
func (s *Server) Watch(conf WatchConfig) ([]grpcglue.Peer, *Watch) {
	h := &s.watch
	w := &Watch{hub: h, events: make(chan Event, max(conf.Buffer, 1)), rejected: conf.Rejected}
	h.mu.Lock()
	defer h.mu.Unlock()
	var current []grpcglue.Peer
	if conf.Current {
		current = make([]grpcglue.Peer, 0, len(h.live))
		for ss := range h.live {
			current = append(current, ss.Peer())
		}
		slices.SortFunc(current, func(a, b grpcglue.Peer) int {
			return cmp.Or(cmp.Compare(a.ID, b.ID), a.ConnectedAt.Compare(b.ConnectedAt))
		})
	}
	if h.stopped {
		w.err = ErrWatchStopped
		close(w.events)
		return current, w
	}
	if h.watches == nil {
		h.watches = make(map[*Watch]struct{})
	}
	h.watches[w] = struct{}{}
	return current, w
}

// publish records ss's event and hands it to every watch that wants it.
func (h *watchHub) publish(ss *Session, ev Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch ev.Type {
	case Connected:
		if h.live == nil {
			h.live = make(map[*Session]struct{})
		}
		h.live[ss] = struct{}{}
	case Disconnected:
		delete(h.live, ss)
	}
	for w := range h.watches {
		if ev.Type == Rejected && !w.rejected {
			continue
		}
		select {
		case w.events <- ev:
		default:
			w.overrun.Store(true)
			h.end(w, ErrWatchOverrun)
		}
	}
}

// stop ends every watch: the server has reported its last event.
func (h *watchHub) stop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stopped = true
	for w := range h.watches {
		h.end(w, ErrWatchStopped)
	}
}

func (h *watchHub) end(w *Watch, err error) {
	delete(h.watches, w)
	w.err = err
	close(w.events)
}
