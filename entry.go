package watchcache

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// snapshot is an entry's published state. It is immutable once published:
// a publish replaces the pointer, never the fields, so readers need no lock.
type snapshot[V any] struct {
	value    V
	state    any  // the fetch function's opaque per-entry state
	hasValue bool // a fetch has succeeded (or Prepopulate ran)
	index    uint64
	maxIndex uint64 // highest index ever published, kept across resets
	resets   uint64 // index resets so far

	err   error // error of the latest attempt; nil when it succeeded
	fatal bool  // err is fatal: background refresh has stopped

	fetchedAt    time.Time // end of the last successful fetch
	failingSince time.Time // end of the first failure of the current run; zero when healthy

	attempt uint64 // the fetch attempt that produced this snapshot
	version uint64 // bumped on every change a watcher should see
}

// satisfies reports whether a blocking request with MinIndex min can be
// answered from s: the index passed min, or the index was reset below min
// after having reached it, so min comes from before the reset and waiting
// for it to be passed again would stall the caller (the Consul bug this
// cache exists to avoid).
func (s *snapshot[V]) satisfies(min uint64) bool {
	return s.hasValue && (s.index > min || (s.index < min && min <= s.maxIndex))
}

// entry is one cached key of one kind and partition. See the package
// documentation for its state machine.
type entry[V any] struct {
	k       *Kind[V]
	key     entryKey
	limiter *rate.Limiter // fetch rate limit; synchronised by itself

	lastUsed atomic.Int64                // Unix nanoseconds of the last Get; hits store it without a lock
	busy     atomic.Bool                 // has watchers or waiting Gets; written under mu, read by capacity eviction
	snap     atomic.Pointer[snapshot[V]] // published state; replaced under mu, loaded without it

	mu sync.Mutex // protects the fields below, and the delivery fields of its watchers

	// changed is closed after each publish and on eviction, then replaced:
	// waiting Gets select on it. kick (capacity 1, never closed) tells the
	// loop that its reasons to fetch changed; senders never block on it.
	changed chan struct{}
	kick    chan struct{}

	running     bool                    // the loop goroutine exists
	loopCancel  context.CancelFunc      // cancels the loop's context; set while running
	fetching    bool                    // a fetch is in flight
	fetchBlocks bool                    // ... and it is a blocking one (MinIndex > 0)
	fetchCancel context.CancelCauseFunc // cancels the fetch in flight

	attempts  uint64    // fetch attempts started
	completed uint64    // highest attempt published
	want      uint64    // attempt some Get waits for; the loop fetches at once while want > completed
	failures  int       // consecutive failures, for backoff
	notBefore time.Time // no background fetch before this (backoff, RefreshTimer)
	lastStart time.Time // start of the last attempt, for polling
	jitter    float64   // this poll's extra wait, as a fraction of the interval
	fatal     bool      // the last attempt failed fatally: no background fetches

	waiting int // Gets waiting on this entry
	blocked int // of which blocking on an index

	watchers []*watcher[V]
	maxAges  map[time.Duration]int // polling watchers' MaxAge, counted

	queued  bool // in the expiry heap
	evicted bool // removed from its kind, or the cache closed: nothing more is published
}

func newEntry[V any](k *Kind[V], ek entryKey) *entry[V] {
	r := k.c.rate.Load()
	e := &entry[V]{
		k:       k,
		key:     ek,
		limiter: rate.NewLimiter(r.limit, r.burst),
		changed: make(chan struct{}),
		kick:    make(chan struct{}, 1),
		queued:  true, // entryFor schedules it right after creation
	}
	e.lastUsed.Store(time.Now().UnixNano())
	return e
}

// touchGranularity is how stale the recorded last use may get. Storing on
// every hit would make concurrent hits of one key fight over a cache line;
// expiry measured in hours does not need nanoseconds.
const touchGranularity = int64(time.Second)

