package watchcache

import (
	"fmt"

	"github.com/watchcache/watchcache/internal/workq"
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
	c *Cache
	q workq.Queue[task]
}

// init sets the pool up. runs: every task holds a count of Cache.wg (an
// entry's run), so workers may always start and no task is ever dropped.
// Otherwise workers start only until Close, which drops what is left.
func (p *workPool) init(c *Cache, max int, runs bool) {
	p.c = c
	start := c.goTracked
	if runs {
		// A worker may start even while Close waits: the task being
		// queued holds a count of Cache.wg, so adding one is allowed, and
		// Close waits for the worker.
		start = func(f func()) bool {
			c.wg.Add(1)
			go func() {
				defer c.wg.Done()
				f()
			}()
			return true
		}
	}
	p.q.Init(max, start, task.runTask)
}

// enqueue schedules t. It may be called with t's entry locked. With no
// worker and none allowed to start, Close is already waiting for the last
// workers to end: the task is dropped with the cache.
func (p *workPool) enqueue(t task) { p.q.Push(t) }

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
