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

// ctxGroup is the watches of one context.
type ctxGroup struct {
	stop func() bool // stops the AfterFunc
	ws   []interface{ remove() }
}

// add arranges for w.remove to be called when ctx is cancelled. A context
// that is never cancelled (Done is nil) needs nothing: the watch ends with
// the cache.
func (cw *ctxWatches) add(ctx context.Context, w interface{ remove() }) {
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
