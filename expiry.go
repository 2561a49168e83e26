package watchcache

import (
	"container/heap"
	"sync"
	"time"
)

// expiring is an entry, of any kind, as the expiry loop sees it.
type expiring interface {
	// expire evicts the entry if it is idle and its deadline passed, or
	// returns when to look again (requeue true).
	expire(now time.Time) (next time.Time, requeue bool)
	// heapIndex is where the entry sits in the heap, -1 when it is not
	// there, evictedIndex once it was evicted. Only the expiry, under its
	// mu, reads or writes it.
	heapIndex() *int32
}

// expiry evicts entries unused for their kind's LastGetTTL.
//
// Hits never touch it: an entry is queued with the time of its next check,
// and each check reads and clears the flag hits set (entry.expire).
// Entries with watchers or waiting Gets are dropped from the queue and
// queued again when they become idle (entry.updateBusyLocked).
type expiry struct {
	c *Cache

	mu sync.Mutex // protects h; a leaf lock
	h  expHeap

	// kick (capacity 1, never closed) tells the loop the earliest
	// deadline moved earlier. Senders never block on it.
	kick chan struct{}
}

func (x *expiry) init(c *Cache) {
	x.c = c
	x.kick = make(chan struct{}, 1)
}

// schedule queues e to be looked at at. It may be called with e locked.
func (x *expiry) schedule(e expiring, at time.Time) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if *e.heapIndex() == evictedIndex {
		return // evicted meanwhile (the expiry loop requeues after expire unlocked the entry)
	}
	heap.Push(&x.h, expItem{at: monoOf(at), e: e})
	if x.h[0].e == e {
		select {
		case x.kick <- struct{}{}:
		default:
		}
	}
}

// unschedule takes e out of the queue, so that an entry evicted for
// capacity is freed at once rather than at its next check, which can be
// hours away. It may be called with e locked.
func (x *expiry) unschedule(e expiring) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if i := int(*e.heapIndex()); i >= 0 {
		heap.Remove(&x.h, i)
	}
	*e.heapIndex() = evictedIndex // and never again
}

// evictedIndex is the heap index of an entry that was evicted: schedule
// refuses it.
const evictedIndex = -2

// run is the expiry goroutine; it ends when the cache closes.
func (x *expiry) run() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var due []expiring
	for {
		now := time.Now()
		monoNow := monoOf(now)
		x.mu.Lock()
		due = due[:0]
		for len(x.h) > 0 && x.h[0].at <= monoNow {
			due = append(due, heap.Pop(&x.h).(expItem).e)
		}
		wait := time.Duration(-1)
		if len(x.h) > 0 {
			wait = time.Duration(x.h[0].at - monoNow)
		}
		x.mu.Unlock()

		for i, e := range due {
			if next, again := e.expire(now); again {
				x.schedule(e, next)
			}
			due[i] = nil
		}
		if len(due) > 0 {
			continue // deadlines moved: look again before sleeping
		}
		if wait >= 0 {
			timer.Reset(wait)
		} else {
			timer.Stop()
		}
		select {
		case <-timer.C:
		case <-x.kick:
		case <-x.c.done:
			return
		}
	}
}

type expItem struct {
	at mono
	e  expiring
}

// expHeap is a min-heap of deadlines for container/heap that keeps each
// entry's heapIndex up to date.
type expHeap []expItem

func (h expHeap) Len() int           { return len(h) }
func (h expHeap) Less(i, j int) bool { return h[i].at < h[j].at }
func (h expHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	*h[i].e.heapIndex() = int32(i)
	*h[j].e.heapIndex() = int32(j)
}

func (h *expHeap) Push(x any) {
	it := x.(expItem)
	*it.e.heapIndex() = int32(len(*h))
	*h = append(*h, it)
}

func (h *expHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = expItem{}
	*h = old[:len(old)-1]
	*it.e.heapIndex() = -1
	return it
}