// touch records a use at now without a lock.
func (e *entry[V]) touch(now time.Time) {
	n := now.UnixNano()
	if n-e.lastUsed.Load() > touchGranularity {
		e.lastUsed.Store(n)
	}
}

// deadline is when the entry expires unless used again.
func (e *entry[V]) deadline() time.Time {
	return time.Unix(0, e.lastUsed.Load()).Add(e.k.opts.LastGetTTL)
}

// meta describes s as of now.
func (e *entry[V]) meta(s *snapshot[V], now time.Time, hit bool) ResultMeta {
	m := ResultMeta{Hit: hit, Index: s.index}
	switch {
	case e.k.opts.Refresh:
		if !s.failingSince.IsZero() {
			m.Age = now.Sub(s.failingSince)
		}
	case s.hasValue:
		m.Age = now.Sub(s.fetchedAt)
	}
	return m
}

// kickLocked wakes the loop to re-evaluate its reasons to fetch.
func (e *entry[V]) kickLocked() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

// updateBusyLocked records whether watchers or waiting Gets pin the entry,
// and queues it for expiry when they stop doing so.
func (e *entry[V]) updateBusyLocked() {
	busy := len(e.watchers) > 0 || e.waiting > 0
	if e.busy.Swap(busy) && !busy {
		e.lastUsed.Store(time.Now().UnixNano()) // used until now: the TTL counts from here
	}
	if !busy && !e.queued && !e.evicted {
		e.queued = true
		e.k.c.exp.schedule(e, e.deadline())
	}
}

// neededLocked reports whether anything needs the entry's loop to fetch.
func (e *entry[V]) neededLocked() bool {
	if e.want > e.completed {
		return true
	}
	if e.fatal {
		return false
	}
	return e.k.opts.Refresh || len(e.watchers) > 0 || e.blocked > 0
}

// errIdle and errPreempted are the causes of fetches the entry cancels
// itself; their results are discarded, not published.
var (
	errIdle      = errors.New("watchcache: fetch no longer needed")
	errPreempted = errors.New("watchcache: blocking fetch preempted by a Get that needs a fresh value")
)

// dropIdleFetchLocked cancels a fetch in flight that nothing needs any more,
// so that an unwatched key of a non-refresh kind does not hold an upstream
// blocking query open until it times out.
func (e *entry[V]) dropIdleFetchLocked() {
	if e.fetchCancel != nil && !e.neededLocked() {
		e.fetchCancel(errIdle)
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
	if e.fetching {
		e.fetchCancel(errPreempted)
	}
	e.ensureLoopLocked()
	e.kickLocked()
	return n
}

// ensureLoopLocked starts the entry's loop unless it runs or the entry is
// gone. The loop's context derives from the cache's, never a caller's.
func (e *entry[V]) ensureLoopLocked() {
	if e.running || e.evicted {
		return
	}
	ctx, cancel := context.WithCancel(e.k.c.base)
	if !e.k.c.goTracked(func() { e.loop(ctx) }) {
		cancel()
		return
	}
	e.running, e.loopCancel = true, cancel
}

// nextFetchLocked decides when the loop fetches next, or that it should
// exit (ok false). This is the only place that decides.
func (e *entry[V]) nextFetchLocked(ctx context.Context, now time.Time) (at time.Time, ok bool) {
	if e.evicted || ctx.Err() != nil || !e.neededLocked() {
		return time.Time{}, false
	}
	if e.want > e.completed || e.snap.Load() == nil {
		// A Get waits for a fresh value, or nothing was fetched yet.
		return now, true
	}
	if e.k.opts.SupportsBlocking {
		return e.notBefore, true
	}
	interval := e.pollIntervalLocked()
	next := e.lastStart.Add(interval + time.Duration(e.jitter*float64(interval)))
	if e.notBefore.After(next) {
		next = e.notBefore
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

// loop is the entry's goroutine: it fetches while anything needs it.
func (e *entry[V]) loop(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		e.mu.Lock()
		at, ok := e.nextFetchLocked(ctx, time.Now())
		if !ok {
			e.exitLocked()
			return
		}
		e.mu.Unlock()

		if wait := time.Until(at); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-e.kick:
			case <-ctx.Done():
			}
			continue // re-evaluate: a kick may change the plan
		}
		if err := e.limiter.Wait(ctx); err != nil {
			continue // the context ended: the next evaluation exits
		}
		e.fetch(ctx)
	}
}

