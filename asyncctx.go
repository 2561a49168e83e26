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
// entry. It has no deadline: an AsyncFetcher answers by opts.Timeout.
//
// It implements AfterFunc, so context.AfterFunc and contexts derived from
// it (context.WithCancel, WithTimeout) register a function here instead of
// starting a goroutine to wait on Done. A source that calls its AfterFunc
// method itself (see AsyncFetcher) spares even the channel.
type fetchContext struct {
	c *Cache // its base context answers Value

	mu        sync.Mutex
	cancelled bool
	done      chan struct{} // made by the first Done
	funcs     []*func()     // registered by AfterFunc
}

// cancel cancels c: its Err is context.Canceled from then on.

func (c *fetchContext) Deadline() (time.Time, bool) { return time.Time{}, false }

func (c *fetchContext) Value(key any) any { return c.c.base.Value(key) }

func (c *fetchContext) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cancelled {
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

func (c *fetchContext) cancel() {
	c.mu.Lock()
	if c.cancelled {
		c.mu.Unlock()
		return
	}
	c.cancelled = true
	if c.done != nil {
		close(c.done)
	}
	funcs := c.funcs
	c.funcs = nil
	c.mu.Unlock()
	for _, f := range funcs {
		go (*f)()
	}
}
