package etcdkv

import (
	"context"
	"fmt"
	"time"

	"github.com/watchcache/watchcache"
)

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

// wait registers a blocking fetch on st (see the comment in fetcher.go).
func (st *watchState[V]) wait(ctx context.Context, opts watchcache.FetchOptions[V], done func(watchcache.FetchResult[V], error)) {
	s := st.s
	w := &stateWait[V]{st: st, ctx: ctx, minIndex: opts.MinIndex, deadline: time.Now().Add(opts.Timeout).UnixNano(), done: done, first: true}
	w.link.w = w
	s.waits.add(&w.link)
	st.mu.Lock()
	if st.pending != nil || st.closed {
		st.mu.Unlock()
		s.waits.remove(&w.link)
		done(watchcache.FetchResult[V]{}, fmt.Errorf("etcdkv: internal error: a fetch on an entry state that is closed or has a fetch already"))
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
		changes := st.changes
		st.workLocked(func() {
			if err := st.confirm(w.ctx, changes); err != nil {
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
		st.resyncLocked(w, false) // a change is answered by the next evaluation; after a failure, the recovery at once
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
		queued := time.Now()
		st.workLocked(func() {
			if err := st.s.outage.since(queued); err != nil {
				st.revisionIs(w, 0, err)
				return
			}
			rev, err := st.checkRevision(w.ctx, time.Time{})
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
		st.resyncLocked(w, true) // the store went back: deliver its state, changed or not
	case st.failed:
		st.succeedLocked(w)
	default:
		st.mu.Unlock()
	}
}

// resyncLocked re-reads the range and watches again on the work queue,
// failing w if that fails (at once if etcd did not answer a read since the
// work was queued). Then it answers w if always, or if the state had
// failed (the recovery); otherwise the next evaluation decides. It unlocks
// st.mu.
func (st *watchState[V]) resyncLocked(w *stateWait[V], always bool) {
	queued := time.Now()
	st.workLocked(func() {
		if err := st.s.outage.since(queued); err != nil {
			st.fail(w, err)
			return
		}
		if _, err := st.resync(w.ctx, false); err != nil {
			st.fail(w, err)
			return
		}
		st.mu.Lock()
		if st.pending == w && (always || st.failed) {
			st.succeedLocked(w)
			return
		}
		st.mu.Unlock()
	})
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
//
// The answer is the value the state held when the check was asked for:
// changes the watch brings while the check runs are not covered by it
// (confirm), and wait for the next fetch and its own check.
func (st *watchState[V]) succeedLocked(w *stateWait[V]) {
	if st.needsConfirmLocked() {
		res, changes := st.resultLocked(), st.changes
		st.workLocked(func() {
			if err := st.confirm(w.ctx, changes); err != nil {
				st.fail(w, err)
				return
			}
			st.mu.Lock()
			if st.pending != w {
				st.mu.Unlock()
				return
			}
			st.failed = false
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

func (w *stateWait[V]) probeRevision(ctx context.Context, since time.Time) (int64, error) {
	return w.st.checkRevision(ctx, since)
}

func (w *stateWait[V]) probed(rev int64, err error, start time.Time) {
	st := w.st
	st.mu.Lock()
	if st.pending == w && (start.IsZero() || (!start.Before(st.revAt) && !start.Before(st.failedAt))) {
		w.probe = &probeResult{rev, err}
	}
	st.mu.Unlock()
	st.evaluate()
}
