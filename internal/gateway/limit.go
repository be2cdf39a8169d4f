package gateway

import (
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Limiter bounds the relayed calls in flight, per client and in all. One
// Limiter may serve several handlers (a gateway mounted on two
// *grpc.Servers), which then share its bounds.
type Limiter struct {
	perClient, total int

	mu  sync.Mutex
	n   int
	per map[string]int // only clients with calls in flight
}

// NewLimiter bounds calls to perClient per client and total in all; a
// bound that is not positive is no bound.
func NewLimiter(perClient, total int) *Limiter {
	return &Limiter{perClient: perClient, total: total, per: map[string]int{}}
}

// acquire takes a slot for a call to client id, or refuses it with
// ResourceExhausted. The total is checked first: a caller cannot learn
// from the refusal how busy one client is while the whole gateway is full.
func (l *Limiter) acquire(id string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.total > 0 && l.n >= l.total {
		return status.Errorf(codes.ResourceExhausted, "brpc gateway: %d relayed calls are in flight, the most this server allows; try again later", l.total)
	}
	if l.perClient > 0 && l.per[id] >= l.perClient {
		return status.Errorf(codes.ResourceExhausted, "brpc gateway: client %q has %d relayed calls in flight, the most allowed per client; try again later", id, l.perClient)
	}
	l.n++
	l.per[id]++
	return nil
}

// release gives back a slot acquire took for id.
func (l *Limiter) release(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n--
	if l.per[id]--; l.per[id] <= 0 {
		delete(l.per, id)
	}
}
