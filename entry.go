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
	k   *Kind[V]
	key entryKey

	used     atomic.Bool                 // a Get read the entry since the expiry loop last looked; hits set it without a lock
	lastSeen atomic.Int64                // Unix nanoseconds when the entry was last known used; written under mu
	useTick  atomic.Uint64               // Cache.useClock at the last Get, for least-recently-used eviction
	busy     atomic.Bool                 // has watchers or waiting Gets; written under mu, read by capacity eviction
	snap     atomic.Pointer[snapshot[V]] // published state; replaced under mu, loaded without it

	mu sync.Mutex // protects the fields below, and the delivery fields of its watchers

	// changed is made by the first Get that waits, closed by the next
	// publish or the eviction, and then left nil until a Get waits again.
	// kick (capacity 1, never closed) tells the loop that its reasons to
	// fetch changed; senders never block on it.
	changed chan struct{}
	kick    chan struct{}

	limiter *rate.Limiter // per-entry fetch limit; nil while the cache's limit is infinite

	running     bool               // the loop goroutine exists
	fetching    bool               // a fetch is in flight
	fetchBlocks bool               // ... and it is a blocking one (MinIndex > 0)
	fetchCancel context.CancelFunc // cancels the fetch in flight
	fetchDrop   error              // why the entry cancelled it: its result is discarded

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
	e := &entry[V]{
		k:      k,
		key:    ek,
		kick:   make(chan struct{}, 1),
		queued: true, // entryFor schedules it right after creation
	}
	e.lastSeen.Store(time.Now().UnixNano())
	e.useTick.Store(k.c.useClock.Load())
	return e
}

// markUsed records a Get. Only the first Get after each expiry check, and
// after each entry creation, writes: concurrent hits of one key then share
// a read-only cache line, and no hit reads the clock (which costs as much
// as the rest of a hit).
func (e *entry[V]) markUsed() {
	if !e.used.Load() {
		e.used.Store(true)
	}
	if t := e.k.c.useClock.Load(); e.useTick.Load() != t {
		e.useTick.Store(t)
	}
}

// expiryCheck is how often the expiry loop looks at an idle entry: the
// resolution of LastGetTTL. An entry is evicted between LastGetTTL and
// LastGetTTL + LastGetTTL/16 after its last use.
func (e *entry[V]) expiryCheck() time.Duration {
	return max(e.k.opts.LastGetTTL/16, time.Nanosecond)
}

// meta describes s as of now. Age is measured with the monotonic clock
// only, which costs half of time.Now.
func (e *entry[V]) meta(s *snapshot[V], hit bool) ResultMeta {
	m := ResultMeta{Hit: hit, Index: s.index}
	switch {
	case e.k.opts.Refresh:
		if !s.failingSince.IsZero() {
			m.Age = time.Since(s.failingSince)
		}
	case s.hasValue:
		m.Age = time.Since(s.fetchedAt)
	}
	return m
}

// wakeLocked wakes the Gets waiting on the entry.
func (e *entry[V]) wakeLocked() {
	if e.changed != nil {
		close(e.changed)
		e.changed = nil
	}
}

// waitChanLocked returns the channel the next publish closes.
func (e *entry[V]) waitChanLocked() <-chan struct{} {
	if e.changed == nil {
		e.changed = make(chan struct{})
	}
	return e.changed
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
		e.lastSeen.Store(time.Now().UnixNano()) // used until now: the TTL counts from here
	}
	if !busy && !e.queued && !e.evicted {
		e.queued = true
		e.k.c.exp.schedule(e, time.Now().Add(e.expiryCheck()))
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
		e.fetchCancel()
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
func (e *entry[V]) fetch() {
	e.mu.Lock()
	if e.evicted {
		e.mu.Unlock()
		return
	}
	e.attempts++
	n := e.attempts
	opts := FetchOptions[V]{Timeout: e.k.opts.QueryTimeout}
	if prev := e.snap.Load(); prev != nil && prev.hasValue {
		opts.LastResult = &FetchResult[V]{Value: prev.value, Index: prev.index, State: prev.state}
		// Block only for background refresh of a healthy entry: a Get
		// waiting for a fresh value needs the current one now, and after a
		// failure the current one is the recovery, which must not wait for
		// the next change.
		if e.k.opts.SupportsBlocking && e.want <= e.completed && prev.err == nil {
			opts.MinIndex = prev.index
		}
	}
	// One context per fetch, straight under the cache's: Close cancels it
	// through the parent, the entry through fetchCancel (recording why in
	// fetchDrop), and the deadline stops a fetch that ignores its Timeout.
	ctx, cancel := context.WithDeadline(e.k.c.base, time.Now().Add(fetchGrace(opts.Timeout)))
	e.fetching, e.fetchBlocks, e.fetchCancel, e.fetchDrop = true, opts.MinIndex > 0, cancel, nil
	e.mu.Unlock()

	start := time.Now()
	res, err := callFetch(ctx, e.k.fetcher, opts, Request{Key: e.key.key, Partition: e.key.part})
	end := time.Now()
	timedOut := errors.Is(ctx.Err(), context.DeadlineExceeded)
	cancel()

	e.mu.Lock()
	discard := e.fetchDrop != nil || e.evicted || e.k.c.isClosed()
	e.fetching, e.fetchBlocks, e.fetchCancel, e.fetchDrop = false, false, nil, nil
	if discard {
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
		if prev == nil || !sameState(res.State, prev.state) {
			e.k.c.closeState(res.State) // a failed fetch's state is not kept
		}
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
	e.wakeLocked()
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
func (e *entry[V]) lastUse() (uint64, bool) {
	return e.useTick.Load(), !e.busy.Load()
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
	e.wakeLocked()
	if e.running {
		e.cancelFetchLocked(errEvicted)
		e.kickLocked()
		return nil
	}
	if s := e.snap.Load(); s != nil {
		return s.state
	}
	return nil
}

// expire implements expiring, for the expiry loop. It evicts the entry if
// it was not used for its TTL, or says when to look again: every
// expiryCheck, so that a use is noticed within that resolution without
// hits ever taking a lock or reading the clock.
func (e *entry[V]) expire(now time.Time) (time.Time, bool) {
	e.mu.Lock()
	if e.evicted || len(e.watchers) > 0 || e.waiting > 0 {
		e.queued = false // updateBusyLocked queues it again when it becomes idle
		e.mu.Unlock()
		return time.Time{}, false
	}
	if e.used.Swap(false) {
		e.lastSeen.Store(now.UnixNano())
	}
	if d := time.Unix(0, e.lastSeen.Load()).Add(e.k.opts.LastGetTTL); d.After(now) {
		e.mu.Unlock()
		return minTime(d, now.Add(e.expiryCheck())), true
	}
	e.queued = false
	e.mu.Unlock()
	e.evict("ttl")
	return time.Time{}, false
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
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
