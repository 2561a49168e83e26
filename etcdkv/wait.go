package etcdkv

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/watchcache/watchcache"
)

// Fetches without a goroutine per entry.
//
// The kinds' fetcher is a watchcache.AsyncFetcher. A fetch that needs a
// read (the first, a Get that needs the current value, a re-read) runs on
// the source's work queue, a bounded pool of goroutines that exist while
// there is work. A fetch that waits for a change (MinIndex) is a small
// record on its entry's state (stateWait) and in the source's list of
// waits, and nothing runs for it until something happens:
//
//   - the watch's stream delivers a response for it (watchEvent);
//   - the waits' ticker (tickWaits, one goroutine per source) finds its
//     Timeout passed, asks etcd for its revision (one probe per identity
//     per ResetCheckInterval, which tells a store restored to an older
//     revision, whose watches would stay silent, and an unreachable etcd),
//     or hears that etcd's auth store changed (access.go);
//   - its context is cancelled.
//
// Each of these calls evaluate, which decides under the state's lock, as
// the blocking wait did: answer the fetch, keep waiting, or queue work
// (re-read the range, confirm access, check the revision) that evaluates
// again when it is done. At most one piece of work runs per state (busy).

// maxWorkers bounds the goroutines that run the source's work (reads,
// access checks) for fetches.
const maxWorkers = 64

// rangeFetcher is the fetcher of a kind: sp is the entry's range, derive
// makes the kind's value from its keys.
type rangeFetcher[V any] struct {
	s      *Source
	parse  func(string) (spec, error)
	derive func(spec, []Entry) V
}

// Fetch implements watchcache.Fetcher, for requests that bypass the cache.
func (f rangeFetcher[V]) Fetch(ctx context.Context, opts watchcache.FetchOptions[V], req watchcache.Request) (watchcache.FetchResult[V], error) {
	type result struct {
		res watchcache.FetchResult[V]
		err error
	}
	ch := make(chan result, 1)
	f.FetchAsync(ctx, opts, req, func(res watchcache.FetchResult[V], err error) { ch <- result{res, err} })
	r := <-ch
	return r.res, r.err
}

// FetchAsync implements watchcache.AsyncFetcher.
//
// A fetch with MinIndex (the cache refreshing a healthy entry) waits on
// the entry's watch until the range changes, opts.Timeout ends, or a
// revision probe finds etcd unreachable or its revision gone backwards. A
// fetch without (the first, or a Get that needs the current value now)
// reads the range and starts a new watch from the revision after the read.
func (f rangeFetcher[V]) FetchAsync(ctx context.Context, opts watchcache.FetchOptions[V], req watchcache.Request, done func(watchcache.FetchResult[V], error)) {
	sp, err := f.parse(req.Key)
	if err != nil {
		done(watchcache.FetchResult[V]{}, watchcache.Fatal(err))
		return
	}
	s := f.s
	var prev *watchState[V]
	if opts.LastResult != nil {
		if st, ok := opts.LastResult.State.(*watchState[V]); ok && st.s == s && st.sp == sp {
			prev = st
		}
	}
	if prev != nil && opts.MinIndex > 0 && !s.stale(prev.id) {
		prev.wait(ctx, opts, done)
		return
	}
	s.work.run(func() {
		st, err := openState(ctx, s, sp, req.Partition, f.derive, prev)
		if err != nil {
			done(watchcache.FetchResult[V]{}, fetchErr(err))
			return
		}
		done(st.result(), nil)
	})
}

// stateWait is a fetch waiting on its entry's state for a change.
type stateWait[V any] struct {
	st       *watchState[V]
	ctx      context.Context
	minIndex uint64
	deadline int64 // when its Timeout passes, in Unix nanoseconds
	done     func(watchcache.FetchResult[V], error)
	stopCtx  func() bool
	link     waitLink

	// Guarded by st.mu.
	epoch    uint64 // the auth epoch it last looked at
	probe    *probeResult
	resyncs  int32 // re-reads because the watch ended
	first    bool  // not evaluated yet
	checkNow bool  // check the store's revision at once: the last fetch failed
	timedOut bool
}

// probeResult is a revision probe's answer for a wait.
type probeResult struct {
	rev int64
	err error
}

// waitLink links the source's pending waits, whatever their value type.
type waitLink struct {
	prev, next *waitLink
	w          pendingWait
}

// pendingWait is what the ticker needs of a stateWait.
type pendingWait interface {
	identity() *identity
	timeoutAt() int64 // Unix nanoseconds
	timeout()
	authChanged()
	probeRevision(ctx context.Context) (int64, error)
	probed(rev int64, err error)
}

