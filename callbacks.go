package watchcache

import (
	"fmt"
	"sync"
)

// task is work queued on a workPool: a watcher whose callback is due, an
// async entry's run to continue.
type task interface {
	runTask()
}

// workPool runs tasks on at most max goroutines, which exist only while
// tasks are queued. The cache has two: one for NotifyCallback callbacks
// (a watcher is in its queue at most once, its queued flag, so the queue
// is bounded by the number of callback watchers and one watcher's calls
// never overlap), and one for the runs of async entries (async.go), so
// that a burst of pushed changes is published by a few goroutines, not by
// a goroutine each.
type workPool struct {
	c   *Cache
	max int
	// runs: every task holds a count of Cache.wg (an entry's run), so
	// workers may always start and no task is ever dropped. Otherwise
	// workers start only until Close, which drops what is left.
	runs bool

	mu      sync.Mutex // protects the fields below; a leaf lock
	queue   []task
	workers int
}

func (p *workPool) init(c *Cache, max int, runs bool) {
	p.c, p.max, p.runs = c, max, runs
}

// enqueue schedules t. It may be called with t's entry locked.
func (p *workPool) enqueue(t task) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.queue = append(p.queue, t)
	if p.workers < p.max && p.start() {
		p.workers++
	}
	// With no worker and none allowed to start, Close is already waiting
	// for the last workers to end: the task is dropped with the cache.
	if p.workers == 0 {
		p.queue = p.queue[:0]
	}
}

// start starts a worker. A pool of runs may start one even while Close
// waits: the task being queued holds a count of Cache.wg, so adding one
// is allowed, and Close waits for the worker.
func (p *workPool) start() bool {
	if !p.runs {
		return p.c.goTracked(p.work)
	}
	p.c.wg.Add(1)
	go func() {
		defer p.c.wg.Done()
		p.work()
	}()
	return true
}

// work is a worker goroutine: it runs queued tasks until none is left.
func (p *workPool) work() {
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
		if len(p.queue) == 0 {
			p.queue = nil // let a burst's backing array go
		}
		p.mu.Unlock()
		t.runTask()
	}
}

// call runs one callback, turning a panic into a logged error.
func (p *workPool) call(m *kindMetrics, kind, id string, f func()) {
	defer func() {
		if r := recover(); r != nil {
			m.callbackPanics.Inc()
			p.c.log.Error("watchcache: NotifyCallback callback panicked",
				"kind", kind, "correlation_id", id, "error", fmt.Errorf("%w: %v", ErrCallbackPanic, r))
		}
	}()
	f()
}
