package server

import (
	"cmp"
	"errors"
	"slices"
	"sync"

	"github.com/brpc-go/brpc/internal/grpcglue"
)

// Errors a Watch ends with.
var (
	// ErrWatchOverrun: the watch's buffer was full when an event came.
	ErrWatchOverrun = errors.New("brpc: the watch fell behind the server's peer events")
	// ErrWatchStopped: the server stopped; no more events will come.
	ErrWatchStopped = errors.New("brpc: the server stopped")
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
	err      error // why events was closed; written before closing it
}

// Events delivers the watch's events. It is closed when the watch ends;
// Err then says why.
func (w *Watch) Events() <-chan Event { return w.events }

// Err is why the watch ended (ErrWatchOverrun or ErrWatchStopped), once
// Events is closed; nil after Close or while the watch runs.
func (w *Watch) Err() error {
	w.hub.mu.Lock()
	defer w.hub.mu.Unlock()
	return w.err
}

// Close ends the watch. Events is closed, if it was not already.
func (w *Watch) Close() {
	w.hub.mu.Lock()
	defer w.hub.mu.Unlock()
	if _, ok := w.hub.watches[w]; ok {
		delete(w.hub.watches, w)
		close(w.events)
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
			// What the watcher has not read is of no use to it now
			// that it missed this event: free it.
			// The watcher may be reading at the same time: never
			// wait for an event here.
			for drained := false; !drained; {
				select {
				case <-w.events:
				default:
					drained = true
				}
			}
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
