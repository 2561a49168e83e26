package etcdkv

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/watchcache/watchcache/internal/workq"
)

// maxWorkers bounds the goroutines that run the source's work (reads,
// access checks) for fetches.
const maxWorkers = 64

// workQueue runs functions on at most maxWorkers goroutines of the
// source's, which exist only while there is work.
type workQueue struct{ q workq.Queue[func()] }

func (q *workQueue) init(s *Source) {
	q.q.Init(maxWorkers, s.goBackground, func(f func()) { f() })
}

// run queues f. If the source is closed, f runs at once: what it asks of
// etcd fails fast then, and the fetch it serves must still be answered.
func (q *workQueue) run(f func()) {
	if !q.q.Push(f) {
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

// outage remembers the last read that failed because etcd could not be
// reached. Work queued before it fails at once with its error instead of
// waiting a request timeout of its own: when etcd goes down with 10^4
// entries waiting, each re-read would otherwise hold one of maxWorkers
// for RequestTimeout, and the last entry would hear of the outage minutes
// late. A read that succeeds ends the outage.
type outage struct {
	mu  sync.Mutex
	at  time.Time // zero while etcd answers
	err error
}

// note records the outcome of a read made under ctx.
func (o *outage) note(ctx context.Context, err error) {
	switch {
	case err == nil:
		o.mu.Lock()
		o.at, o.err = time.Time{}, nil
		o.mu.Unlock()
	case ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded):
		// The caller gave up: this says nothing about etcd.
	case errors.Is(err, context.DeadlineExceeded), status.Code(err) == codes.Unavailable, status.Code(err) == codes.DeadlineExceeded:
		o.mu.Lock()
		o.at, o.err = time.Now(), err
		o.mu.Unlock()
	}
}

// since returns the error of a failure noted after t, if etcd has not
// answered since.
func (o *outage) since(t time.Time) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.at.IsZero() && o.at.After(t) {
		return fmt.Errorf("etcdkv: etcd did not answer a read made meanwhile: %w", o.err)
	}
	return nil
}
