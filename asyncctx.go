package watchcache

import (
	"context"
	"sync"
	"time"
)

// fetchContext is the context of an async fetch. A context.WithDeadline
// under the cache's base context costs a timer, a channel and an entry in
// the base's child map for every waiting entry; this one costs a few
// words until something asks for its channel. The entry cancels it
// (fetchCancel), on eviction and on Close too, since Close retires every
// entry. Its deadline (Timeout and a grace, as for pull fetches) is kept
// in the cache's one heap of deadlines (fetchDeadlines), whose one timer
// cancels a fetch its source left hanging, with DeadlineExceeded.
//
// It implements AfterFunc, so context.AfterFunc and contexts derived from
// it (context.WithCancel, WithTimeout) register a function here instead of
// starting a goroutine to wait on Done. A source that calls its AfterFunc
// method itself (see AsyncFetcher) spares even the channel.
type fetchContext struct {
	c *Cache // its base context answers Value

	deadline int64 // Unix nanoseconds; set before the fetch starts
	heapIdx  int32 // in Cache.deadlines; -1 when not there. Guarded by its mu

	mu        sync.Mutex
	cancelled bool
	expired   bool          // cancelled because its deadline passed
	done      chan struct{} // made by the first Done
	first     bool          // fn was registered (its slot is never reused)
	fn        func()        // the first function registered by AfterFunc; nil once stopped or run
	funcs     []*func()     // the others
}

// stopFirst stops the first function AfterFunc registered.
func (c *fetchContext) stopFirst() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	ok := c.fn != nil
	c.fn = nil
	return ok
}

func (c *fetchContext) Deadline() (time.Time, bool) { return time.Unix(0, c.deadline), true }

func (c *fetchContext) Value(key any) any { return c.c.base.Value(key) }

func (c *fetchContext) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.expired:
		return context.DeadlineExceeded
	case c.cancelled:
		return context.Canceled
	}
	return nil
}

func (c *fetchContext) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		c.done = make(chan struct{})
		if c.cancelled {
			close(c.done)
		}
	}
	return c.done
}

// AfterFunc runs f in its own goroutine once c is cancelled (at once if it
// is). The returned stop reports whether it kept f from running.
func (c *fetchContext) AfterFunc(f func()) (stop func() bool) {
	c.mu.Lock()
	if c.cancelled {
		c.mu.Unlock()
		go f()
		return func() bool { return false }
	}
	if !c.first {
		// Most fetches register one function: it needs no slice.
		c.first, c.fn = true, f
		c.mu.Unlock()
		return c.stopFirst
	}
	key := &f
	c.funcs = append(c.funcs, key)
	c.mu.Unlock()
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for i, g := range c.funcs {
			if g == key {
				c.funcs = append(c.funcs[:i], c.funcs[i+1:]...)
				return true
			}
		}
		return false
	}
}

// cancel cancels c: its Err is context.Canceled from then on.
func (c *fetchContext) cancel() { c.end(false) }

// end cancels c, as expired or not, and takes it out of the deadlines.
func (c *fetchContext) end(expired bool) {
	c.mu.Lock()
	if c.cancelled {
		c.mu.Unlock()
		return
	}
	c.cancelled, c.expired = true, expired
	if c.done != nil {
		close(c.done)
	}
	fn, funcs := c.fn, c.funcs
	c.fn, c.funcs = nil, nil
	c.mu.Unlock()
	c.c.deadlines.remove(c) // after cancelled is set: see add
	if fn != nil {
		go fn()
	}
	for _, f := range funcs {
		go (*f)()
	}
}

// fetchDeadlines cancels async fetches that outlive their deadline: a heap
// of their contexts by deadline and one timer for the earliest.
type fetchDeadlines struct {
	mu sync.Mutex // a leaf lock
	h  []*fetchContext
	t  *time.Timer
}

// add puts c in the heap; c.deadline is set. A c cancelled meanwhile
// (before or during add) is taken out again.
func (d *fetchDeadlines) add(c *fetchContext) {
	d.mu.Lock()
	c.heapIdx = int32(len(d.h))
	d.h = append(d.h, c)
	d.up(int(c.heapIdx))
	if d.h[0] == c {
		d.armLocked()
	}
	d.mu.Unlock()
	c.mu.Lock()
	cancelled := c.cancelled
	c.mu.Unlock()
	if cancelled {
		d.remove(c)
	}
}

// remove takes c out of the heap, if it is there.
func (d *fetchDeadlines) remove(c *fetchContext) {
	d.mu.Lock()
	defer d.mu.Unlock()
	i := int(c.heapIdx)
	if i < 0 {
		return
	}
	last := len(d.h) - 1
	d.swap(i, last)
	d.h[last] = nil
	d.h = d.h[:last]
	c.heapIdx = -1
	if i < last {
		d.down(i)
		d.up(i)
	}
	if len(d.h) == 0 {
		d.h = nil
		if d.t != nil {
			d.t.Stop()
		}
	}
}

func (d *fetchDeadlines) armLocked() {
	wait := time.Until(time.Unix(0, d.h[0].deadline))
	if d.t == nil {
		d.t = time.AfterFunc(wait, d.fire)
	} else {
		d.t.Reset(wait)
	}
}

// fire cancels the fetches whose deadline passed.
func (d *fetchDeadlines) fire() {
	now := time.Now().UnixNano()
	var due []*fetchContext
	d.mu.Lock()
	for _, c := range d.h {
		if c.deadline <= now {
			due = append(due, c)
		}
	}
	if len(d.h) > len(due) {
		// Re-armed below once the due ones are gone (end removes them).
		defer func() {
			d.mu.Lock()
			if len(d.h) > 0 {
				d.armLocked()
			}
			d.mu.Unlock()
		}()
	}
	d.mu.Unlock()
	for _, c := range due {
		c.end(true)
	}
}

func (d *fetchDeadlines) less(i, j int) bool { return d.h[i].deadline < d.h[j].deadline }

func (d *fetchDeadlines) swap(i, j int) {
	d.h[i], d.h[j] = d.h[j], d.h[i]
	d.h[i].heapIdx, d.h[j].heapIdx = int32(i), int32(j)
}

func (d *fetchDeadlines) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !d.less(i, p) {
			return
		}
		d.swap(i, p)
		i = p
	}
}

func (d *fetchDeadlines) down(i int) {
	for {
		l := 2*i + 1
		if l >= len(d.h) {
			return
		}
		m := l
		if r := l + 1; r < len(d.h) && d.less(r, l) {
			m = r
		}
		if !d.less(m, i) {
			return
		}
		d.swap(i, m)
		i = m
	}
}
