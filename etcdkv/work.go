package etcdkv

import (
	"context"
	"sync"
)

// maxWorkers bounds the goroutines that run the source's work (reads,
// access checks) for fetches.
const maxWorkers = 64

// workQueue runs functions on at most maxWorkers goroutines of the
// source's, which exist only while there is work.
type workQueue struct {
	s       *Source
	mu      sync.Mutex
	queue   []func()
	workers int
}

// run queues f. If the source is closed, f runs at once: what it asks of
// etcd fails fast then, and the fetch it serves must still be answered.
func (q *workQueue) run(f func()) {
	q.mu.Lock()
	q.queue = append(q.queue, f)
	if q.workers < maxWorkers && q.s.goBackground(q.work) {
		q.workers++
	}
	if q.workers > 0 {
		q.mu.Unlock()
		return
	}
	q.queue = q.queue[:len(q.queue)-1]
	q.mu.Unlock()
	f()
}

func (q *workQueue) work() {
	for {
		q.mu.Lock()
		if len(q.queue) == 0 {
			q.workers--
			q.mu.Unlock()
			return
		}
		f := q.queue[0]
		q.queue[0] = nil
		q.queue = q.queue[1:]
		if len(q.queue) == 0 {
			q.queue = nil // let a burst's backing array go
		}
		q.mu.Unlock()
		f()
	}
}

// afterFunc is context.AfterFunc, through the context's own AfterFunc
// method when it has one (the cache's fetch contexts do), which costs less.
func afterFunc(ctx context.Context, f func()) (stop func() bool) {
	if a, ok := ctx.(interface{ AfterFunc(func()) func() bool }); ok {
		return a.AfterFunc(f)
	}
	return context.AfterFunc(ctx, f)
}
