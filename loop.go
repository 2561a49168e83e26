package watchcache

// This file holds the entry's loop: when it fetches (nextFetchLocked, the
// one place that decides), how it waits (backoff, rate limit, kicks) and one
// fetch attempt. See the package documentation for the state machine.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/time/rate"
)

// The reasons the entry cancels its own fetch; such a fetch's result is
// discarded, not published.
var (
	errIdle      = errors.New("watchcache: fetch no longer needed")
	errPreempted = errors.New("watchcache: blocking fetch preempted by a Get that needs a fresh value")
	errEvicted   = errors.New("watchcache: entry evicted")
)

// cancelFetchLocked cancels the fetch in flight, if any, for reason.
func (e *entry[V]) cancelFetchLocked(reason error) {
	if e.fetchCancel != nil && e.fetchDrop == nil {
		e.fetchDrop = reason
		e.fetchCancel.cancel()
	}
}

// dropIdleFetchLocked cancels a fetch in flight that nothing needs any more,
// so that an unwatched key of a non-refresh kind does not hold an upstream
// blocking query open until it times out.
func (e *entry[V]) dropIdleFetchLocked() {
	if !e.neededLocked() {
		e.cancelFetchLocked(errIdle)
	}
}

// requestAttemptLocked makes sure an attempt that has not started yet, or a
// non-blocking one in flight, will complete, and returns its number. A
// blocking fetch in flight is preempted: it could wait minutes for a change,
// and the caller needs the current value now.
func (e *entry[V]) requestAttemptLocked() uint64 {
	if e.fetching && !e.fetchBlocks {
		return e.attempts // single flight: join it
	}
	n := e.attempts + 1
	e.want = max(e.want, n)
	e.cancelFetchLocked(errPreempted)
	e.ensureLoopLocked()
	e.kickLocked()
	return n
}

// ensureLoopLocked starts the entry's loop unless it runs or the entry is
// gone. The loop belongs to the entry: it fetches under the cache's
// context, never a caller's.
func (e *entry[V]) ensureLoopLocked() {
	if e.running || e.evicted {
		return
	}
	if e.k.async != nil {
		if e.running = e.k.c.track(); e.running {
			e.k.c.runs.enqueue(e)
		}
		return
	}
	e.running = e.k.c.goTracked(e.loop)
}

// nextFetchLocked decides when the loop fetches next, or that it should
// exit (ok false). This is the only place that decides.
func (e *entry[V]) nextFetchLocked(now time.Time) (at time.Time, ok bool) {
	if e.evicted || e.k.c.isClosed() || !e.neededLocked() {
		return time.Time{}, false
	}
	if e.want > e.completed || e.snap.Load() == nil {
		// A Get waits for a fresh value, or nothing was fetched yet.
		return now, true
	}
	if e.k.opts.SupportsBlocking {
		return e.notBefore.time(), true
	}
	interval := e.pollIntervalLocked()
	next := e.lastStart.time().Add(interval + time.Duration(float64(e.jitter)*float64(interval)))
	if nb := e.notBefore.time(); nb.After(next) {
		next = nb
	}
	return next, true
}

// pollIntervalLocked is how often a polling kind's entry fetches: the
// shortest MaxAge among its watchers, and its RefreshTimer if it refreshes.
func (e *entry[V]) pollIntervalLocked() time.Duration {
	var d time.Duration
	if e.k.opts.Refresh {
		d = e.k.opts.RefreshTimer
	}
	for age := range e.maxAges {
		if d == 0 || age < d {
			d = age
		}
	}
	return d
}

// loop is the entry's goroutine: it fetches while anything needs it. It
// sleeps on its timer, its kick channel and the cache's done channel, so
// eviction (which kicks it) and Close end it promptly.
func (e *entry[V]) loop() {
	var t loopTimer
	defer t.stop()
	for {
		e.mu.Lock()
		at, ok := e.nextFetchLocked(time.Now())
		if !ok {
			e.exitLocked()
			return
		}
		e.mu.Unlock()

		if wait := time.Until(at); wait > 0 {
			e.sleep(&t, wait)
			continue // re-evaluate: a kick may change the plan
		}
		if !e.takeToken(&t) {
			continue
		}
		e.fetch()
	}
}

// sleep waits for d, a kick or the cache closing.
func (e *entry[V]) sleep(t *loopTimer, d time.Duration) (slept bool) {
	select {
	case <-t.after(d):
		return true
	case <-e.kick:
	case <-e.k.c.done:
	}
	t.stop()
	return false
}

// takeToken applies the per-entry fetch rate limit. It reports false when
// the wait was interrupted and the loop should re-evaluate.
func (e *entry[V]) takeToken(t *loopTimer) bool {
	e.mu.Lock()
	lim := e.limiterLocked()
	e.mu.Unlock()
	if lim == nil || lim.Allow() {
		return true
	}
	r := lim.Reserve()
	if e.sleep(t, r.Delay()) {
		return true
	}
	r.Cancel() // interrupted: give the token back
	return false
}

