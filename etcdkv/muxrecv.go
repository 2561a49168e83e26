package etcdkv

import (
	"fmt"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A stream's responses, and its end: see the notes in mux.go.

// recv is the stream's goroutine: it reads responses until the stream
// ends, and hands each to its watch.
func (m *watchMux) recv() {
	for {
		resp, err := m.stream.Recv()
		if err != nil {
			m.fail(err)
			return
		}
		m.dispatch(resp)
	}
}

func (m *watchMux) dispatch(resp *pb.WatchResponse) {
	rev := resp.Header.GetRevision()
	m.mu.Lock()
	switch {
	case resp.Created:
		if len(m.creating) == 0 {
			// The answer to a create dropped when the stream drained
			// (headTimedOut), or one never asked for: no one takes the
			// watch's events, and it is cancelled.
			draining := m.draining
			m.mu.Unlock()
			if !draining {
				m.s.log.Warn("etcdkv: etcd answered a watch create that was not asked for", "watch_id", resp.WatchId)
			}
			if !resp.Canceled {
				m.send(cancelRequest(resp.WatchId))
			}
			return
		}
		w := m.creating[0]
		m.creating[0] = nil
		m.creating = m.creating[1:]
		if m.headTimer != nil {
			m.headTimer.Stop()
			m.headTimer = nil
		}
		if len(m.creating) == 0 {
			m.creating = nil // let a burst's backing array go
		}
		var err error
		switch {
		case resp.Canceled: // refused
			err = cancelErr(resp)
			w.cancelled = true
		case resp.WatchId != w.id && (m.verified || len(m.creating) > 0):
			// An ID of the server's own while several creates were out:
			// which answer is whose cannot be told.
			m.failWith(w, fmt.Errorf("etcd answered watch create %d with ID %d", w.id, resp.WatchId))
			return
		case m.watches[resp.WatchId] != nil:
			m.failWith(w, fmt.Errorf("etcd gave watch ID %d to two watches of one stream", resp.WatchId))
			return
		case w.cancelled: // by the source, while etcd created it
			m.verified = m.verified || resp.WatchId == w.id
			m.answered = true
			err = errWatchCancelled
		default:
			m.verified = m.verified || resp.WatchId == w.id
			m.answered = true
			w.id, w.live = resp.WatchId, true
			m.watches[w.id] = w
		}
		skipped, start := m.nextCreatesLocked()
		m.mu.Unlock()
		if start {
			m.startSending()
		}
		w.created <- err
		for _, d := range skipped {
			d.created <- errWatchCancelled
		}
		switch {
		case resp.Canceled:
			m.closeIfIdle()
		case err != nil:
			if !m.closeIfIdle() {
				m.send(cancelRequest(resp.WatchId))
			}
		}
		return
	case resp.WatchId == clientv3.InvalidWatchID:
		// A progress report for the whole stream: for the watches it
		// covers (see progressRecv).
		m.progressRecv++
		ws := make([]*muxWatch, 0, len(m.watches))
		for _, w := range m.watches {
			if m.progressRecv > w.progressBase {
				ws = append(ws, w)
			}
		}
		m.mu.Unlock()
		for _, w := range ws {
			w.sink.watchEvent(w, muxEvent{rev: rev})
		}
		return
	}
	w := m.watches[resp.WatchId]
	if w != nil && resp.Canceled {
		delete(m.watches, w.id)
		w.cancelled = true
	}
	m.mu.Unlock()
	if w == nil {
		return // cancelled meanwhile
	}
	ev := muxEvent{events: resp.Events, rev: rev}
	if resp.Canceled {
		ev.end, ev.err = true, cancelErr(resp)
	}
	w.sink.watchEvent(w, ev)
	if resp.Canceled {
		m.closeIfIdle()
	}
}

// closeIfIdle closes the stream if no watch is left on it, created or
// being created (etcd ended or refused the last, or the source cancelled
// it): nothing else would, and a stream of an old token would never be
// used again. It reports whether it closed it.
func (m *watchMux) closeIfIdle() bool {
	s := m.s
	s.muxMu.Lock()
	m.mu.Lock()
	idle := len(m.watches) == 0 && len(m.creating) == 0 && len(m.deferred) == 0 && !m.closed
	if idle {
		m.closed = true
		m.forgetLocked()
	}
	m.mu.Unlock()
	s.muxMu.Unlock()
	if idle {
		m.cancel()
	}
	return idle
}

// failWith ends the stream after an error in the answer to w's create,
// which dispatch took off m.creating: w hears of it as the others do. It
// unlocks m.mu.
func (m *watchMux) failWith(w *muxWatch, err error) {
	w.cancelled = true
	m.mu.Unlock()
	m.fail(err)
	w.created <- fmt.Errorf("etcdkv: watch stream: %w", err)
}

// forgetLocked takes the closed stream out of the source's lists. The
// caller holds Source.muxMu and m.mu.
func (m *watchMux) forgetLocked() {
	s := m.s
	if s.muxes[m.key] == m {
		delete(s.muxes, m.key)
	}
	delete(s.draining, m)
}

// fail ends the stream after an error: every watch on it ends with err.
func (m *watchMux) fail(err error) {
	s := m.s
	s.muxMu.Lock()
	m.mu.Lock()
	m.closed = true
	m.forgetLocked()
	if m.headTimer != nil {
		m.headTimer.Stop()
		m.headTimer = nil
	}
	creating := m.creating
	for _, d := range m.deferred {
		creating = append(creating, d.w)
	}
	watches := m.watches
	m.creating, m.deferred, m.watches = nil, nil, map[int64]*muxWatch{}
	for _, w := range creating {
		w.cancelled = true
	}
	for _, w := range watches {
		w.cancelled = true
	}
	m.mu.Unlock()
	s.muxMu.Unlock()
	m.cancel()

	err = fmt.Errorf("etcdkv: watch stream: %w", rpctypes.Error(err))
	for _, w := range creating {
		w.created <- err
	}
	for _, w := range watches {
		w.sink.watchEvent(w, muxEvent{end: true, err: err})
	}
}
