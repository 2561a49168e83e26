package etcdkv

import (
	"context"
	"sync"
	"time"
)

// waitLink links the source's pending waits, whatever their value type.
type waitLink struct {
	prev, next *waitLink
	w          pendingWait
}

// pendingWait is what the ticker needs of a stateWait.
type pendingWait interface {
	identity() *identity
	timeoutAt() int64 // Unix nanoseconds
	timeout()
	authChanged()
	probeRevision(ctx context.Context, since time.Time) (int64, error)
	// probed tells the wait a probe's answer; a probe that started
	// (start) before its state last observed a revision or failed says
	// nothing to it. A zero start is a probe made for this wait alone.
	probed(rev int64, err error, start time.Time)
}

// waitList is the source's pending waits.
type waitList struct {
	mu   sync.Mutex
	head waitLink // sentinel
	n    int
}

func (l *waitList) add(x *waitLink) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.head.next == nil {
		l.head.next, l.head.prev = &l.head, &l.head
	}
	x.prev, x.next = l.head.prev, &l.head
	x.prev.next, l.head.prev = x, x
	l.n++
}

func (l *waitList) remove(x *waitLink) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if x.next == nil {
		return
	}
	x.prev.next, x.next.prev = x.next, x.prev
	x.prev, x.next = nil, nil
	l.n--
}

// snapshot returns the pending waits.
func (l *waitList) snapshot() []pendingWait {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]pendingWait, 0, l.n)
	for x := l.head.next; x != nil && x != &l.head; x = x.next {
		out = append(out, x.w)
	}
	return out
}

// tickWaits is the source's goroutine for its pending waits: every second
// it answers those whose Timeout passed, every ResetCheckInterval it
// probes etcd's revision once per identity for all of them, and when the
// auth epoch moves it has them confirm access.
func (s *Source) tickWaits() {
	tick := min(time.Second, s.cfg.ResetCheckInterval)
	t := time.NewTicker(tick)
	defer t.Stop()
	nextProbe := time.Now().Add(s.cfg.ResetCheckInterval)
	_, authChanged := s.auth.current()
	for {
		select {
		case <-s.stopJan:
			return
		case <-authChanged:
			_, authChanged = s.auth.current()
			for _, w := range s.waits.snapshot() {
				w.authChanged()
			}
			continue
		case now := <-t.C:
			waits := s.waits.snapshot()
			for _, w := range waits {
				if now.UnixNano() >= w.timeoutAt() {
					w.timeout()
				}
			}
			if now.Before(nextProbe) {
				continue
			}
			nextProbe = now.Add(s.cfg.ResetCheckInterval)
			s.probeWaits(waits)
		}
	}
}

// probeWaits asks etcd for its revision once per identity among waits,
// and tells each wait. A probe etcd did not answer fails them all; one
// that failed otherwise may be its entry's own (its key denied): then each
// wait of that identity probes for itself.
func (s *Source) probeWaits(waits []pendingWait) {
	byID := make(map[*identity][]pendingWait)
	for _, w := range waits {
		byID[w.identity()] = append(byID[w.identity()], w)
	}
	for _, group := range byID {
		queued := time.Now()
		s.work.run(func() {
			start := time.Now()
			if err := s.outage.since(queued); err != nil {
				for _, w := range group {
					w.probed(0, err, time.Time{})
				}
				return
			}
			rev, err := group[0].probeRevision(s.stopCtx, start)
			if err == nil {
				for _, w := range group {
					w.probed(rev, nil, start)
				}
				return
			}
			if s.outage.since(start) != nil {
				// etcd did not answer: the same goes for every wait.
				for _, w := range group {
					w.probed(0, err, time.Time{})
				}
				return
			}
			group[0].probed(0, err, time.Time{})
			for _, w := range group[1:] {
				s.work.run(func() {
					rev, err := w.probeRevision(s.stopCtx, time.Time{})
					w.probed(rev, err, time.Time{})
				})
			}
		})
	}
}
