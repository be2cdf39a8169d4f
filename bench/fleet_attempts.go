package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// attemptLog records, for every client of the fleet child, what its
// ClientConn logs about reconnecting (WithLogger): when its session ended,
// when each attempt started and after what delay, how each failed attempt
// ended, and when it was connected again. The storm report reads it to say
// what the last clients back waited for.
type attemptLog struct {
	mu      sync.Mutex
	clients [][]attemptEvent
}

type attemptEvent struct {
	at      time.Time
	kind    string // "ended", "start", "failed", "connected"
	attempt int
	delay   time.Duration
	err     string
}

func newAttemptLog(n int) *attemptLog { return &attemptLog{clients: make([][]attemptEvent, n)} }

// logger returns the logger for client i.
func (a *attemptLog) logger(i int) *slog.Logger { return slog.New(&attemptHandler{log: a, client: i}) }

// attemptHandler is a slog.Handler that files a client's records.
type attemptHandler struct {
	log    *attemptLog
	client int
}

func (h *attemptHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *attemptHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *attemptHandler) WithGroup(string) slog.Handler            { return h }

func (h *attemptHandler) Handle(_ context.Context, r slog.Record) error {
	ev := attemptEvent{at: r.Time}
	switch r.Message {
	case "brpc: session ended":
		ev.kind = "ended"
	case "brpc: reconnecting":
		ev.kind = "start"
	case "brpc: reconnect failed":
		ev.kind = "failed"
	case "brpc: connected":
		ev.kind = "connected"
	default:
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "attempt":
			ev.attempt = int(a.Value.Int64())
		case "delay":
			ev.delay = a.Value.Duration()
		case "error", "cause":
			ev.err = a.Value.String()
		}
		return true
	})
	h.log.mu.Lock()
	h.log.clients[h.client] = append(h.log.clients[h.client], ev)
	h.log.mu.Unlock()
	return nil
}

// errorClassRE strips what differs between clients from an error message.
var errorClassRE = regexp.MustCompile(`[0-9a-f]{8,}|\d+(\.\d+)*(:\d+)?|\[[^\]]*\]`)

