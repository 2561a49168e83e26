package watchcache

// This file holds the entry's run for kinds whose Fetcher pushes
// (AsyncFetcher): the same decisions as the loop in loop.go, driven by
// callbacks and timers instead of a goroutine that waits.

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// AsyncFetcher is a Fetcher that can wait for a change without a goroutine:
// a push source, such as one that multiplexes the watches of many entries
// on one stream. When a kind's Fetcher implements it, the kind's entries
// fetch with FetchAsync and hold no goroutine while a fetch is in flight or
// while they wait (backoff, rate limit, poll interval).
//
// FetchAsync starts what Fetch(ctx, opts, req) would do and returns without
// waiting for it. The source then calls done exactly once, from any
// goroutine, possibly before FetchAsync returns, with what Fetch would
// have returned. Every rule of Fetch holds: MinIndex and Timeout, the
// index, State, Fatal, and ctx: once ctx is cancelled, done must be called
// promptly (Close waits for it); its deadline cuts a fetch that outlives
// Timeout by a grace. done does not wait for the cache's work; the result
// is published on a goroutine of the cache's. FetchAsync must not block.
//
// ctx has a method AfterFunc(func()) func() bool, which context.AfterFunc
// uses; a source that calls it directly also spares the context's Done
// channel, the last allocation a waiting fetch's context makes.
type AsyncFetcher[V any] interface {
	Fetcher[V]
	FetchAsync(ctx context.Context, opts FetchOptions[V], req Request, done func(FetchResult[V], error))
}

// The entry's run (async kinds). While e.running, exactly one of these
// holds the run and will continue it: a goroutine in drive; the timer, while
// armed (e.wait); a fetch in flight, until its done. ensureLoopLocked starts a run
// (one count of Cache.wg, released when drive finds nothing to do); a kick
// disarms the timer and continues the run at once.

// drive takes the entry's next steps until it waits or has nothing to do.
func (e *entry[V]) drive() {
	for {
		e.mu.Lock()
		at, ok := e.nextFetchLocked(time.Now())
		if !ok {
			e.reserved = false
			e.exitLocked()
			e.k.c.wg.Done()
			return
		}
		if wait := time.Until(at); wait > 0 {
			e.armLocked(wait, nil)
			e.mu.Unlock()
			return
		}
		if !e.reserved {
			if lim := e.limiterLocked(); lim != nil && !lim.Allow() {
				r := lim.Reserve()
				e.armLocked(r.Delay(), r)
				e.mu.Unlock()
				return
			}
		}
		e.reserved = false
		e.mu.Unlock()
		if e.fetchAsync() {
			return
		}
	}
}

// runWait is what an async entry's run waits for while it is armed.
type runWait struct {
	timer       *time.Timer
	armed       bool
	gen         uint32            // which arming the timer's function belongs to
	reservation *rate.Reservation // the token it waits for, if any
}

// armLocked makes the timer continue the run after d. A reservation r is
// the rate limit token the run waits for: it holds it when the timer fires,
// and gives it back if a kick comes first.
func (e *entry[V]) armLocked(d time.Duration, r *rate.Reservation) {
	if e.wait == nil {
		e.wait = new(runWait)
	}
	w := e.wait
	w.gen++
	gen := w.gen
	w.armed, w.reservation = true, r
	w.timer = time.AfterFunc(d, func() { e.timerFired(gen) })
}

// timerFired continues the run, unless a kick took it over (or the timer
// of an earlier arming fires late).
func (e *entry[V]) timerFired(gen uint32) {
	e.mu.Lock()
	w := e.wait
	if !w.armed || w.gen != gen {
		e.mu.Unlock()
		return
	}
	w.armed, w.timer = false, nil
	if w.reservation != nil {
		e.reserved, w.reservation = true, nil
	}
	e.mu.Unlock()
	e.k.c.runs.enqueue(e) // on the pool, not the timer's goroutine: a burst of timers must not mean a goroutine each
}

// runTask implements task: the run continues on a worker of Cache.runs.
func (e *entry[V]) runTask() { e.drive() }

// kickAsyncLocked continues a run that waits on its timer at once, to
// re-evaluate. A run with a fetch in flight re-evaluates when it ends.
func (e *entry[V]) kickAsyncLocked() {
	w := e.wait
	if w == nil || !w.armed {
		return
	}
	w.armed = false
	w.timer.Stop()
	w.timer = nil
	if w.reservation != nil {
		w.reservation.Cancel() // give the token back
		w.reservation = nil
	}
	e.k.c.runs.enqueue(e)
}

// asyncCall is one FetchAsync in flight: the attempt, its context and its
// result, in one allocation (a waiting entry's main cost).
type asyncCall[V any] struct {
	e     *entry[V]
	f     fetchCall[V]
	ctx   fetchContext
	res   atomic.Pointer[asyncResult[V]] // set by the first done
	state atomic.Int32                   // callReturned | callDone
}

const (
	callReturned = 1 << iota // FetchAsync returned
	callDone                 // done was called
)

type asyncResult[V any] struct {
	res FetchResult[V]
	err error
}

// fetchAsync starts one attempt. It reports whether the attempt is in
// flight; if not, it already ended and its result is published.
func (e *entry[V]) fetchAsync() (inFlight bool) {
	call := &asyncCall[V]{e: e}
	call.ctx.c, call.ctx.heapIdx = e.k.c, -1
	call.f.ctx, call.f.cancel = &call.ctx, &call.ctx
	if !e.startFetch(&call.f) {
		return false
	}
	call.ctx.deadline = call.f.start.time().Add(fetchGrace(call.f.opts.Timeout)).UnixNano()
	e.k.c.deadlines.add(&call.ctx)
	call.start()
	if call.state.Or(callReturned)&callDone == 0 {
		return true // done continues the run
	}
	r := call.res.Load()
	e.finishFetch(&call.f, r.res, r.err)
	return false
}

// start calls FetchAsync, turning a panic into the attempt's result.
func (call *asyncCall[V]) start() {
	defer func() {
		if p := recover(); p != nil {
			call.done(FetchResult[V]{}, fmt.Errorf("%w: %v", ErrFetchPanic, p))
		}
	}()
	call.e.k.async.FetchAsync(call.f.ctx, call.f.opts, call.e.request(), call.done)
}

// done is the source's report of the attempt's result. If FetchAsync has
// not returned yet, fetchAsync publishes it; otherwise a worker of
// Cache.runs does and continues the run, so the source's goroutine (often
// the one reading a shared stream) never waits for a fan-out.
func (call *asyncCall[V]) done(res FetchResult[V], err error) {
	if !call.res.CompareAndSwap(nil, &asyncResult[V]{res, err}) {
		return // called twice: the first result counts
	}
	if call.state.Or(callDone)&callReturned != 0 {
		call.e.k.c.runs.enqueue(call)
	}
}

// runTask implements task: publish the result and continue the run.
func (call *asyncCall[V]) runTask() {
	r := call.res.Load()
	call.e.finishFetch(&call.f, r.res, r.err)
	call.e.drive()
}
