package watchcache

import (
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// snapshot is an entry's published state. It is immutable once published:
// a publish replaces the pointer, never the fields, so readers need no lock.
type snapshot[V any] struct {
	// res is the value, its index and the fetch function's opaque
	// per-entry state. Fetches get a pointer to it as LastResult.
	res      FetchResult[V]
	hasValue bool   // a fetch has succeeded (or Prepopulate ran)
	released bool   // idle: the upstream subscription was let go; the value must be revalidated before use
	maxIndex uint64 // highest index ever published, kept across resets
	resets   uint64 // index resets so far

	err   error // error of the latest attempt; nil when it succeeded
	fatal bool  // err is fatal: background refresh has stopped

	fetchedAt    mono // end of the last successful fetch
	failingSince mono // end of the first failure of the current run; 0 when healthy

	attempt uint64 // the fetch attempt that produced this snapshot
	version uint64 // bumped on every change a watcher should see
}

// satisfies reports whether a blocking request with MinIndex min can be
// answered from s: the index passed min, or the index was reset below min
// after having reached it, so min comes from before the reset and waiting
// for it to be passed again would stall the caller (the Consul bug this
// cache exists to avoid).
func (s *snapshot[V]) satisfies(min uint64) bool {
	return s.hasValue && (s.res.Index > min || (s.res.Index < min && min <= s.maxIndex))
}

// entry is one cached key of one kind and partition. See the package
// documentation for its state machine.
type entry[V any] struct {
	k   *Kind[V]
	key entryKey

	used     atomic.Bool                 // a Get read the entry since the expiry loop last looked; hits set it without a lock
	busy     atomic.Bool                 // has watchers or waiting Gets; written under mu, read by capacity eviction
	lastSeen atomic.Int64                // Unix nanoseconds when the entry was last known used; written under mu
	useTick  atomic.Uint64               // Cache.useClock at the last Get, for least-recently-used eviction
	snap     atomic.Pointer[snapshot[V]] // published state; replaced under mu, loaded without it

	mu sync.Mutex // protects the fields below, and the delivery fields of its watchers

	// changed is made by the first Get that waits, closed by the next
	// publish or the eviction, and then left nil until a Get waits again.
	// kick (capacity 1, never closed; pull kinds only) tells the loop that
	// its reasons to fetch changed; senders never block on it.
	changed chan struct{}
	kick    chan struct{}

	limiter *rate.Limiter // per-entry fetch limit; nil while the cache's limit is infinite

	// Async kinds only (async.go): what the run waits for while it is
	// armed, made the first time it waits (entries of blocking kinds
	// rarely do).
	wait *runWait

	fetchCancel canceler // cancels the fetch in flight
	fetchDrop   error    // why the entry cancelled it: its result is discarded

	attempts  uint64  // fetch attempts started
	completed uint64  // highest attempt published
	want      uint64  // attempt some Get waits for; the loop fetches at once while want > completed
	notBefore mono    // no background fetch before this (backoff, RefreshTimer)
	lastStart mono    // start of the last attempt, for polling
	failures  int32   // consecutive failures, for backoff
	jitter    float32 // this poll's extra wait, as a fraction of the interval
	waiting   int32   // Gets waiting on this entry
	heapIdx   int32   // position in the expiry heap; guarded by expiry.mu, not mu

	// blockers are the Gets blocking on an index that the entry's state
	// has not answered yet. A publish that answers one removes it at once,
	// before its goroutine wakes, so that a Get already answered is no
	// reason to fetch again.
	blockers []*getWait

	watchers []*watcher[V]
	maxAges  map[time.Duration]int // polling watchers' MaxAge, counted

	running     bool // the loop goroutine exists (async kinds: the entry's run, see async.go)
	fetching    bool // a fetch is in flight
	fetchBlocks bool // ... and it is a blocking one (MinIndex > 0)
	reserved    bool // async kinds: the next fetch already holds a rate limit token
	fatal       bool // the last attempt failed fatally: no background fetches
	queued      bool // in the expiry heap, or being checked by the expiry loop
	evicted     bool // removed from its kind, or the cache closed: nothing more is published
}

// mono is a point in time as a compact monotonic reading: nanoseconds
// since monoBase. It keeps entries small where time.Time would take 24
// bytes.
type mono int64

var monoBase = time.Now()

// monoOf returns t as a mono, never 0 (which fields use as "unset").
func monoOf(t time.Time) mono {
	if m := mono(t.Sub(monoBase)); m != 0 {
		return m
	}
	return 1
}

func (m mono) time() time.Time { return monoBase.Add(time.Duration(m)) }

// since is time.Since(m.time()), with one clock read and no conversion:
// hits that report an Age call it.
func (m mono) since() time.Duration { return time.Since(monoBase) - time.Duration(m) }

func newEntry[V any](k *Kind[V], ek entryKey) *entry[V] {
	e := &entry[V]{
		k:       k,
		key:     ek,
		queued:  true, // entryFor schedules it right after creation
		heapIdx: -1,
	}
	if k.async == nil {
		e.kick = make(chan struct{}, 1) // async runs are kicked through their timer
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
	d := e.k.opts.LastGetTTL / 16
	if r := e.k.opts.ReleaseAfter; r > 0 && r < e.k.opts.LastGetTTL {
		d = min(d, r/8) // released between ReleaseAfter and 9/8 of it
	}
	return max(d, time.Nanosecond)
}

// meta describes s as of now. Age is measured with the monotonic clock
// only, which costs half of time.Now.
func (e *entry[V]) meta(s *snapshot[V], hit bool) ResultMeta {
	m := ResultMeta{Hit: hit, Index: s.res.Index}
	switch {
	case e.k.opts.Refresh:
		if s.failingSince != 0 {
			m.Age = s.failingSince.since()
		}
	case s.hasValue:
		m.Age = s.fetchedAt.since()
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
	if e.k.async != nil {
		e.kickAsyncLocked()
		return
	}
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
	if len(e.watchers) > 0 || len(e.blockers) > 0 {
		return true
	}
	return e.k.opts.Refresh && !e.releasedLocked()
}

// releasedLocked reports whether the entry let its upstream subscription go
// (release.go).
func (e *entry[V]) releasedLocked() bool {
	s := e.snap.Load()
	return s != nil && s.released
}
