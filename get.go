package watchcache

import (
	"context"
	"time"
)

// Get returns the value for req, from the cache when it can.
//
//   - A hit returns the cached value at once, with Hit set.
//   - A miss fetches; concurrent Gets of the same entry share one fetch.
//   - With MinIndex on a blocking kind, Get waits until the index passes
//     MinIndex (or was reset below it) or Timeout ends; on timeout it
//     returns the last value and no error, as Consul does.
//   - MaxAge and MustRevalidate make non-refresh kinds fetch a fresh value.
//
// Errors: the first fetch's error is returned; a later failure does not
// hide the last good value from a plain Get (it is returned with no error,
// and Meta.Age tells how stale it may be); a Get that demanded a fresh value
// (MaxAge, MustRevalidate) or blocks on an index gets the last value with
// the error of one fresh attempt rather than waiting out its timeout. A
// fatal error (see Fatal) is different: access was refused, so the value
// is withheld and every Get tries once more.
//
// Cancelling ctx ends this call only: the fetch it started goes on for
// anyone else who needs it.
func (k *Kind[V]) Get(ctx context.Context, req Request) (V, ResultMeta, error) {
	var zero V
	if k.c.isClosed() {
		return zero, ResultMeta{}, ErrClosed
	}
	if err := req.validate(); err != nil {
		return zero, ResultMeta{}, err
	}
	if req.Key == "" {
		return k.fetchDirect(ctx, req)
	}
	blocking := req.MinIndex > 0 && k.opts.SupportsBlocking
	ek := entryKey{req.Partition, req.Key}

	// Fast path: a hit reads the entry's atomics and writes nothing shared
	// (markUsed writes once per expiry check).
	if e := k.lookup(ek); e != nil {
		e.markUsed()
		if s := e.snap.Load(); s != nil && k.fresh(s, req, blocking) {
			k.m.hits.Inc()
			return s.res.Value, e.meta(s, true), nil
		}
	}
	return k.getSlow(ctx, req, ek, blocking)
}

// fresh reports whether s answers req without a fetch.
func (k *Kind[V]) fresh(s *snapshot[V], req Request, blocking bool) bool {
	switch {
	case !s.hasValue, s.fatal, s.released:
		return false
	case blocking:
		return s.satisfies(req.MinIndex)
	case k.opts.Refresh:
		return true // kept fresh in the background; Meta.Age tells otherwise
	case req.MustRevalidate:
		return false
	case req.MaxAge > 0 && s.fetchedAt.since() > req.MaxAge:
		return false
	}
	return true
}

// getWait is what one Get remembers across wake-ups.
type getWait struct {
	first          bool
	minIndex       uint64 // the request's MinIndex, for a blocking Get
	need           uint64 // attempt the Get waits for; 0 when none
	startCompleted uint64 // entry's completed attempts when the Get began
	startResets    uint64 // entry's index resets when the Get began
	pos            int    // index in entry.blockers while blocking; -1 when not
}

// answers reports whether s ends the wait of the blocking Get w: the rules
// of answerLocked for blocking Gets, in one predicate. A fatal error
// answers it too: the Get then asks for attempts of its own (want).
func (s *snapshot[V]) answers(w *getWait) bool {
	return s.fatal || s.satisfies(w.minIndex) ||
		(s.hasValue && s.resets > w.startResets) ||
		(s.err != nil && s.attempt > w.startCompleted)
}

// addBlockerLocked records the blocking Get w as a reason to fetch.
func (e *entry[V]) addBlockerLocked(w *getWait) {
	w.pos = len(e.blockers)
	e.blockers = append(e.blockers, w)
}

// removeBlockerLocked forgets w, unless a publish already did.
func (e *entry[V]) removeBlockerLocked(w *getWait) {
	if w.pos < 0 {
		return
	}
	last := len(e.blockers) - 1
	e.blockers[w.pos] = e.blockers[last]
	e.blockers[w.pos].pos = w.pos
	e.blockers[last] = nil
	e.blockers = e.blockers[:last]
	w.pos = -1
}

// releaseBlockersLocked removes the blocking Gets that s answers: they
// return as soon as they run, and must not make the loop fetch again
// meanwhile (a failing upstream would see retries for nobody).
func (e *entry[V]) releaseBlockersLocked(s *snapshot[V]) {
	for i := 0; i < len(e.blockers); {
		if w := e.blockers[i]; s.answers(w) {
			e.removeBlockerLocked(w) // moves the last one to i
			continue
		}
		i++
	}
}

// answer is a Get's result.
type answer[V any] struct {
	value V
	meta  ResultMeta
	err   error
}

