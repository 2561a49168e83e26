package watchcache

// This file holds the release of idle entries: an entry that nobody read
// or watched for KindOptions.ReleaseAfter lets its upstream subscription
// go (its background refresh, the fetch in flight, its State) and keeps
// only its last value, marked released, until it is evicted. A released
// value is never served as it is: Get and Notify revalidate it with a
// fetch first (get.go, notify.go), and that publish clears the mark.
//
// The expiry loop decides (evict.go, expire), since it already visits
// every idle entry; the entry's loop, which must not lose its State while
// a fetch uses it, closes the State on its way out (exitLocked).

import "time"

// releaseIdleLocked releases e if it has been idle for ReleaseAfter. It
// returns the State to close once e.mu is released, if any.
func (e *entry[V]) releaseIdleLocked(now time.Time) (state any) {
	after := e.k.opts.ReleaseAfter
	s := e.snap.Load()
	if after <= 0 || s == nil || s.released || !s.hasValue || s.fatal || e.want > e.completed {
		return nil
	}
	if time.Unix(0, e.lastSeen.Load()).Add(after).After(now) {
		return nil
	}
	if !e.k.opts.Refresh && s.res.State == nil {
		return nil // nothing fetches or holds the source for it
	}
	next := *s
	next.released = true
	e.snap.Store(&next)
	e.k.m.released.Inc()
	if e.running {
		// The loop exits now that nothing needs it, and closes the State
		// once no fetch uses it.
		e.cancelFetchLocked(errIdle)
		e.kickLocked()
		return nil
	}
	return e.dropStateLocked()
}

// dropStateLocked takes the State out of the entry's snapshot and returns
// it, for the caller to close.
func (e *entry[V]) dropStateLocked() any {
	s := e.snap.Load()
	if s == nil || s.res.State == nil {
		return nil
	}
	next := *s
	next.res.State = nil
	e.snap.Store(&next)
	return s.res.State
}
