// Package workq is a queue of work run by a bounded number of goroutines
// that exist only while there is work: the cache's callback and run pools
// and etcdkv's queue of reads share it.
package workq

import "sync"

// Queue runs the items pushed to it, with run, on at most max goroutines.
// Start it with Init; its methods are safe for concurrent use.
type Queue[T any] struct {
	max   int
	start func(worker func()) bool
	run   func(T)

	mu      sync.Mutex // protects the fields below; a leaf lock
	queue   []T
	workers int
}

// Init sets the queue up: run runs one item, and start starts a worker
// goroutine running worker, or reports false when none may start (its
// owner is closing).
func (q *Queue[T]) Init(max int, start func(worker func()) bool, run func(T)) {
	q.max, q.start, q.run = max, start, run
}

// Push queues t. It reports false, keeping nothing, when no worker runs
// and none may start: the caller then runs t itself or drops it. It may
// be called with the caller's locks held.
func (q *Queue[T]) Push(t T) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.queue = append(q.queue, t)
	if q.workers < q.max && q.start(q.work) {
		q.workers++
	}
	if q.workers == 0 {
		clear(q.queue)
		q.queue = q.queue[:0]
		return false
	}
	return true
}

// work is a worker: it runs queued items until none is left.
func (q *Queue[T]) work() {
	var zero T
	for {
		q.mu.Lock()
		if len(q.queue) == 0 {
			q.workers--
			q.mu.Unlock()
			return
		}
		t := q.queue[0]
		q.queue[0] = zero
		q.queue = q.queue[1:]
		if len(q.queue) == 0 {
			q.queue = nil // let a burst's backing array go
		}
		q.mu.Unlock()
		q.run(t)
	}
}

// Len returns the number of items waiting for a worker.
func (q *Queue[T]) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.queue)
}
