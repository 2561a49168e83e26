package watchcache

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"sync"
	"time"
)

// parkedWatcher is a channel watcher whose last send would have blocked.
type parkedWatcher interface {
	sendCase() (c reflect.SelectCase, version uint64, ok bool)
	sent(version uint64) (stillParked bool)
}

// maxSelectCases keeps reflect.Select under its limit of 65536 cases.
const maxSelectCases = 1 << 15

// deliverer sends to channel watchers that fell behind. Like etcd's
// watchable store with its victims, the fan-out never blocks on a slow
// consumer: it parks the watcher here instead. One goroutine, started when
// the first watcher parks and gone when none is left, waits on every parked
// channel at once and sends each the latest event of its entry.
type deliverer struct {
	c *Cache

	mu      sync.Mutex // protects the fields below; a leaf lock
	parked  map[parkedWatcher]struct{}
	running bool
	stopped bool

	// wake (capacity 1, never closed) tells the goroutine the parked set
	// changed. Senders never block on it.
	wake chan struct{}
}

func (d *deliverer) init(c *Cache) {
	d.c = c
	d.parked = make(map[parkedWatcher]struct{})
	d.wake = make(chan struct{}, 1)
}

// park hands w to the deliverer. It may be called with w's entry locked.
func (d *deliverer) park(w parkedWatcher) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped {
		return
	}
	d.parked[w] = struct{}{}
	if d.running {
		d.signal()
		return
	}
	d.running = d.c.goTracked(d.run)
}

// unpark forgets w (its watch ended).
func (d *deliverer) unpark(w parkedWatcher) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.parked, w)
	d.signal()
}

func (d *deliverer) signal() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

func (d *deliverer) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopped = true
	clear(d.parked)
	d.signal()
}

// run is the deliverer's goroutine.
func (d *deliverer) run() {
	var (
		ws    []parkedWatcher
		vers  []uint64
		cases []reflect.SelectCase
	)
	rotate := time.NewTimer(time.Hour)
	defer rotate.Stop()
	for {
		d.mu.Lock()
		if d.stopped || len(d.parked) == 0 {
			d.running = false
			d.mu.Unlock()
			return
		}
		ws = ws[:0]
		for w := range d.parked {
			ws = append(ws, w)
		}
		d.mu.Unlock()

		// Past the select limit, wait on a random window and move it on
		// now and then, so that every parked watcher gets its turn.
		windowed := len(ws) > maxSelectCases
		if windowed {
			start := rand.IntN(len(ws) - maxSelectCases + 1)
			ws = ws[start : start+maxSelectCases]
			rotate.Reset(10 * time.Millisecond)
		}
		cases = append(cases[:0],
			reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(d.wake)},
			reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(d.c.done)},
			reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(rotate.C)},
		)
		const fixed = 3
		vers = vers[:0]
		live := ws[:0]
		for _, w := range ws {
			c, v, ok := w.sendCase()
			if !ok {
				d.unpark(w)
				continue
			}
			live = append(live, w)
			vers = append(vers, v)
			cases = append(cases, c)
		}
		if len(live) == 0 {
			continue
		}
		chosen, _, _ := reflect.Select(cases)
		if windowed {
			rotate.Stop()
		}
		if chosen < fixed {
			continue // woken, closed (the next round sees stopped) or rotated
		}
		if w := live[chosen-fixed]; !w.sent(vers[chosen-fixed]) {
			d.unpark(w)
		}
	}
}

// callbackTask is a watcher whose callback is due.
type callbackTask interface {
	runCallback()
}

// callbackPool runs NotifyCallback callbacks on at most max goroutines,
// which exist only while callbacks are queued. A watcher is in the queue
// at most once (its queued flag), so the queue is bounded by the number of
// callback watchers and one watcher's calls never overlap.
type callbackPool struct {
	c   *Cache
	max int

	mu      sync.Mutex // protects the fields below; a leaf lock
	queue   []callbackTask
	workers int
}

func (p *callbackPool) init(c *Cache, max int) {
	p.c, p.max = c, max
}

// enqueue schedules t. It may be called with t's entry locked.
func (p *callbackPool) enqueue(t callbackTask) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.queue = append(p.queue, t)
	if p.workers < p.max && p.c.goTracked(p.work) {
		p.workers++
	}
	// With no worker and none allowed to start, Close is already waiting
	// for the last workers to end: the task is dropped with the cache.
	if p.workers == 0 {
		p.queue = p.queue[:0]
	}
}

// work is a worker goroutine: it runs queued callbacks until none is left.
func (p *callbackPool) work() {
	for {
		p.mu.Lock()
		if len(p.queue) == 0 {
			p.workers--
			p.mu.Unlock()
			return
		}
		t := p.queue[0]
		p.queue[0] = nil
		p.queue = p.queue[1:]
		p.mu.Unlock()
		t.runCallback()
	}
}

// call runs one callback, turning a panic into a logged error.
func (p *callbackPool) call(m *kindMetrics, kind, id string, f func()) {
	defer func() {
		if r := recover(); r != nil {
			m.callbackPanics.Inc()
			p.c.log.Error("watchcache: NotifyCallback callback panicked",
				"kind", kind, "correlation_id", id, "error", fmt.Errorf("%w: %v", ErrCallbackPanic, r))
		}
	}()
	f()
}
