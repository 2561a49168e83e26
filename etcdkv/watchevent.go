package etcdkv

import (
	"errors"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// The responses of an entry's watch, as its state takes them.

// errWatchRefused is takeLocked's report of a watch that etcd cancelled
// for an access reason, which may be a stale token rather than a denial.
var errWatchRefused = errors.New("etcdkv: watch refused")

// watchEvent implements watchSink: the stream's goroutine hands over a
// response of the state's watch.
func (st *watchState[V]) watchEvent(w *muxWatch, ev muxEvent) {
	st.mu.Lock()
	if st.w != w {
		st.mu.Unlock()
		return // a watch the state has replaced
	}
	for _, e := range ev.events {
		if !st.sp.contains(string(e.Kv.Key)) {
			// Another watch's event (a server that mixed up watch IDs):
			// its key's access was not checked for this identity. Read
			// the range again on a new watch.
			st.w = nil
			waiting := st.pending != nil
			st.mu.Unlock()
			st.s.log.Error("etcdkv: a watch delivered a key outside its range; reading the range again",
				"range", st.sp.describe(), "key", string(e.Kv.Key))
			w.cancelWatch()
			if waiting {
				st.evaluate()
			}
			return
		}
	}
	if _, err := st.takeLocked(ev); err != nil {
		st.watchErr = err
	}
	waiting := st.pending != nil
	st.mu.Unlock()
	if waiting {
		st.evaluate()
	}
}

// takeLocked applies one watch response. It reports whether the range
// changed. A watch that ended (compacted, no leader, closed) leaves st.w
// nil for a re-read; one that etcd refused returns errWatchRefused.
func (st *watchState[V]) takeLocked(ev muxEvent) (changed bool, err error) {
	if ev.end {
		st.w = nil // the stream forgot it already
		switch {
		case accessClass(ev.err) != nil, staleToken(ev.err):
			return false, errWatchRefused
		case errors.Is(ev.err, rpctypes.ErrCompacted):
			st.s.log.Info("etcdkv: watch fell behind a compaction; reading the current state", "range", st.sp.describe())
		default:
			st.s.log.Debug("etcdkv: watch ended; reading the current state", "range", st.sp.describe(), "error", ev.err)
		}
		return false, nil
	}
	if len(ev.events) == 0 {
		st.observeLocked(ev.rev) // progress notification
		return false, nil
	}
	// The events first, then the revision they bring the state to: a
	// consistent read that sees the revision must see them.
	st.kvs = applyEvents(st.kvs, ev.events, st.sp.keysOnly())
	st.value = st.derive(st.sp, st.kvs)
	st.unconfirmed = true
	st.changes++
	last := ev.events[len(ev.events)-1].Kv.ModRevision
	st.index = uint64(last)
	st.observeLocked(max(last, ev.rev))
	return true, nil
}
