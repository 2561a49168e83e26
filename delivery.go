package watchcache

import "sync"

// This file delivers to channel watchers whose channel was full when their
// entry fanned out ("parked" watchers).
//
// The fan-out never blocks: it tries one non-blocking send per watcher. A
// watcher whose send would block joins the queue of its channel, and a
// channel is one send target however many watches share it (Consul's
// proxycfg shares one channel between thousands of watches). Each queue
// has one goroutine, which exists only while the queue is not empty: it
// waits on that channel alone, sends the head watcher the latest event of
// its entry, and moves on. Delivery therefore costs O(1) per watcher per
// change whatever the mix of slow, late, unbuffered and shared channels,
// and watches sharing a channel are served in the order the channel frees
// up. At rest no such goroutine exists.
//
// A parked watcher keeps no events, only its place in the queue: when its
// turn comes the queue reads the entry's latest snapshot, and a publish
// that happens while the queue waits to send to it replaces the pending
// send (the queue's wake channel), so its next receive is always the
// latest value.

// deliverer owns the queues of the cache's blocked channels.
type deliverer struct {
	c *Cache

	// mu protects queues and stopped, and every queue's list: its head and
	// tail and the next and prev links of its watchers. It is taken under entry.mu and never held while
	// taking one.
	mu      sync.Mutex
	queues  map[any]any // channel (chan<- UpdateEvent[V]) -> *chanQueue[V]
	stopped bool        // the cache closed: nothing parks any more
}

func (d *deliverer) init(c *Cache) {
	d.c = c
	d.queues = make(map[any]any)
}

// stop makes the deliverer refuse new parks and wakes every queue's
// goroutine, which then ends.
func (d *deliverer) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopped = true
	for _, q := range d.queues {
		q.(interface{ poke() }).poke()
	}
	clear(d.queues)
}

// chanQueue is the parked watchers of one channel, in the order they
// parked, and the goroutine that sends to them.
type chanQueue[V any] struct {
	d  *deliverer
	ch chan<- UpdateEvent[V]

	// wake (capacity 1, never closed) tells the goroutine that the send it
	// waits on is stale: its watcher's entry published a newer snapshot,
	// the watch ended, or the cache closes. Senders never block on it. The
	// goroutine waits on ch and wake alone: selecting on channels that
	// every queue shares (the cache's done, a context's) would make their
	// locks the bottleneck when thousands of queues wake together.
	wake chan struct{}

	// Guarded by d.mu: the waiting watchers, linked by next and prev. The
	// watcher being sent to is out of the list (its sending flag is set).
	head, tail *watcher[V]
}

// parkLocked hands w, whose send would have blocked, to its channel's
// queue, starting the queue if the channel had none. w.e.mu is held.
func (w *watcher[V]) parkLocked() {
	d := &w.e.k.c.deliver
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped {
		return // Close gives every watcher its final event
	}
	q, _ := d.queues[w.ch].(*chanQueue[V])
	if q == nil {
		q = &chanQueue[V]{d: d, ch: w.ch, wake: make(chan struct{}, 1)}
		// Started under d.mu: the goroutine takes d.mu first, so it finds
		// w queued.
		if !d.c.goTracked(q.run) {
			return // Close is waiting for the cache's goroutines
		}
		d.queues[w.ch] = q
	}
	q.pushLocked(w)
	w.q, w.parked = q, true
}

// unparkLocked takes w out of its queue because its watch ended. w.e.mu is
// held.
func (w *watcher[V]) unparkLocked() {
	q := w.q
	if q == nil {
		return
	}
	if w.sending {
		q.poke() // the goroutine drops w when it wakes
		return
	}
	q.d.mu.Lock()
	q.unlinkLocked(w)
	q.d.mu.Unlock()
	w.q, w.parked = nil, false
}

// poke tells the queue's goroutine that its pending send is stale.
func (q *chanQueue[V]) poke() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *chanQueue[V]) pushLocked(w *watcher[V]) {
	w.prev, w.next = q.tail, nil
	if q.tail != nil {
		q.tail.next = w
	} else {
		q.head = w
	}
	q.tail = w
}

