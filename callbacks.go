package watchcache

import (
	"fmt"
	"sync"
)

// callbackTask is a watcher whose callback is due.
type callbackTask interface {
	runCallback()
}

// callbackPool runs NotifyCallback callbacks on at most max goroutines,
// which exist only while callbacks are queued. A watcher is in the queue
// at most once (its queued flag), so the queue is bounded by the number of
// callback watchers and one watcher's calls never overlap.
type callbackPool struct {
	c   *Cache
	max int

	mu      sync.Mutex // protects the fields below; a leaf lock
	queue   []callbackTask
	workers int
}

func (p *callbackPool) init(c *Cache, max int) {
	p.c, p.max = c, max
}

// enqueue schedules t. It may be called with t's entry locked.
func (p *callbackPool) enqueue(t callbackTask) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.queue = append(p.queue, t)
	if p.workers < p.max && p.c.goTracked(p.work) {
		p.workers++
	}
	// With no worker and none allowed to start, Close is already waiting
	// for the last workers to end: the task is dropped with the cache.
	if p.workers == 0 {
		p.queue = p.queue[:0]
	}
}

// work is a worker goroutine: it runs queued callbacks until none is left.
func (p *callbackPool) work() {
	for {
		p.mu.Lock()
		if len(p.queue) == 0 {
			p.workers--
			p.mu.Unlock()
			return
		}
		t := p.queue[0]
		p.queue[0] = nil
		p.queue = p.queue[1:]
		p.mu.Unlock()
		t.runCallback()
	}
}

// call runs one callback, turning a panic into a logged error.
func (p *callbackPool) call(m *kindMetrics, kind, id string, f func()) {
	defer func() {
		if r := recover(); r != nil {
			m.callbackPanics.Inc()
			p.c.log.Error("watchcache: NotifyCallback callback panicked",
				"kind", kind, "correlation_id", id, "error", fmt.Errorf("%w: %v", ErrCallbackPanic, r))
		}
	}()
	f()
}