// exitLocked ends the loop. It unlocks e.mu.
func (e *entry[V]) exitLocked() {
	e.running = false
	e.loopCancel()
	e.loopCancel = nil
	var state any
	if s := e.snap.Load(); e.evicted && s != nil {
		state = s.state // the entry is gone and nothing fetches with it any more
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

// fetch runs one attempt and publishes its result.
func (e *entry[V]) fetch(ctx context.Context) {
	e.mu.Lock()
	e.attempts++
	n := e.attempts
	opts := FetchOptions[V]{Timeout: e.k.opts.QueryTimeout}
	if prev := e.snap.Load(); prev != nil && prev.hasValue {
		opts.LastResult = &FetchResult[V]{Value: prev.value, Index: prev.index, State: prev.state}
		// Block only for background refresh: a Get waiting for a fresh
		// value needs the current one now.
		if e.k.opts.SupportsBlocking && e.want <= e.completed {
			opts.MinIndex = prev.index
		}
	}
	cctx, cancel := context.WithCancelCause(ctx)
	fctx, cancelTimeout := context.WithTimeout(cctx, fetchGrace(opts.Timeout))
	e.fetching, e.fetchBlocks, e.fetchCancel = true, opts.MinIndex > 0, cancel
	e.mu.Unlock()

	start := time.Now()
	res, err := callFetch(fctx, e.k.fetcher, opts, Request{Key: e.key.key, Partition: e.key.part})
	end := time.Now()
	timedOut := errors.Is(fctx.Err(), context.DeadlineExceeded)
	cancelTimeout()
	discard := ctx.Err() != nil || context.Cause(cctx) != nil // evicted, closed, idle or preempted
	cancel(nil)

	e.mu.Lock()
	e.fetching, e.fetchBlocks, e.fetchCancel = false, false, nil
	if discard || e.evicted {
		e.mu.Unlock()
		e.discardState(res.State, opts.LastResult)
		return
	}
	if err != nil && timedOut {
		err = fmt.Errorf("watchcache: fetch of %s %q did not return within %v: %w", e.k.name, e.key.key, fetchGrace(opts.Timeout), err)
	}
	e.k.m.observeFetch(end.Sub(start), err)
	e.publishLocked(n, start, end, res, err)
	e.mu.Unlock()
}

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
// snapshot, wakes waiting Gets and fans out to watchers.
func (e *entry[V]) publishLocked(n uint64, start, end time.Time, res FetchResult[V], err error) {
	prev := e.snap.Load()
	next := new(snapshot[V])
	if prev != nil {
		*next = *prev
	}
	next.attempt = n
	e.completed = max(e.completed, n)
	e.lastStart = start
	e.jitter = rand.Float64() / 16 // up to interval/16 on the next poll

	if err != nil {
		e.failures++
		e.notBefore = end.Add(backoff(e.failures))
		e.fatal = isFatal(err)
		// Watchers hear of a failure once, not on every retry: again only
		// when the error says something new.
		if prev == nil || prev.err == nil || prev.err.Error() != err.Error() || prev.fatal != e.fatal {
			next.version++
			e.logFailure(err, prev)
		}
		if next.failingSince.IsZero() {
			next.failingSince = end
		}
		next.err, next.fatal = err, e.fatal
	} else {
		var prevIndex uint64
		if prev != nil && prev.hasValue {
			prevIndex = prev.index
		}
		changed := false
		if e.k.opts.SupportsBlocking {
			step := stepIndex(prevIndex, res.Index)
			next.index, changed = step.index, step.changed
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
			next.index = max(res.Index, 1)
			changed = prev == nil || !prev.hasValue || !reflect.DeepEqual(prev.value, res.Value)
			e.failures = 0
		}
		e.notBefore = end.Add(backoff(e.failures))
		if e.k.opts.Refresh {
			e.notBefore = e.notBefore.Add(e.k.opts.RefreshTimer)
		}
		if prev != nil && prev.err != nil {
			changed = true // recovery: watchers saw the error, now they see it end
			e.k.c.log.Info("watchcache: fetch recovered", "kind", e.k.name, "key", e.key.key)
		}
		if prev != nil && prev.hasValue && !sameState(prev.state, res.State) {
			e.k.c.closeState(prev.state) // replaced by the fetch function
		}
		e.fatal = false
		next.value, next.state, next.hasValue = res.Value, res.State, true
		next.maxIndex = max(next.maxIndex, next.index)
		next.err, next.fatal, next.failingSince, next.fetchedAt = nil, false, time.Time{}, end
		if changed {
			next.version++
		}
	}
	e.snap.Store(next)
	close(e.changed)
	e.changed = make(chan struct{})
	e.fanoutLocked(next)
}

func (e *entry[V]) logFailure(err error, prev *snapshot[V]) {
	attrs := []any{"kind", e.k.name, "key", e.key.key, "error", err, "failures", e.failures}
	if e.fatal {
		e.k.c.log.Warn("watchcache: fetch failed fatally; background refresh stopped", attrs...)
		return
	}
	e.k.c.log.Warn("watchcache: fetch failed; retrying with backoff", attrs...)
}

// lastUse implements victim.
func (e *entry[V]) lastUse() (int64, bool) {
	return e.lastUsed.Load(), !e.busy.Load()
}

// evict removes the entry from its kind unless watchers or waiting Gets pin
// it. reason labels the eviction metric.
func (e *entry[V]) evict(reason string) {
	e.mu.Lock()
	if e.evicted || len(e.watchers) > 0 || e.waiting > 0 {
		e.mu.Unlock()
		return
	}
	e.k.remove(e) // under e.mu: whoever sees evicted also finds the key gone
	state := e.retireLocked()
	e.mu.Unlock()
	e.k.c.closeState(state)
	e.k.c.count.Add(-1)
	e.k.m.entries.Dec()
	e.k.m.evicted(reason)
}

// retireLocked marks the entry gone: waiting Gets wake and look again, the
// loop exits. It returns the state to close now, or nil when the loop will
// close it on its way out.
func (e *entry[V]) retireLocked() any {
	e.evicted = true
	close(e.changed)
	e.changed = make(chan struct{})
	if e.running {
		e.loopCancel()
		return nil
	}
	if s := e.snap.Load(); s != nil {
		return s.state
	}
	return nil
}

// expire implements expiring: it evicts the entry if its deadline passed,
// or says when to look again.
func (e *entry[V]) expire(now time.Time) (time.Time, bool) {
	e.mu.Lock()
	if e.evicted || len(e.watchers) > 0 || e.waiting > 0 {
		e.queued = false // updateBusyLocked queues it again when it becomes idle
		e.mu.Unlock()
		return time.Time{}, false
	}
	if d := e.deadline(); d.After(now) {
		e.mu.Unlock()
		return d, true // used since it was queued
	}
	e.queued = false
	e.mu.Unlock()
	e.evict("ttl")
	return time.Time{}, false
}

// close ends the entry when the cache closes: every watcher gets its final
// event and is detached.
func (e *entry[V]) close() {
	e.mu.Lock()
	if e.evicted {
		e.mu.Unlock()
		return
	}
	ws := e.watchers
	e.watchers = nil
	for _, w := range ws {
		w.closeLocked()
	}
	e.k.m.watchers.Sub(float64(len(ws)))
	state := e.retireLocked()
	e.mu.Unlock()
	e.k.c.closeState(state)
}
