package etcdkv

import (
	"context"
	"sync"
	"time"
)

// revisionProbe learns the store's current revision with a linearizable
// read, for entries that wait on a watch: a revision lower than one the
// entry has seen means the store was restored or rebuilt (its watch,
// waiting for a revision that is now in the future, would stay silent), and
// a failed read means etcd is unreachable (the client's watch retries
// silently). Entries of one identity share probes, so the cost is about one
// read per identity and Config.ResetCheckInterval, whatever the number of
// entries.
//
// A probe answers a check only if it started after the check's since: a
// linearizable read that starts after a revision was observed returns that
// revision or a higher one, unless the store went backwards.
type revisionProbe struct {
	mu   sync.Mutex // protects the fields below
	last *probeCall // latest successful probe; nil before the first
	cur  *probeCall // probe in flight; nil when none
}

// probeCall is one probe. start is set before it is shared; rev and err
// are written before done is closed and only read after.
type probeCall struct {
	start time.Time
	done  chan struct{}
	rev   int64
	err   error
}

// check returns a store revision read after since, running read to get
// one unless a probe that started after since succeeded or is in flight.
// Only successes are shared: a failure may be another entry's (its context
// ended, or its key was denied), so the caller then reads for itself.
func (p *revisionProbe) check(ctx context.Context, since time.Time, read func(context.Context) (int64, error)) (int64, error) {
	p.mu.Lock()
	if l := p.last; l != nil && !l.start.Before(since) {
		p.mu.Unlock()
		return l.rev, nil
	}
	if c := p.cur; c != nil && !c.start.Before(since) {
		p.mu.Unlock()
		select {
		case <-c.done:
			if c.err == nil {
				return c.rev, nil
			}
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		return read(ctx)
	}
	c := &probeCall{start: time.Now(), done: make(chan struct{})}
	p.cur = c
	p.mu.Unlock()

	c.rev, c.err = read(ctx)

	p.mu.Lock()
	if p.cur == c {
		p.cur = nil
	}
	if c.err == nil && (p.last == nil || c.start.After(p.last.start)) {
		p.last = c
	}
	p.mu.Unlock()
	close(c.done)
	return c.rev, c.err
}
