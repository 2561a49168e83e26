package watchcache

import (
	"context"
	"runtime"
	"sync/atomic"
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
// delays other watchers and costs no memory beyond its watch. Many watches
// may share one channel; they are served in the order it frees up. When
// the cache closes, a final event with Err ErrClosed is sent if ch has
// room. Notify returns an error only for bad arguments or a closed cache.
//
// Cancel ctx to stop the watch: that is the supported way, and it frees
// everything the watch held. Closing ch instead does not crash the
// process, but it is a consumer bug: the watch ends the next time it would
// send, and the cache logs it and counts it in
// watchcache_closed_channel_watches_total.
func (k *Kind[V]) Notify(ctx context.Context, req Request, correlationID string, ch chan<- UpdateEvent[V]) error {
	if ch == nil {
		return invalidf("Notify on kind %q: nil channel", k.name)
	}
	return k.watch(ctx, req, &watcher[V]{id: correlationID, ch: ch, done: ctx.Done()})
}

// NotifyCallback is Notify with a callback instead of a channel. Callbacks
// run on the cache's small worker pool, one call at a time per watch; a
// callback that falls behind gets the latest event when it returns. A
// panic in cb is recovered and logged. cb must return promptly: a callback
// that never returns holds a worker, and Close waits for it. Close calls no
// callback; it ends the watch silently. Once ctx is cancelled (once its
// cancel function has returned), no further call of cb starts.
func (k *Kind[V]) NotifyCallback(ctx context.Context, req Request, correlationID string, cb func(UpdateEvent[V])) error {
	if cb == nil {
		return invalidf("NotifyCallback on kind %q: nil callback", k.name)
	}
	return k.watch(ctx, req, &watcher[V]{id: correlationID, cb: cb, done: ctx.Done()})
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
	if s := e.snap.Load(); s != nil && !s.released { // a released value waits for its revalidation
		if req.MinIndex > 0 && k.opts.SupportsBlocking && !s.satisfies(req.MinIndex) && s.err == nil {
			w.version = s.version // the caller has this one; start after it
		}
		if w.version < s.version && !w.offerOneLocked(s) {
			w.removeLocked()
			e.mu.Unlock()
			return invalidf("Notify on kind %q: the channel is closed", k.name)
		}
	}
	e.ensureLoopLocked()
	e.kickLocked()
	e.mu.Unlock()
	k.c.watches.add(ctx, w)
	return nil
}

// watcher is one Notify or NotifyCallback. It is data, not a goroutine: the
// entry's loop delivers to it, and a queue of the deliverer when its
// channel is full (delivery.go).
type watcher[V any] struct {
	// Set before the watcher is attached, then read-only.
	e      *entry[V]
	id     string
	ch     chan<- UpdateEvent[V] // exactly one of ch and cb is set
	cb     func(UpdateEvent[V])
	done   <-chan struct{} // the watch's ctx.Done(); nil if it cannot be cancelled
	maxAge time.Duration   // polling interval, for polling kinds

	// Guarded by e.mu.
	pos     int           // index in e.watchers
	version uint64        // snapshot version last delivered
	q       *chanQueue[V] // ch's queue while parked
	parked  bool          // ch was full: its queue owns delivery until it drains
	sending bool          // ... and the queue's goroutine holds an event for it
	queued  bool          // queued or running on the callback pool
	// finalPending: Close ended the watch while its queue held a send;
	// the queue sends the final ErrClosed event once that send is over.
	finalPending bool

	// removed is set under e.mu when the watch ends; Cache.watches reads it
	// without that lock.
	removed atomic.Bool

	// Guarded by the deliverer's mu: links in q's list.
	next, prev *watcher[V]
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

// gone implements ctxWatch.
func (w *watcher[V]) gone() bool { return w.removed.Load() }

// remove implements ctxWatch: it ends the watch when its context is
// cancelled.
func (w *watcher[V]) remove() {
	e := w.e
	e.mu.Lock()
	w.removeLocked()
	e.mu.Unlock()
	e.k.c.enforceCapacity(nil) // the entry may be evicted now that no watch pins it
}

func (w *watcher[V]) removeLocked() {
	if w.removed.Load() {
		return
	}
	w.removed.Store(true)
	w.e.detachLocked(w)
	if w.parked {
		w.unparkLocked()
	}
}

// cancelled reports whether the watch's context was cancelled.
func (w *watcher[V]) cancelled() bool {
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}

// endClosedChanLocked ends a watch whose consumer closed its channel, as
// Consul's Notify does ("If the chan is closed, the notify loop will
// terminate"). A send on it panicked, and that panic was recovered.
func (e *entry[V]) endClosedChanLocked(w *watcher[V]) {
	if w.removed.Load() {
		return
	}
	w.removeLocked()
	e.k.c.watches.forget(w.done)
	e.k.m.closedChans.Inc()
	e.k.c.log.Warn("watchcache: Notify channel was closed by its consumer; the watch ends (cancel its context to stop a watch)",
		"kind", e.k.name, "key", e.key.key, "correlation_id", w.id)
}

// closeLocked ends the watch because the cache closes. A channel watcher
// gets a final ErrClosed event if its channel has room. A callback watcher
// gets none: Close waits for the callbacks it starts, and a callback that
// talks to the goroutine calling Close would deadlock it.
func (w *watcher[V]) closeLocked() {
	w.removed.Store(true)
	switch {
	case w.ch == nil:
	case w.sending:
		w.finalPending = true // after the pending send (chanQueue.finish)
	default:
		w.sendFinalLocked()
	}
}

// sendFinalLocked sends the watch's final ErrClosed event, if its channel
// has room.
func (w *watcher[V]) sendFinalLocked() {
	ev := UpdateEvent[V]{CorrelationID: w.id}
	if s := w.e.snap.Load(); s != nil {
		ev = w.e.eventLocked(s)
		ev.CorrelationID = w.id
	}
	ev.Err = ErrClosed
	trySend(w.ch, ev) // a full channel's consumer is not reading; it has its context
}

// trySend sends ev on ch if that does not block. A closed ch is reported,
// not a panic.
func trySend[V any](ch chan<- UpdateEvent[V], ev UpdateEvent[V]) (sent, shut bool) {
	defer func() {
		if r := recover(); r != nil {
			sent, shut = false, closedChanPanic(r)
		}
	}()
	select {
	case ch <- ev:
		return true, false
	default:
		return false, false
	}
}

// closedChanPanic reports whether r, a recovered panic, is the one a send
// on a closed channel raises. Any other panic is a bug and is raised again.
func closedChanPanic(r any) bool {
	if err, ok := r.(runtime.Error); ok && err.Error() == "send on closed channel" {
		return true
	}
	panic(r)
}

// eventLocked is the event that tells a watcher about s.
func (e *entry[V]) eventLocked(s *snapshot[V]) UpdateEvent[V] {
	ev := UpdateEvent[V]{Meta: e.meta(s, false), Err: s.err}
	if !s.fatal {
		ev.Result = s.res.Value // a fatal error withholds it, as Get does
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
	var shut []*watcher[V]
	for i := 0; ; {
		i = e.offerFromLocked(i, s, ev)
		if i == len(e.watchers) {
			break
		}
		shut = append(shut, e.watchers[i])
		i++
	}
	for _, w := range shut { // not in the loop: ending a watch reorders e.watchers
		e.endClosedChanLocked(w)
	}
}

// offerFromLocked offers s to the watchers from the i-th on. A send on a
// channel its consumer closed panics; the panic is recovered here, once per
// fan-out rather than once per send (a deferred recover per send costs a
// third of a fan-out), and the index of that watcher is returned.
// Otherwise it returns len(e.watchers).
func (e *entry[V]) offerFromLocked(i int, s *snapshot[V], ev UpdateEvent[V]) (stopped int) {
	defer func() {
		if r := recover(); r != nil && closedChanPanic(r) {
			stopped = i
		}
	}()
	for ; i < len(e.watchers); i++ {
		if w := e.watchers[i]; w.version < s.version {
			w.offerLocked(s, ev)
		}
	}
	return i
}

// offerOneLocked offers s to w alone, reporting false if w's channel is
// closed.
func (w *watcher[V]) offerOneLocked(s *snapshot[V]) (ok bool) {
	defer func() {
		if r := recover(); r != nil && closedChanPanic(r) {
			ok = false
		}
	}()
	w.offerLocked(s, w.e.eventLocked(s))
	return true
}

// offerLocked delivers ev (built from s) to w now if it can, or hands w to
// whoever delivers later: its channel's queue for a full channel, the
// callback pool for a callback. Either reads the entry's latest snapshot
// when it delivers, so w keeps no events: its mailbox is the entry itself.
// A send on a channel the consumer closed panics; callers recover.
func (w *watcher[V]) offerLocked(s *snapshot[V], ev UpdateEvent[V]) {
	if w.ch == nil {
		if !w.queued {
			w.queued = true
			w.e.k.c.callback.enqueue(w)
		}
		return
	}
	if w.parked {
		if w.sending {
			w.q.poke() // the event the queue holds for w is stale now
		}
		return
	}
	ev.CorrelationID = w.id
	select {
	case w.ch <- ev:
		w.version = s.version
	default:
		w.parkLocked()
	}
}

// runTask implements task: one call of w's callback with the
// entry's latest event, then again if it changed meanwhile. A watch whose
// context was cancelled gets no further call, even before Cache.watches
// has removed it.
func (w *watcher[V]) runTask() {
	e := w.e
	e.mu.Lock()
	if w.removed.Load() || w.cancelled() {
		w.queued = false
		e.mu.Unlock()
		return
	}
	s := e.snap.Load()
	w.version = s.version
	ev := e.eventLocked(s)
	ev.CorrelationID = w.id
	e.mu.Unlock()

	if w.cancelled() || w.removed.Load() { // cancelled, or the cache closed, meanwhile
		e.mu.Lock()
		w.queued = false
		e.mu.Unlock()
		return
	}
	e.k.c.callback.call(e.k.m, e.k.name, w.id, func() { w.cb(ev) })

	e.mu.Lock()
	defer e.mu.Unlock()
	if !w.removed.Load() && e.snap.Load().version > w.version {
		e.k.c.callback.enqueue(w) // still queued: run again with the latest
		return
	}
	w.queued = false
}