// limiterLocked returns the entry's rate limiter, made when the cache's
// limit first becomes finite: most caches never limit, and a limiter per
// entry is a cost worth saving then.
func (e *entry[V]) limiterLocked() *rate.Limiter {
	if e.limiter == nil {
		if r := e.k.c.rate.Load(); r.limit != rate.Inf {
			e.limiter = rate.NewLimiter(r.limit, r.burst)
		}
	}
	return e.limiter
}

// loopTimer is the loop's timer, made the first time the loop sleeps:
// entries of blocking kinds fetch back to back and never need one.
type loopTimer struct{ t *time.Timer }

func (t *loopTimer) after(d time.Duration) <-chan time.Time {
	if t.t == nil {
		t.t = time.NewTimer(d)
	} else {
		t.t.Reset(d)
	}
	return t.t.C
}

func (t *loopTimer) stop() {
	if t.t != nil {
		t.t.Stop()
	}
}

// exitLocked ends the loop. It unlocks e.mu.
func (e *entry[V]) exitLocked() {
	e.running = false
	var state any
	if s := e.snap.Load(); e.evicted && s != nil {
		state = s.res.State // the entry is gone and nothing fetches with it any more
	} else if s != nil && s.released {
		state = e.dropStateLocked() // released while its fetch was in flight
	}
	e.mu.Unlock()
	e.k.c.closeState(state)
}

// fetchGrace is how long past its Timeout a fetch may run before its
// context is cancelled: a blocking fetch should return on its own at
// Timeout, and the context is the backstop for one that does not.
func fetchGrace(timeout time.Duration) time.Duration {
	return timeout + timeout/16 + time.Second
}

// fetchCall is one fetch attempt between its start and its result.
type fetchCall[V any] struct {
	n      uint64
	opts   FetchOptions[V]
	ctx    context.Context
	cancel canceler
	start  mono
}

// canceler cancels a fetch's context: a context.CancelFunc (cancelFunc),
// or an async fetch's fetchContext, without a closure to allocate.
type canceler interface{ cancel() }

type cancelFunc context.CancelFunc

func (f cancelFunc) cancel() { f() }

// fetch runs one attempt and publishes its result.
func (e *entry[V]) fetch() {
	var f fetchCall[V]
	if !e.startFetch(&f) {
		return
	}
	res, err := callFetch(f.ctx, e.k.fetcher, f.opts, e.request())
	e.finishFetch(&f, res, err)
}

// request is the Request every fetch of the entry is made with.
func (e *entry[V]) request() Request {
	return Request{Key: e.key.key, Partition: e.key.part}
}

// startFetch records the start of an attempt in f, unless the entry is
// gone. An async fetch gives its own context (fetchContext) in f.ctx.
func (e *entry[V]) startFetch(f *fetchCall[V]) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.evicted || !e.neededLocked() {
		return false // released (or left) since the loop decided
	}
	e.attempts++
	f.n, f.opts = e.attempts, FetchOptions[V]{Timeout: e.k.opts.QueryTimeout}
	if prev := e.snap.Load(); prev != nil && prev.hasValue {
		f.opts.LastResult = &prev.res // snapshots are immutable: shared, not copied
		// Block only for background refresh of a healthy entry: a Get
		// waiting for a fresh value needs the current one now, and after a
		// failure the current one is the recovery, which must not wait for
		// the next change.
		if e.k.opts.SupportsBlocking && e.want <= e.completed && prev.err == nil && !prev.released {
			f.opts.MinIndex = prev.res.Index
		}
	}
	// One context per fetch, straight under the cache's: Close cancels it
	// through the parent, the entry through fetchCancel (recording why in
	// fetchDrop), and the deadline stops a fetch that ignores its Timeout.
	start := time.Now()
	f.start = monoOf(start)
	if f.ctx == nil {
		ctx, cancel := context.WithDeadline(e.k.c.base, start.Add(fetchGrace(f.opts.Timeout)))
		f.ctx, f.cancel = ctx, cancelFunc(cancel)
	}
	e.fetching, e.fetchBlocks, e.fetchCancel, e.fetchDrop = true, f.opts.MinIndex > 0, f.cancel, nil
	return true
}

// finishFetch publishes the result of f, unless the entry cancelled it.
func (e *entry[V]) finishFetch(f *fetchCall[V], res FetchResult[V], err error) {
	end := time.Now()
	timedOut := errors.Is(f.ctx.Err(), context.DeadlineExceeded)
	f.cancel.cancel()

	e.mu.Lock()
	discard := e.fetchDrop != nil || e.evicted || e.k.c.isClosed()
	e.fetching, e.fetchBlocks, e.fetchCancel, e.fetchDrop = false, false, nil, nil
	if discard {
		e.mu.Unlock()
		e.discardState(res.State, f.opts.LastResult)
		return
	}
	if err != nil && timedOut {
		err = fmt.Errorf("watchcache: fetch of %s %q did not return within %v: %w", e.k.name, e.key.key, fetchGrace(f.opts.Timeout), err)
	}
	start := f.start.time()
	e.k.m.observeFetch(end.Sub(start), err)
	drop := e.publishLocked(f.n, start, end, res, err)
	e.mu.Unlock()
	e.k.c.closeState(drop)
}