// wait registers a blocking fetch on st (see the comment at the top).
func (st *watchState[V]) wait(ctx context.Context, opts watchcache.FetchOptions[V], done func(watchcache.FetchResult[V], error)) {
	s := st.s
	w := &stateWait[V]{st: st, ctx: ctx, minIndex: opts.MinIndex, deadline: time.Now().Add(opts.Timeout).UnixNano(), done: done, first: true}
	w.link.w = w
	s.waits.add(&w.link)
	st.mu.Lock()
	if st.pending != nil || st.closed {
		st.mu.Unlock()
		s.waits.remove(&w.link)
		done(watchcache.FetchResult[V]{}, fmt.Errorf("etcdkv: internal error: a second fetch on one entry state"))
		return
	}
	st.pending = w
	w.epoch = s.auth.epoch.Load()
	w.checkNow = st.failed // after a failure, check at once: a success is the recovery
	st.mu.Unlock()
	stop := afterFunc(ctx, w.cancelled)
	st.mu.Lock()
	w.stopCtx = stop // finishLocked reads it under st.mu
	st.mu.Unlock()
	st.evaluate()
}

// evaluate decides what the pending wait does now, if no work runs.
func (st *watchState[V]) evaluate() {
	st.mu.Lock()
	w := st.pending
	if w == nil || st.busy {
		st.mu.Unlock()
		return
	}
	if w.first {
		w.first = false
		if st.index != w.minIndex || (!st.unconfirmed && st.needsConfirmLocked()) {
			// A fetch whose result the cache discarded (or that failed
			// while confirming access) moved the state on, or etcd's auth
			// store changed since the last confirmation (perhaps while no
			// fetch waited): confirm and return.
			st.succeedLocked(w)
			return
		}
	}
	switch {
	case st.index != w.minIndex:
		st.succeedLocked(w) // the watch (or a re-read) brought a change
		return
	case st.watchErr != nil:
		err := st.watchErr
		st.watchErr = nil
		if err != errWatchRefused {
			st.failLocked(w, err)
			return
		}
		// etcd refuses a watch whose token is stale (any auth change
		// makes it so) with the words it uses for a real denial; a
		// checked read renews the token or tells which.
		st.workLocked(func() {
			if err := st.confirm(w.ctx); err != nil {
				st.fail(w, err)
			}
		})
		return
	case st.w == nil:
		// The watch ended: read the range again and watch from there.
		if w.resyncs++; w.resyncs > maxResyncs {
			st.failLocked(w, fmt.Errorf("etcdkv: watch of %s ended %d times in a row", st.sp.describe(), maxResyncs))
			return
		}
		st.workLocked(func() {
			if err := st.resync(w.ctx, false); err != nil {
				st.fail(w, err)
				return
			}
			st.mu.Lock()
			if st.failed && st.pending == w {
				st.succeedLocked(w) // the recovery
				return
			}
			st.mu.Unlock()
		})
		return
	case w.epoch != st.s.auth.epoch.Load():
		// etcd's auth store changed: confirm access now, so that a
		// revocation ends the entry's watchers even if nothing changes.
		w.epoch = st.s.auth.epoch.Load()
		if st.needsConfirmLocked() {
			st.succeedLocked(w)
			return
		}
	}
	switch {
	case w.checkNow:
		w.checkNow = false
		st.workLocked(func() {
			rev, err := st.checkRevision(w.ctx)
			st.revisionIs(w, rev, err)
		})
	case w.probe != nil:
		p := w.probe
		w.probe = nil
		st.mu.Unlock()
		st.revisionIs(w, p.rev, p.err)
	case w.timedOut:
		st.succeedLocked(w)
	default:
		st.mu.Unlock()
	}
}

// revisionIs acts on the store's revision (or the error of asking for it):
// a revision below the state's means the store was restored or rebuilt,
// and the range is read again; a success after a failure is the recovery.
func (st *watchState[V]) revisionIs(w *stateWait[V], rev int64, err error) {
	st.mu.Lock()
	switch {
	case st.pending != w:
		st.mu.Unlock()
	case err != nil:
		st.failLocked(w, err)
	case rev < st.rev:
		st.workLocked(func() {
			if err := st.resync(w.ctx, false); err != nil {
				st.fail(w, err)
				return
			}
			st.mu.Lock()
			if st.pending == w {
				st.succeedLocked(w)
				return
			}
			st.mu.Unlock()
		})
	case st.failed:
		st.succeedLocked(w)
	default:
		st.mu.Unlock()
	}
}

// workLocked runs f on the work queue with the state busy, and evaluates
// again when it returns. It unlocks st.mu.
func (st *watchState[V]) workLocked(f func()) {
	st.busy = true
	st.mu.Unlock()
	st.s.work.run(func() {
		f()
		st.mu.Lock()
		st.busy = false
		st.mu.Unlock()
		st.evaluate()
	})
}

// succeedLocked answers w with the state's value once the identity's
// access to it is confirmed, as access.go requires. It unlocks st.mu.
func (st *watchState[V]) succeedLocked(w *stateWait[V]) {
	if st.needsConfirmLocked() {
		st.workLocked(func() {
			if err := st.confirm(w.ctx); err != nil {
				st.fail(w, err)
				return
			}
			st.mu.Lock()
			if st.pending != w {
				st.mu.Unlock()
				return
			}
			st.failed = false
			res := st.resultLocked()
			st.finishLocked(w, res, nil)
		})
		return
	}
	st.failed = false
	st.finishLocked(w, st.resultLocked(), nil)
}

