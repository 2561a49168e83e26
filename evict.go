package watchcache

// This file removes entries: by TTL for the expiry loop (expiry.go), by
// capacity for MaxEntries, and all of them when the cache closes.

import (
	"math/rand/v2"
	"time"
)

// victim is what capacity eviction needs of an entry of any kind.
type victim interface {
	// lastUse returns the entry's last use on Cache.useClock and whether
	// it may be evicted now (no watchers, no waiting Gets).
	lastUse() (uint64, bool)
	evict(reason string)
}

// evictSample is how many entries capacity eviction compares. Redis finds
// 5 to 10 close enough to true LRU; more costs time on the creating Get.
const evictSample = 16

// enforceCapacity evicts entries until the cache holds at most
// MaxEntries, never keep (an entry being created), or until a sample finds
// nothing evictable (every entry sampled is watched or has waiting Gets).
// It runs when an entry is created and when a Get or watch that pinned an
// entry ends, so concurrent misses, which pin the entries they create,
// overshoot the bound only while they wait.
func (c *Cache) enforceCapacity(keep victim) {
	if c.opts.MaxEntries == 0 {
		return
	}
	for c.count.Load() > int64(c.opts.MaxEntries) && !c.isClosed() {
		if !c.evictForCapacity(keep) {
			return
		}
	}
}

// evictForCapacity evicts the least recently used evictable entry among a
// sample, never keep. It reports whether it found one.
func (c *Cache) evictForCapacity(keep victim) bool {
	kinds := c.kindList()
	if len(kinds) == 0 {
		return false
	}
	var (
		best     victim
		bestUsed uint64
	)
	visit := func(v victim) {
		if v == keep {
			return
		}
		used, ok := v.lastUse()
		if ok && (best == nil || used < bestUsed) {
			best, bestUsed = v, used
		}
	}
	seen := 0
	first := rand.IntN(len(kinds))
	for i := 0; i < len(kinds) && seen < evictSample; i++ {
		seen += kinds[(first+i)%len(kinds)].sample(rand.IntN(numShards), evictSample-seen, visit)
	}
	if best == nil {
		return false
	}
	best.evict("capacity")
	return true
}

// heapIndex implements expiring.
func (e *entry[V]) heapIndex() *int32 { return &e.heapIdx }

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
	e.k.c.exp.unschedule(e)
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
		return s.res.State
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
		state := e.releaseIdleLocked(now)
		e.mu.Unlock()
		e.k.c.closeState(state)
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
