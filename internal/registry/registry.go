// Package registry keeps the connected peers of a server by ID.
//
// One ID maps to at most one entry. Adding an entry under an ID that is taken
// replaces the older entry, which the caller then closes: the newer session of
// a client wins, so a client that reconnects before its old session timed out
// is reachable at once.
package registry

import (
	"sort"
	"sync"
)

// Registry maps IDs to entries of type T (pointers, compared by identity).
type Registry[T comparable] struct {
	mu      sync.RWMutex
	entries map[string]T
}

// New returns an empty registry.
func New[T comparable]() *Registry[T] {
	return &Registry[T]{entries: make(map[string]T)}
}

// Add stores v under id. If another entry held id, it is returned with
// replaced set, and it is no longer in the registry.
func (r *Registry[T]) Add(id string, v T) (old T, replaced bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old, replaced = r.entries[id]
	r.entries[id] = v
	return old, replaced
}

// Remove deletes id only if it still maps to v, so that a replaced entry
// cleaning up after itself never removes its successor. It reports whether
// it removed anything.
func (r *Registry[T]) Remove(id string, v T) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if cur, ok := r.entries[id]; ok && cur == v {
		delete(r.entries, id)
		return true
	}
	return false
}

// Get returns the entry stored under id.
func (r *Registry[T]) Get(id string) (T, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	v, ok := r.entries[id]
	return v, ok
}

// Len is the number of entries.
func (r *Registry[T]) Len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.entries)
}

// List returns every entry, ordered by ID.
func (r *Registry[T]) List() []T {
	r.mu.RLock()
	ids := make([]string, 0, len(r.entries))
	for id := range r.entries {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	out := make([]T, 0, len(ids))
	for _, id := range ids {
		out = append(out, r.entries[id])
	}
	r.mu.RUnlock()
	return out
}
