package watchcache

import (
	"context"
	"reflect"
	"time"
)

// Notify sends the entry's current result on ch, then one event per change,
// until ctx is cancelled or the cache closes. Every event carries
// correlationID, so one channel can serve many watches.
//
// Blocking kinds follow the index: an event for every new index, at once
// for an index reset. Polling kinds (without SupportsBlocking) need
// req.MaxAge, the polling interval, and send an event only when the value
// changed. Errors are sent once per run of failures, with the last good
// value, and followed by a recovery event.
//
// Notify never blocks on ch and never closes it. A consumer that falls
// behind skips intermediate events but always gets the latest; it never
// delays other watchers and costs no memory beyond its watch. When the
// cache closes, a final event with Err ErrClosed is sent if ch has room.
// Notify returns an error only for bad arguments or a closed cache.
func (k *Kind[V]) Notify(ctx context.Context, req Request, correlationID string, ch chan<- UpdateEvent[V]) error {
	if ch == nil {
		return invalidf("Notify on kind %q: nil channel", k.name)
	}
	return k.watch(ctx, req, &watcher[V]{id: correlationID, ch: ch})
}

// NotifyCallback is Notify with a callback instead of a channel. Callbacks
// run on the cache's small worker pool, one call at a time per watch; a
// callback that falls behind gets the latest event when it returns. A
// panic in cb is recovered and logged. cb must return promptly: a callback
// that never returns holds a worker, and Close waits for it. Close calls no
// callback; it ends the watch silently.
func (k *Kind[V]) NotifyCallback(ctx context.Context, req Request, correlationID string, cb func(UpdateEvent[V])) error {
	if cb == nil {
		return invalidf("NotifyCallback on kind %q: nil callback", k.name)
	}
	return k.watch(ctx, req, &watcher[V]{id: correlationID, cb: cb})
}