// report writes, for the events since t0 (the restart), a histogram of the
// clients' reconnect times, how many attempts they needed, the errors of
// the failed ones and the timelines of the last 1 % back.
func (a *attemptLog) report(w io.Writer, t0 time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	type client struct {
		i        int
		back     time.Duration // connected after t0; -1: not yet
		failures int
		events   []attemptEvent
	}
	var cs []client
	errs := map[string]int{}
	failHist := map[int]int{}
	for i, evs := range a.clients {
		var ended time.Time
		for _, ev := range evs {
			if ev.kind == "ended" {
				ended = ev.at
			}
		}
		if ended.IsZero() {
			continue // never disconnected
		}
		c := client{i: i, back: -1}
		for _, ev := range evs {
			if ev.at.Before(ended) {
				continue
			}
			c.events = append(c.events, ev)
			switch ev.kind {
			case "failed":
				c.failures++
				errs[errorClassRE.ReplaceAllString(ev.err, "N")]++
			case "connected":
				if c.back < 0 {
					c.back = ev.at.Sub(t0)
				}
			}
		}
		failHist[c.failures]++
		cs = append(cs, c)
	}
	slices.SortFunc(cs, func(x, y client) int {
		bx, by := x.back, y.back
		if bx < 0 {
			bx = time.Hour
		}
		if by < 0 {
			by = time.Hour
		}
		return int(bx - by)
	})
	fmt.Fprintf(w, "storm attempts: %d clients reconnected; failed attempts per client:", len(cs))
	keys := make([]int, 0, len(failHist))
	for k := range failHist {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	for _, k := range keys {
		fmt.Fprintf(w, " %d: %d", k, failHist[k])
	}
	fmt.Fprintln(w)
	type kv struct {
		k string
		v int
	}
	var es []kv
	for k, v := range errs {
		es = append(es, kv{k, v})
	}
	slices.SortFunc(es, func(x, y kv) int { return y.v - x.v })
	for _, e := range es {
		fmt.Fprintf(w, "storm attempts: %6d failed with %s\n", e.v, e.k)
	}
	// Completion times per second, split by the failures before.
	var hist [][3]int // 0, 1, 2+ failures
	for _, c := range cs {
		if c.back < 0 {
			continue
		}
		s := max(int(c.back/time.Second), 0)
		for len(hist) <= s {
			hist = append(hist, [3]int{})
		}
		hist[s][min(c.failures, 2)]++
	}
	var b strings.Builder
	for s, h := range hist {
		fmt.Fprintf(&b, " %d:%d/%d/%d", s, h[0], h[1], h[2])
	}
	fmt.Fprintf(w, "storm attempts: back per second after the restart (s:no failure/1/2+):%s\n", b.String())
	// What the first attempts' delays were and when they started.
	var startHist []int
	for _, c := range cs {
		for _, ev := range c.events {
			if ev.kind == "start" && ev.attempt == 1 {
				s := max(int(ev.at.Sub(t0)/time.Second)+3, 0) // from 3 s before the restart
				for len(startHist) <= s {
					startHist = append(startHist, 0)
				}
				startHist[s]++
			}
		}
	}
	b.Reset()
	for s, n := range startHist {
		fmt.Fprintf(&b, " %d:%d", s-3, n)
	}
	fmt.Fprintf(w, "storm attempts: first attempts started per second (s after the restart:count):%s\n", b.String())
	// How the first attempts were delayed, and why the sessions ended.
	var noDelay, delayed int
	causes := map[string]int{}
	for _, c := range cs {
		for _, ev := range c.events {
			switch {
			case ev.kind == "start" && ev.attempt == 1 && ev.delay == 0:
				noDelay++
			case ev.kind == "start" && ev.attempt == 1:
				delayed++
			case ev.kind == "ended":
				causes[errorClassRE.ReplaceAllString(ev.err, "N")]++
			}
		}
	}
	fmt.Fprintf(w, "storm attempts: first attempt at once %d, after a delay %d; sessions ended by:", noDelay, delayed)
	for k, v := range causes {
		fmt.Fprintf(w, " %q: %d;", k, v)
	}
	fmt.Fprintln(w)
	// Timelines of the last 1 % (at most 40 shown).
	tail := cs[len(cs)-min(len(cs), max(len(cs)/100, 1)):]
	var tailFail [3]int
	var waits []time.Duration // from the start of the attempt that succeeded to its success
	for _, c := range tail {
		tailFail[min(c.failures, 2)]++
		var last time.Time
		for _, ev := range c.events {
			switch ev.kind {
			case "start":
				last = ev.at
			case "connected":
				if !last.IsZero() {
					waits = append(waits, ev.at.Sub(last))
				}
			}
		}
	}
	slices.Sort(waits)
	q := func(p float64) time.Duration {
		if len(waits) == 0 {
			return 0
		}
		return waits[min(int(p*float64(len(waits))), len(waits)-1)].Round(time.Millisecond)
	}
	fmt.Fprintf(w, "storm attempts: last 1 %% (%d clients): %d/%d/%d with 0/1/2+ failures; their successful attempt took p10 %v p50 %v p90 %v max %v\n",
		len(tail), tailFail[0], tailFail[1], tailFail[2], q(0.1), q(0.5), q(0.9), q(1))
	for k, c := range tail {
		if k >= 12 {
			break
		}
		b.Reset()
		for _, ev := range c.events {
			fmt.Fprintf(&b, " %s@%.2fs", ev.kind, ev.at.Sub(t0).Seconds())
			switch ev.kind {
			case "start":
				fmt.Fprintf(&b, "(#%d after %v)", ev.attempt, ev.delay.Round(time.Millisecond))
			case "failed", "ended":
				fmt.Fprintf(&b, "(%s)", errorClassRE.ReplaceAllString(ev.err, "N"))
			}
		}
		fmt.Fprintf(w, "storm attempts: client %d:%s\n", c.i, b.String())
	}
}