func (q *chanQueue[V]) pushFrontLocked(w *watcher[V]) {
	w.prev, w.next = nil, q.head
	if q.head != nil {
		q.head.prev = w
	} else {
		q.tail = w
	}
	q.head = w
}

func (q *chanQueue[V]) unlinkLocked(w *watcher[V]) {
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		q.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		q.tail = w.prev
	}
	w.prev, w.next = nil, nil
}

// sendResult is how one blocking send of a queue ended.
type sendResult int

const (
	sendDone      sendResult = iota // the consumer received the event
	sendStale                       // a newer snapshot, the watch ended or the cache closes
	sendCancelled                   // the watch's context was cancelled before the send
	sendChanShut                    // the consumer closed the channel
)

// run is the queue's goroutine: it sends each waiting watcher its entry's
// latest event, in order, and ends when no watcher waits.
func (q *chanQueue[V]) run() {
	q.d.mu.Lock()
	w := q.nextLocked()
	q.d.mu.Unlock()
	for w != nil {
		ev, version, ok := q.take(w)
		if !ok { // w left the queue meanwhile
			q.d.mu.Lock()
			w = q.nextLocked()
			q.d.mu.Unlock()
			continue
		}
		r := sendCancelled
		if !w.cancelled() {
			r = q.send(ev)
		}
		w = q.finish(w, version, r)
	}
}

// nextLocked returns the watcher to send to next, or nil when the queue is
// empty or the cache closes; the queue is then retired, in the same
// critical section, so that a watcher parking later makes a new one.
func (q *chanQueue[V]) nextLocked() *watcher[V] {
	if q.head != nil && !q.d.stopped {
		return q.head
	}
	if cur, _ := q.d.queues[q.ch].(*chanQueue[V]); cur == q {
		delete(q.d.queues, q.ch)
	}
	return nil
}

// take makes w, found at the head, the watcher being sent to, and returns
// its entry's latest event. ok is false if w is no longer at the head.
func (q *chanQueue[V]) take(w *watcher[V]) (ev UpdateEvent[V], version uint64, ok bool) {
	e := w.e
	e.mu.Lock()
	defer e.mu.Unlock()
	q.d.mu.Lock()
	if q.head != w || q.d.stopped || w.removed.Load() {
		q.d.mu.Unlock()
		return ev, 0, false
	}
	q.unlinkLocked(w)
	q.d.mu.Unlock()
	w.sending = true
	s := e.snap.Load()
	ev = e.eventLocked(s)
	ev.CorrelationID = w.id
	return ev, s.version, true
}

// send waits until the channel takes ev, or something makes the send moot.
// A closed channel makes the send panic; that ends the watch, not the
// process.
func (q *chanQueue[V]) send(ev UpdateEvent[V]) (r sendResult) {
	defer func() {
		if p := recover(); p != nil && closedChanPanic(p) {
			r = sendChanShut
		}
	}()
	select {
	case q.ch <- ev:
		return sendDone
	case <-q.wake:
		return sendStale
	}
}

// finish records how the send of version to w ended and decides w's next
// place: back at the head (its event was stale), at the tail (it got one
// event and a newer one is waiting), or out of the queue. It returns the
// watcher to send to next, or nil when the goroutine should end.
func (q *chanQueue[V]) finish(w *watcher[V], version uint64, r sendResult) *watcher[V] {
	e := w.e
	e.mu.Lock()
	w.sending = false
	q.d.mu.Lock()
	if r == sendDone {
		w.version = max(w.version, version)
	}
	requeue := !w.removed.Load() && r != sendCancelled && r != sendChanShut &&
		e.snap.Load().version > w.version
	switch {
	case requeue && r == sendStale:
		q.pushFrontLocked(w) // it waited longest: retry at once with the latest
	case requeue:
		q.pushLocked(w)
	default:
		w.q, w.parked = nil, false
	}
	next := q.nextLocked()
	q.d.mu.Unlock()
	switch {
	case r == sendChanShut:
		e.endClosedChanLocked(w)
	case w.finalPending:
		// Close ended the watch while this send was pending: its final
		// event goes after it, never before.
		w.finalPending = false
		w.sendFinalLocked()
	}
	e.mu.Unlock()
	return next
}