func (k *Kind[V]) watch(ctx context.Context, req Request, w *watcher[V]) error {
	if err := req.validate(); err != nil {
		return err
	}
	if req.Key == "" {
		return invalidf("Notify on kind %q needs a key: an empty key bypasses the cache", k.name)
	}
	if !k.opts.SupportsBlocking {
		if req.MaxAge == 0 {
			return invalidf("Notify on polling kind %q needs a MaxAge: it is the polling interval", k.name)
		}
		w.maxAge = req.MaxAge
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	e, err := k.lockEntry(entryKey{req.Partition, req.Key})
	if err != nil {
		return err
	}
	w.e = e
	e.attachLocked(w)
	if s := e.snap.Load(); s != nil {
		if req.MinIndex > 0 && k.opts.SupportsBlocking && !s.satisfies(req.MinIndex) && s.err == nil {
			w.version = s.version // the caller has this one; start after it
		}
		if w.version < s.version {
			w.offerLocked(s, e.eventLocked(s))
		}
	}
	e.ensureLoopLocked()
	e.kickLocked()
	e.mu.Unlock()
	k.c.watches.add(ctx, w)
	return nil
}

// watcher is one Notify or NotifyCallback. It is data, not a goroutine: the
// entry's loop delivers to it.
type watcher[V any] struct {
	// Set before the watcher is attached, then read-only.
	e      *entry[V]
	id     string
	ch     chan<- UpdateEvent[V] // exactly one of ch and cb is set
	cb     func(UpdateEvent[V])
	maxAge time.Duration // polling interval, for polling kinds

	// Guarded by e.mu.
	pos     int    // index in e.watchers
	version uint64 // snapshot version last delivered or being delivered
	parked  bool   // ch was full: the deliverer owns delivery until it drains
	queued  bool   // queued or running on the callback pool
	removed bool
}

// attachLocked adds w to the entry.
func (e *entry[V]) attachLocked(w *watcher[V]) {
	w.pos = len(e.watchers)
	e.watchers = append(e.watchers, w)
	if w.maxAge > 0 {
		if e.maxAges == nil {
			e.maxAges = make(map[time.Duration]int)
		}
		e.maxAges[w.maxAge]++
	}
	e.updateBusyLocked()
	e.k.m.watchers.Inc()
}

// detachLocked removes w from the entry.
func (e *entry[V]) detachLocked(w *watcher[V]) {
	last := len(e.watchers) - 1
	e.watchers[w.pos] = e.watchers[last]
	e.watchers[w.pos].pos = w.pos
	e.watchers[last] = nil
	e.watchers = e.watchers[:last]
	if w.maxAge > 0 {
		if e.maxAges[w.maxAge]--; e.maxAges[w.maxAge] == 0 {
			delete(e.maxAges, w.maxAge)
		}
	}
	e.updateBusyLocked()
	e.dropIdleFetchLocked()
	e.k.m.watchers.Dec()
}

// remove ends the watch; Cache.watches calls it when the watcher's context
// is cancelled.
func (w *watcher[V]) remove() {
	e := w.e
	e.mu.Lock()
	defer e.mu.Unlock()
	if w.removed {
		return
	}
	w.removed = true
	e.detachLocked(w)
	if w.parked {
		e.k.c.deliver.unpark(w)
	}
}

// closeLocked ends the watch because the cache closes. A channel watcher
// gets a final ErrClosed event if its channel has room. A callback watcher
// gets none: Close waits for the callbacks it starts, and a callback that
// talks to the goroutine calling Close would deadlock it.
func (w *watcher[V]) closeLocked() {
	w.removed = true
	if w.ch == nil {
		return
	}
	ev := UpdateEvent[V]{CorrelationID: w.id}
	if s := w.e.snap.Load(); s != nil {
		ev = w.e.eventLocked(s)
		ev.CorrelationID = w.id
	}
	ev.Err = ErrClosed
	select {
	case w.ch <- ev:
	default: // the consumer is not reading; it has its context
	}
}

// eventLocked is the event that tells a watcher about s.
func (e *entry[V]) eventLocked(s *snapshot[V]) UpdateEvent[V] {
	ev := UpdateEvent[V]{Meta: e.meta(s, false), Err: s.err}
	if !s.fatal {
		ev.Result = s.value // a fatal error withholds it, as Get does
	}
	return ev
}

// fanoutLocked offers s to every watcher that has not seen it. Sends never
// block: this runs on the entry's loop, and one stuck consumer must not
// delay the others.
func (e *entry[V]) fanoutLocked(s *snapshot[V]) {
	if len(e.watchers) == 0 {
		return
	}
	ev := e.eventLocked(s)
	for _, w := range e.watchers {
		if w.version < s.version {
			w.offerLocked(s, ev)
		}
	}
}

// offerLocked delivers ev (built from s) to w now if it can, or hands w to
// whoever delivers later: the deliverer for a full channel, the callback
// pool for a callback. Either reads the entry's latest snapshot when it
// delivers, so w keeps no queue: its mailbox is the entry itself.
func (w *watcher[V]) offerLocked(s *snapshot[V], ev UpdateEvent[V]) {
	if w.ch == nil {
		if !w.queued {
			w.queued = true
			w.e.k.c.callback.enqueue(w)
		}
		return
	}
	if w.parked {
		return
	}
	ev.CorrelationID = w.id
	select {
	case w.ch <- ev:
		w.version = s.version
	default:
		w.parked = true
		w.e.k.c.deliver.park(w)
	}
}

// sendCase implements parkedWatcher: the send the deliverer should wait
// on, with the version it carries; ok is false when w needs nothing.
func (w *watcher[V]) sendCase() (c reflect.SelectCase, version uint64, ok bool) {
	e := w.e
	e.mu.Lock()
	defer e.mu.Unlock()
	s := e.snap.Load()
	if w.removed || !w.parked || s == nil {
		return c, 0, false
	}
	ev := e.eventLocked(s)
	ev.CorrelationID = w.id
	return reflect.SelectCase{Dir: reflect.SelectSend, Chan: reflect.ValueOf(w.ch), Send: reflect.ValueOf(ev)}, s.version, true
}

// sent implements parkedWatcher: the deliverer sent version. It reports
// whether w is still parked because a newer version is waiting.
func (w *watcher[V]) sent(version uint64) bool {
	e := w.e
	e.mu.Lock()
	defer e.mu.Unlock()
	w.version = max(w.version, version)
	if w.removed {
		return false
	}
	if e.snap.Load().version > w.version {
		return true // it changed while w was behind: send the latest next
	}
	w.parked = false
	return false
}

// runCallback implements callbackTask: one call of w's callback with the
// entry's latest event, then again if it changed meanwhile.
func (w *watcher[V]) runCallback() {
	e := w.e
	e.mu.Lock()
	if w.removed {
		w.queued = false
		e.mu.Unlock()
		return
	}
	s := e.snap.Load()
	w.version = s.version
	ev := e.eventLocked(s)
	ev.CorrelationID = w.id
	e.mu.Unlock()

	e.k.c.callback.call(e.k.m, e.k.name, w.id, func() { w.cb(ev) })

	e.mu.Lock()
	defer e.mu.Unlock()
	if !w.removed && e.snap.Load().version > w.version {
		e.k.c.callback.enqueue(w) // still queued: run again with the latest
		return
	}
	w.queued = false
}
