package fakeupstream

import (
	"container/heap"
	"context"
	"sync/atomic"
	"time"

	"github.com/watchcache/watchcache"
)

// Pusher is the Source in push mode: it implements watchcache.AsyncFetcher,
// so the cache's entries hold no goroutine while they wait. A fetch that
// waits is a small record in its key's list; Set (and Fail, FailNext,
// Release) answers it from the caller's goroutine, one timer per Source
// answers the fetches whose Timeout passed, and ctx's cancellation answers
// with the context's error. Answers, errors, hangs, panics, counts and
// Report behave as in pull mode.
type Pusher struct{ *Source }

// Push returns s in push mode. Both modes may be used on one Source.
func (s *Source) Push() Pusher { return Pusher{s} }

// push is one push-mode fetch that has not been answered.
type push struct {
	s        *Source
	k        *key
	minIndex uint64
	done     func(watchcache.FetchResult[string], error)
	answered atomic.Bool

	// Under Source.mu:
	deadline int64       // when its Timeout passes (Unix nanoseconds); 0 if it has none
	heapIdx  int         // in Source.deadlines; -1 when not there
	timedOut bool        // answer with the value, changed or not
	listed   bool        // in its key's list
	stopCtx  func() bool // ends the watch on its context
}

// answer calls done once, and stops what could answer it later.
func (p *push) answer(res watchcache.FetchResult[string], err error) bool {
	if !p.answered.CompareAndSwap(false, true) {
		return false
	}
	s := p.s
	s.mu.Lock()
	s.inFlight--
	stopCtx := p.stopCtx
	if p.heapIdx >= 0 {
		heap.Remove(&s.deadlines, p.heapIdx)
		if len(s.deadlines) == 0 {
			s.deadlineTimer.Stop() // it would keep the answered fetches' caches alive
		}
	}
	s.mu.Unlock()
	if stopCtx != nil {
		stopCtx()
	}
	p.done(res, err)
	return true
}

// FetchAsync implements watchcache.AsyncFetcher[string].
func (p Pusher) FetchAsync(ctx context.Context, opts watchcache.FetchOptions[string], req watchcache.Request, done func(watchcache.FetchResult[string], error)) {
	s := p.Source
	s.mu.Lock()
	s.calls++
	k := s.keyLocked(req.Key)
	k.calls++
	report, panicV := s.fetched, k.panicV
	if panicV == nil {
		s.inFlight++
	}
	s.mu.Unlock()
	if panicV != nil {
		panic(panicV)
	}
	w := &push{s: s, k: k, minIndex: opts.MinIndex, done: done, heapIdx: -1}
	if opts.MinIndex > 0 && opts.Timeout > 0 {
		w.deadline = time.Now().Add(opts.Timeout).UnixNano()
	}
	if report == nil {
		s.startPush(ctx, w)
		return
	}
	// As in pull mode, the fetch is reported before it is answered; the
	// send blocks until the test takes it, or ctx ends.
	go func() {
		select {
		case report <- callOf(opts, req):
			s.startPush(ctx, w)
		case <-ctx.Done():
			w.answer(watchcache.FetchResult[string]{}, ctx.Err())
		}
	}()
}

// startPush arms w's deadline and context and answers it if it can be.
func (s *Source) startPush(ctx context.Context, w *push) {
	stop := afterFunc(ctx, func() { w.answer(watchcache.FetchResult[string]{}, ctx.Err()) })
	s.mu.Lock()
	w.stopCtx = stop
	if w.deadline != 0 && !w.answered.Load() {
		heap.Push(&s.deadlines, w)
		if s.deadlines[0] == w {
			s.armDeadlineLocked()
		}
	}
	s.mu.Unlock()
	s.runPushes([]*push{w})
}

// armDeadlineLocked sets the Source's timer to the earliest deadline.
func (s *Source) armDeadlineLocked() {
	if len(s.deadlines) == 0 {
		return
	}
	d := time.Until(time.Unix(0, s.deadlines[0].deadline))
	if s.deadlineTimer == nil {
		s.deadlineTimer = time.AfterFunc(d, s.deadlinesPassed)
	} else {
		s.deadlineTimer.Reset(d)
	}
}

// deadlinesPassed answers the fetches whose Timeout passed.
func (s *Source) deadlinesPassed() {
	var due []*push
	s.mu.Lock()
	now := time.Now().UnixNano()
	for len(s.deadlines) > 0 && s.deadlines[0].deadline <= now {
		w := heap.Pop(&s.deadlines).(*push)
		w.timedOut = true
		due = append(due, w)
	}
	s.armDeadlineLocked()
	s.mu.Unlock()
	s.runPushes(due)
}

// runPushes answers the fetches in ps that can be answered now and puts
// the others back in their key's list.
func (s *Source) runPushes(ps []*push) {
	type answer struct {
		p   *push
		res watchcache.FetchResult[string]
		err error
	}
	var answers []answer
	s.mu.Lock()
	for _, p := range ps {
		if p.answered.Load() {
			continue
		}
		k := p.k
		if k.hang != nil { // a stuck upstream: nothing but ctx answers
			k.addPushLocked(p)
			continue
		}
		res, err, ready := k.answerLocked(p.minIndex)
		if ready || p.timedOut {
			answers = append(answers, answer{p, res, err})
			continue
		}
		k.addPushLocked(p)
	}
	s.mu.Unlock()
	for _, a := range answers {
		a.p.answer(a.res, a.err)
	}
}

// addPushLocked queues p on k, first dropping fetches that their context
// answered if the list is full, so that a key that never changes does not
// keep them all.
func (k *key) addPushLocked(p *push) {
	if p.listed {
		return // waiting there already (its deadline passed while the key hangs)
	}
	p.listed = true
	if len(k.pushes) == cap(k.pushes) {
		live := k.pushes[:0]
		for _, q := range k.pushes {
			if !q.answered.Load() {
				live = append(live, q)
			} else {
				q.listed = false
			}
		}
		clear(k.pushes[len(live):])
		k.pushes = live
	}
	k.pushes = append(k.pushes, p)
}

// afterFunc is context.AfterFunc, through the context's own AfterFunc
// method when it has one (the cache's fetch contexts do), which costs less.
func afterFunc(ctx context.Context, f func()) (stop func() bool) {
	if a, ok := ctx.(interface{ AfterFunc(func()) func() bool }); ok {
		return a.AfterFunc(f)
	}
	return context.AfterFunc(ctx, f)
}

// pushHeap orders waiting push-mode fetches by deadline.
type pushHeap []*push

func (h pushHeap) Len() int           { return len(h) }
func (h pushHeap) Less(i, j int) bool { return h[i].deadline < h[j].deadline }
func (h pushHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx, h[j].heapIdx = i, j
}
func (h *pushHeap) Push(x any) {
	p := x.(*push)
	p.heapIdx = len(*h)
	*h = append(*h, p)
}
func (h *pushHeap) Pop() any {
	old := *h
	p := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	p.heapIdx = -1
	return p
}
