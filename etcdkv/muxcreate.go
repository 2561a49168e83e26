package etcdkv

import (
	"context"
	"errors"
	"fmt"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// Creating a watch on a stream: see the notes in mux.go.

// watch starts a watch of sp from revision from, with id's token, and
// waits (within ctx) until etcd confirmed it. registered is called with the
// watch before its create is sent, so the sink knows it before any
// response can come.
//
// Opening a stream and etcd's answer to the create are each bounded by
// RequestTimeout; a create deferred behind another (see the notes in mux.go)
// starts its timeout when it is queued, not while it waits its turn, and
// goes on another stream if the one ahead of it is never answered
// (headTimedOut).
func (s *Source) watch(ctx context.Context, id *identity, sp spec, from int64, sink watchSink, registered func(*muxWatch)) (*muxWatch, error) {
	for range 3 {
		octx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
		m, err := s.muxFor(octx, id)
		cancel()
		if err != nil {
			if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
				err = errCreateTimeout
			}
			return nil, err
		}
		w, sent, err := m.create(sp, from, sink, registered)
		if err == nil {
			err = s.awaitCreated(ctx, w, sent)
		}
		if errors.Is(err, errMuxClosed) {
			continue // closed, or draining, before the create was sent: use another
		}
		if err != nil {
			return nil, err
		}
		return w, nil
	}
	return nil, errMuxClosed
}

// awaitCreated waits for etcd's answer to w's create, for RequestTimeout
// from when it is queued (sent closes then, if it was deferred).
func (s *Source) awaitCreated(ctx context.Context, w *muxWatch, sent <-chan struct{}) error {
	d := s.cfg.RequestTimeout
	timer := time.NewTimer(d)
	defer timer.Stop()
	timeout := timer.C
	if sent != nil {
		timeout = nil // from when it is queued
	}
	for {
		select {
		case err := <-w.created:
			if err != nil {
				return err
			}
			w.created = nil // answered: the only send is done; a watch is kept for long
			return nil
		case <-sent:
			sent = nil
			timer.Reset(d)
			timeout = timer.C
		case <-timeout:
			w.cancelWatch()
			return errCreateTimeout
		case <-ctx.Done():
			w.cancelWatch()
			return ctx.Err()
		}
	}
}

// errCreateTimeout is a watch that etcd did not confirm within the
// request timeout.
var errCreateTimeout = fmt.Errorf("etcdkv: watch not confirmed in time: %w", context.DeadlineExceeded)

// create queues the create request of a watch, or defers it (see the
// notes in mux.go) and returns a channel closed when it is queued. A cancel
// while registered runs (the entry's state closing) keeps its create from
// being queued.
func (m *watchMux) create(sp spec, from int64, sink watchSink, registered func(*muxWatch)) (*muxWatch, <-chan struct{}, error) {
	m.mu.Lock()
	if m.closed || m.draining {
		m.mu.Unlock()
		return nil, nil, errMuxClosed
	}
	w := &muxWatch{m: m, sink: sink, created: make(chan error, 1)}
	m.mu.Unlock()
	registered(w) // before etcd can answer
	cr := &pb.WatchCreateRequest{Key: []byte(sp.start()), StartRevision: from}
	if sp.isRange() {
		cr.RangeEnd = []byte(sp.end())
	}
	m.mu.Lock()
	switch {
	case w.cancelled:
		m.mu.Unlock()
		m.closeIfIdle() // it may have been a new stream's only watch
		return nil, nil, errWatchCancelled
	case m.closed || m.draining:
		m.mu.Unlock()
		return nil, nil, errMuxClosed
	}
	if m.nextID == 0 {
		m.nextID = watchIDBase
	}
	w.id = m.nextID
	m.nextID++
	cr.WatchId = w.id
	w.req = &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: cr}}
	w.queued = true
	var start bool
	var sent chan struct{}
	if !m.verified && len(m.creating) > 0 {
		sent = make(chan struct{})
		m.deferred = append(m.deferred, deferredCreate{w, sent})
	} else {
		start = m.sendCreateLocked(w)
	}
	m.mu.Unlock()
	if start {
		m.startSending()
	}
	return w, sent, nil
}

// sendCreateLocked queues w's create, in the order of m.creating, which
// etcd's answers follow. It reports whether the caller must start the
// sending goroutine.
func (m *watchMux) sendCreateLocked(w *muxWatch) bool {
	w.progressBase = m.progressSent
	m.creating = append(m.creating, w)
	if !m.verified {
		m.headTimer = time.AfterFunc(m.s.cfg.RequestTimeout, func() { m.headTimedOut(w) })
	}
	req := w.req
	w.req = nil
	return m.enqueueLocked(req)
}

// nextCreatesLocked queues the deferred creates that may go now: all of
// them once the stream is verified, else the first (once none is out).
// Cancelled ones are answered instead; it returns them, for the caller to
// answer once it released m.mu, and whether to start the sender.
func (m *watchMux) nextCreatesLocked() (cancelled []*muxWatch, start bool) {
	for len(m.deferred) > 0 && (m.verified || len(m.creating) == 0) {
		d := m.deferred[0]
		m.deferred[0] = deferredCreate{}
		m.deferred = m.deferred[1:]
		if d.w.cancelled {
			cancelled = append(cancelled, d.w)
			continue
		}
		start = m.sendCreateLocked(d.w) || start
		close(d.sent)
	}
	if len(m.deferred) == 0 {
		m.deferred = nil
	}
	return cancelled, start
}

// headTimedOut is called when the create w, the one out on a stream that
// is not verified, got no answer within the request timeout (its waiter
// may have left). The creates deferred behind it would wait for good: the
// stream drains. It takes no more watches (it leaves Source.muxes, and
// the deferred creates go on another stream), keeps its live watches, and
// closes with the last of them. A late answer to w is cancelled (dispatch).
func (m *watchMux) headTimedOut(w *muxWatch) {
	s := m.s
	s.muxMu.Lock()
	m.mu.Lock()
	if m.closed || m.draining || len(m.creating) == 0 || m.creating[0] != w {
		m.mu.Unlock()
		s.muxMu.Unlock()
		return // answered, or the stream ended, meanwhile
	}
	m.draining = true
	s.drained.Add(1)
	if s.muxes[m.key] == m {
		delete(s.muxes, m.key)
	}
	s.draining[m] = struct{}{}
	w.cancelled = true
	m.creating, m.headTimer = nil, nil
	// The deferred creates go on another stream, except those whose watch
	// was cancelled meanwhile (their state closed): they are answered so.
	var moved, cancelled []*muxWatch
	for _, d := range m.deferred {
		if d.w.cancelled {
			cancelled = append(cancelled, d.w)
		} else {
			moved = append(moved, d.w)
		}
	}
	m.deferred = nil
	m.mu.Unlock()
	s.muxMu.Unlock()
	s.log.Warn("etcdkv: no answer to a watch create within the request timeout; its stream takes no more watches",
		"timeout", s.cfg.RequestTimeout, "deferred", len(moved))
	w.created <- errCreateTimeout
	for _, d := range moved {
		d.created <- fmt.Errorf("etcdkv: watch stream draining: %w", errMuxClosed)
	}
	for _, d := range cancelled {
		d.created <- errWatchCancelled
	}
	m.closeIfIdle()
}
