package watchcache

import (
	"context"
	"sync"
)

// ctxWatches ends watches when their context is cancelled, with one
// context.AfterFunc per distinct context rather than one per watcher.
// Consumers usually start many watches under one context (a proxy's or a
// controller's lifetime), and an AfterFunc costs more memory than the
// watcher it would guard; this keeps a watcher down to a small struct.
type ctxWatches struct {
	mu     sync.Mutex // protects the fields below; a leaf lock
	groups map[<-chan struct{}]*ctxGroup
	closed bool
}

// ctxWatch is a watch as ctxWatches sees it.
type ctxWatch interface {
	remove()    // end the watch: its context was cancelled
	gone() bool // the watch already ended for another reason
}

// ctxGroup is the watches of one context.
type ctxGroup struct {
	stop func() bool // stops the AfterFunc
	ws   []ctxWatch
	dead int // watches in ws that ended for another reason (forget)
}

// add arranges for w.remove to be called when ctx is cancelled. A context
// that is never cancelled (Done is nil) needs nothing: the watch ends with
// the cache.
func (cw *ctxWatches) add(ctx context.Context, w ctxWatch) {
	done := ctx.Done()
	if done == nil {
		return
	}
	cw.mu.Lock()
	defer cw.mu.Unlock()
	if cw.closed {
		return // Close ends the watch
	}
	if cw.groups == nil {
		cw.groups = make(map[<-chan struct{}]*ctxGroup)
	}
	g := cw.groups[done]
	if g == nil {
		g = &ctxGroup{}
		cw.groups[done] = g
		// AfterFunc never calls the function before returning: it runs it
		// on its own goroutine, even for a context already cancelled.
		g.stop = context.AfterFunc(ctx, func() { cw.cancelled(done) })
	}
	g.ws = append(g.ws, w)
}

// cancelled ends the watches of the context whose Done channel is done.
func (cw *ctxWatches) cancelled(done <-chan struct{}) {
	cw.mu.Lock()
	g := cw.groups[done]
	delete(cw.groups, done)
	cw.mu.Unlock()
	if g == nil {
		return
	}
	for _, w := range g.ws {
		w.remove()
	}
}

// forget notes that a watch of the context whose Done channel is done
// ended for another reason (its channel was closed). Once more than half
// of a group has ended, the group drops them, so that a long-lived
// context does not keep ended watches, and their entries, reachable.
// It may be called with the watch's entry locked.
func (cw *ctxWatches) forget(done <-chan struct{}) {
	if done == nil {
		return
	}
	cw.mu.Lock()
	defer cw.mu.Unlock()
	g := cw.groups[done]
	if g == nil {
		return
	}
	if g.dead++; 2*g.dead <= len(g.ws) {
		return
	}
	live := g.ws[:0]
	for _, w := range g.ws {
		if !w.gone() {
			live = append(live, w)
		}
	}
	clear(g.ws[len(live):])
	g.ws, g.dead = live, 0
}

// close stops every AfterFunc; the cache ends the watches itself.
func (cw *ctxWatches) close() {
	cw.mu.Lock()
	defer cw.mu.Unlock()
	cw.closed = true
	for _, g := range cw.groups {
		g.stop()
	}
	cw.groups = nil
}
