package watchcache

// This file turns a fetch result into the entry's next snapshot: the
// failure path (keep the last value, back off) and the success path (index
// rules, change detection), then wakes Gets and fans out to watchers.

import (
	"math/rand/v2"
	"reflect"
	"time"
)

// discardState closes the state of a result that will not be published,
// unless it is the entry's current state, which the entry still owns.
func (e *entry[V]) discardState(state any, last *FetchResult[V]) {
	if last != nil && sameState(state, last.State) {
		return
	}
	e.k.c.closeState(state)
}

// sameState reports whether a and b are the same state value, without
// panicking on uncomparable types.
func sameState(a, b any) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	ta, tb := reflect.TypeOf(a), reflect.TypeOf(b)
	return ta == tb && ta.Comparable() && a == b
}

// publishLocked turns the result of attempt n into the entry's new
// snapshot, wakes waiting Gets and fans out to watchers. It returns the
// state that is no longer kept (the failed fetch's, or the one the new
// result replaced), for the caller to close once it has released e.mu:
// closing may be slow (a client's Close), and Gets and the deliverer must
// not wait for it.
func (e *entry[V]) publishLocked(n uint64, start, end time.Time, res FetchResult[V], err error) (drop any) {
	prev := e.snap.Load()
	next := new(snapshot[V])
	if prev != nil {
		*next = *prev
	}
	next.attempt = n
	next.released = false
	e.completed = max(e.completed, n)
	e.lastStart = monoOf(start)
	e.jitter = rand.Float32() / 16 // up to interval/16 on the next poll

	if err != nil {
		drop = e.failedLocked(prev, next, end, res, err)
	} else {
		drop = e.succeededLocked(prev, next, end, res)
	}
	e.snap.Store(next)
	e.wakeLocked()
	e.releaseBlockersLocked(next)
	e.fanoutLocked(next)
	return drop
}

// failedLocked fills next, a copy of prev, for a failed attempt: the last
// good value stays, the error is recorded, and the loop backs off.
func (e *entry[V]) failedLocked(prev, next *snapshot[V], end time.Time, res FetchResult[V], err error) (drop any) {
	if prev == nil || !sameState(res.State, prev.res.State) {
		drop = res.State // a failed fetch's state is not kept
	}
	e.failures++
	e.notBefore = monoOf(end.Add(backoff(int(e.failures))))
	e.fatal = isFatal(err)
	// Watchers hear of a failure once, not on every retry: again only
	// when the error says something new.
	if prev == nil || prev.err == nil || prev.err.Error() != err.Error() || prev.fatal != e.fatal {
		next.version++
		e.logFailure(err, prev)
	}
	if next.failingSince == 0 {
		next.failingSince = monoOf(end)
	}
	next.err, next.fatal = err, e.fatal
	return drop
}

// succeededLocked fills next, a copy of prev, for a successful attempt,
// applying the index rules (index.go) and deciding whether watchers
// should hear of it.
func (e *entry[V]) succeededLocked(prev, next *snapshot[V], end time.Time, res FetchResult[V]) (drop any) {
	var prevIndex uint64
	if prev != nil && prev.hasValue {
		prevIndex = prev.res.Index
	}
	changed := false
	if e.k.opts.SupportsBlocking {
		step := stepIndex(prevIndex, res.Index)
		next.res.Index, changed = step.index, step.changed
		if step.reset {
			next.resets++
			e.k.c.log.Info("watchcache: index went backwards; delivering the new state as a reset",
				"kind", e.k.name, "key", e.key.key, "from", prevIndex, "to", step.index)
		}
		if step.zero {
			e.failures++ // a source that never sets an index must not make us spin
		} else {
			e.failures = 0
		}
	} else {
		// Polling kinds have no index worth following: a watcher is
		// told when the value changes, as Consul's polling Notify does.
		next.res.Index = max(res.Index, 1)
		changed = prev == nil || !prev.hasValue || !reflect.DeepEqual(prev.res.Value, res.Value)
		e.failures = 0
	}
	e.notBefore = monoOf(end.Add(backoff(int(e.failures))))
	if e.k.opts.Refresh {
		e.notBefore += mono(e.k.opts.RefreshTimer)
	}
	if prev != nil && prev.err != nil {
		changed = true // recovery: watchers saw the error, now they see it end
		e.k.c.log.Info("watchcache: fetch recovered", "kind", e.k.name, "key", e.key.key)
	}
	if prev != nil && prev.hasValue && !sameState(prev.res.State, res.State) {
		drop = prev.res.State // replaced by the fetch function
	}
	e.fatal = false
	next.res, next.hasValue = FetchResult[V]{Value: res.Value, Index: next.res.Index, State: res.State}, true
	next.maxIndex = max(next.maxIndex, next.res.Index)
	next.err, next.fatal, next.failingSince, next.fetchedAt = nil, false, 0, monoOf(end)
	if changed {
		next.version++
	}
	return drop
}

func (e *entry[V]) logFailure(err error, prev *snapshot[V]) {
	attrs := []any{"kind", e.k.name, "key", e.key.key, "error", err, "failures", e.failures}
	if e.fatal {
		e.k.c.log.Warn("watchcache: fetch failed fatally; background refresh stopped", attrs...)
		return
	}
	e.k.c.log.Warn("watchcache: fetch failed; retrying with backoff", attrs...)
}