// fail answers w with err and records the failure.
func (st *watchState[V]) fail(w *stateWait[V], err error) {
	st.mu.Lock()
	st.failLocked(w, err)
}

func (st *watchState[V]) failLocked(w *stateWait[V], err error) {
	if st.pending != w {
		st.mu.Unlock()
		return
	}
	st.failed, st.failedAt = true, time.Now()
	st.finishLocked(w, watchcache.FetchResult[V]{}, fetchErr(err))
}

// finish answers w, unless it was answered already.
func (st *watchState[V]) finish(w *stateWait[V], res watchcache.FetchResult[V], err error) {
	st.mu.Lock()
	st.finishLocked(w, res, err)
}

// finishLocked answers w and unlocks st.mu.
func (st *watchState[V]) finishLocked(w *stateWait[V], res watchcache.FetchResult[V], err error) {
	if st.pending != w {
		st.mu.Unlock()
		return
	}
	st.pending = nil
	stop := w.stopCtx
	st.mu.Unlock()
	st.s.waits.remove(&w.link)
	if stop != nil {
		stop()
	}
	w.done(res, err)
}

// cancelled answers w with its context's error.
func (w *stateWait[V]) cancelled() { w.st.finish(w, watchcache.FetchResult[V]{}, w.ctx.Err()) }

func (w *stateWait[V]) identity() *identity { return w.st.id }
func (w *stateWait[V]) timeoutAt() int64    { return w.deadline }

func (w *stateWait[V]) timeout() {
	w.st.mu.Lock()
	w.timedOut = true
	w.st.mu.Unlock()
	w.st.evaluate()
}

func (w *stateWait[V]) authChanged() { w.st.evaluate() }

func (w *stateWait[V]) probeRevision(ctx context.Context) (int64, error) {
	return w.st.checkRevision(ctx)
}

func (w *stateWait[V]) probed(rev int64, err error) {
	w.st.mu.Lock()
	if w.st.pending == w {
		w.probe = &probeResult{rev, err}
	}
	w.st.mu.Unlock()
	w.st.evaluate()
}

// waitList is the source's pending waits.
type waitList struct {
	mu   sync.Mutex
	head waitLink // sentinel
	n    int
}

func (l *waitList) add(x *waitLink) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.head.next == nil {
		l.head.next, l.head.prev = &l.head, &l.head
	}
	x.prev, x.next = l.head.prev, &l.head
	x.prev.next, l.head.prev = x, x
	l.n++
}

func (l *waitList) remove(x *waitLink) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if x.next == nil {
		return
	}
	x.prev.next, x.next.prev = x.next, x.prev
	x.prev, x.next = nil, nil
	l.n--
}

// snapshot returns the pending waits.
func (l *waitList) snapshot() []pendingWait {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]pendingWait, 0, l.n)
	for x := l.head.next; x != nil && x != &l.head; x = x.next {
		out = append(out, x.w)
	}
	return out
}

// tickWaits is the source's goroutine for its pending waits: every second
// it answers those whose Timeout passed, every ResetCheckInterval it
// probes etcd's revision once per identity for all of them, and when the
// auth epoch moves it has them confirm access.
func (s *Source) tickWaits() {
	tick := min(time.Second, s.cfg.ResetCheckInterval)
	t := time.NewTicker(tick)
	defer t.Stop()
	nextProbe := time.Now().Add(s.cfg.ResetCheckInterval)
	_, authChanged := s.auth.current()
	for {
		select {
		case <-s.stopJan:
			return
		case <-authChanged:
			_, authChanged = s.auth.current()
			for _, w := range s.waits.snapshot() {
				w.authChanged()
			}
			continue
		case now := <-t.C:
			waits := s.waits.snapshot()
			for _, w := range waits {
				if now.UnixNano() >= w.timeoutAt() {
					w.timeout()
				}
			}
			if now.Before(nextProbe) {
				continue
			}
			nextProbe = now.Add(s.cfg.ResetCheckInterval)
			s.probeWaits(waits)
		}
	}
}

// probeWaits asks etcd for its revision once per identity among waits,
// and tells each wait. A failed probe may be its entry's own (its key
// denied): then each wait of that identity probes for itself.
func (s *Source) probeWaits(waits []pendingWait) {
	byID := make(map[*identity][]pendingWait)
	for _, w := range waits {
		byID[w.identity()] = append(byID[w.identity()], w)
	}
	for _, group := range byID {
		s.work.run(func() {
			rev, err := group[0].probeRevision(s.stopCtx)
			if err == nil {
				for _, w := range group {
					w.probed(rev, nil)
				}
				return
			}
			group[0].probed(0, err)
			for _, w := range group[1:] {
				s.work.run(func() {
					rev, err := w.probeRevision(s.stopCtx)
					w.probed(rev, err)
				})
			}
		})
	}
}

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