func (k *Kind[V]) getSlow(ctx context.Context, req Request, ek entryKey, blocking bool) (V, ResultMeta, error) {
	timeout := req.Timeout
	if blocking && timeout == 0 {
		timeout = k.opts.QueryTimeout
	}
	var timeoutC <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		timeoutC = t.C
	}
	w := &getWait{first: true, minIndex: req.MinIndex, pos: -1}
	var cur *entry[V]
	for {
		e, err := k.lockEntry(ek)
		if err != nil {
			var zero V
			return zero, ResultMeta{}, err
		}
		e.markUsed()
		s := e.snap.Load()
		if e != cur {
			// The first entry, or one that replaced an evicted one: the
			// Get's view of attempts and resets starts here.
			cur = e
			*w = getWait{first: w.first, minIndex: w.minIndex, startCompleted: e.completed, pos: -1}
			if s != nil {
				w.startResets = s.resets
			}
		}
		if a, ok := e.answerLocked(s, req, blocking, w); ok {
			e.mu.Unlock()
			if a.meta.Hit {
				k.m.hits.Inc()
			} else {
				k.m.misses.Inc()
			}
			return a.value, a.meta, a.err
		}
		w.first = false
		e.waiting++
		if blocking {
			e.addBlockerLocked(w)
			e.ensureLoopLocked()
			e.kickLocked()
		}
		e.updateBusyLocked()
		changed := e.waitChanLocked()
		e.mu.Unlock()

		var stop error
		timedOut := false
		select {
		case <-changed:
		case <-timeoutC:
			timedOut = true
		case <-ctx.Done():
			stop = ctx.Err()
		case <-k.c.done:
			stop = ErrClosed
		}

		e.mu.Lock()
		e.waiting--
		if blocking {
			e.removeBlockerLocked(w)
			e.dropIdleFetchLocked()
		}
		e.updateBusyLocked()
		s = e.snap.Load()
		e.mu.Unlock()
		k.c.enforceCapacity(nil) // the entry may be evicted now that no Get pins it

		if stop != nil {
			k.m.misses.Inc()
			var zero V
			return zero, ResultMeta{}, stop
		}
		if timedOut {
			k.m.misses.Inc()
			switch {
			case s == nil || !s.hasValue:
				var zero V
				return zero, ResultMeta{}, ErrTimeout
			case s.fatal:
				var zero V
				return zero, e.meta(s, false), s.err
			}
			return s.res.Value, e.meta(s, false), nil
		}
	}
}

// answerLocked applies the rules of Get to the entry's state s. It returns
// ok false when the Get must wait, having made sure something will wake it:
// an attempt it asked for, or the entry's loop.
func (e *entry[V]) answerLocked(s *snapshot[V], req Request, blocking bool, w *getWait) (a answer[V], ok bool) {
	k := e.k
	reply := func(err error) (answer[V], bool) {
		return answer[V]{value: s.res.Value, meta: e.meta(s, w.first && err == nil), err: err}, true
	}
	if s != nil && s.fatal {
		// Access was refused (or the request can never work): what this
		// partition could read before is withheld, and each Get tries once
		// more, since refresh has stopped and access may have been restored.
		if w.need > 0 && s.attempt >= w.need {
			return answer[V]{meta: e.meta(s, false), err: s.err}, true
		}
		if w.need == 0 {
			w.need = e.requestAttemptLocked()
		}
		return a, false
	}
	if s != nil && s.released {
		// The entry let its subscription go while idle: its value may be
		// old, and any Get revalidates it first.
		if w.need == 0 {
			w.need = e.requestAttemptLocked()
		}
		return a, false
	}
	if blocking {
		switch {
		case s != nil && s.satisfies(req.MinIndex):
			return reply(nil)
		case s != nil && s.hasValue && s.resets > w.startResets:
			// The index was reset while this Get waited: the state it waits
			// to see replaced is gone, so it gets the new one now.
			return reply(nil)
		case s != nil && s.err != nil && s.attempt > w.startCompleted:
			// One attempt failed since the Get began: report it rather than
			// wait out the timeout on a failing source.
			return reply(s.err)
		}
		return a, false
	}

	if w.need > 0 && s != nil && s.attempt >= w.need {
		return reply(s.err) // the attempt this Get asked for (or joined) is done
	}
	if w.need == 0 {
		switch {
		case s != nil && k.fresh(s, req, false):
			return reply(nil)
		case s != nil && !s.hasValue && s.err != nil && e.running && !e.fetching && time.Until(e.notBefore.time()) > 0:
			// The loop is backing off after failures: the error is current,
			// and asking for an attempt now would defeat the backoff.
			return answer[V]{meta: e.meta(s, false), err: s.err}, true
		}
		w.need = e.requestAttemptLocked()
	}
	return a, false
}

// fetchDirect serves a request with an empty key: no entry, no sharing.
func (k *Kind[V]) fetchDirect(ctx context.Context, req Request) (V, ResultMeta, error) {
	opts := FetchOptions[V]{Timeout: req.Timeout}
	if opts.Timeout == 0 {
		opts.Timeout = k.opts.QueryTimeout
	}
	if k.opts.SupportsBlocking {
		opts.MinIndex = req.MinIndex
	}
	k.m.misses.Inc()
	start := time.Now()
	res, err := callFetch(ctx, k.fetcher, opts, req)
	k.m.observeFetch(time.Since(start), err)
	k.c.closeState(res.State) // no entry keeps it
	return res.Value, ResultMeta{Index: max(res.Index, 1)}, err
}

// Prepopulate stores res as the entry for req, as if it had been fetched
// now. For refresh kinds the entry then refreshes in the background.
func (k *Kind[V]) Prepopulate(req Request, res FetchResult[V]) error {
	if req.Key == "" {
		return invalidf("Prepopulate on kind %q needs a key", k.name)
	}
	e, err := k.lockEntry(entryKey{req.Partition, req.Key})
	if err != nil {
		return err
	}
	now := time.Now()
	drop := e.publishLocked(e.completed, now, now, res, nil)
	if k.opts.Refresh {
		e.ensureLoopLocked()
	}
	e.mu.Unlock()
	k.c.closeState(drop)
	return nil
}
