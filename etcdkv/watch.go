package etcdkv

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/kvstore"
)

// maxResyncs bounds how often one fetch re-reads its range because the
// watch ended (compaction, leader loss). Each re-read starts a watch at a
// revision that exists, so more would mean something else is wrong; the
// fetch then fails and the cache backs off rather than looping.
const maxResyncs = 3

// watchState is the State of an entry's FetchResult: its one etcd watch
// (multiplexed on a shared stream, mux.go) and the keys of its range as
// the watch brought them. The cache hands it back to every fetch of the
// entry and closes it when the entry goes away or a fetch replaces it.
//
// Its fields are guarded by mu: the stream's goroutine applies the watch's
// responses as they come, whether or not a fetch waits (wait.go), and the
// work of a fetch (a re-read, an access check) runs on the source's work
// queue. s, sp, id, derive, p and view never change.
type watchState[V any] struct {
	s      *Source
	sp     spec
	id     *identity // acquired for the state's life; released by Close
	derive func(spec, []Entry) V
	p      watchcache.Partition // whose entry it is
	view   *stateView           // what consistent reads see of it (consistent.go)

	mu       sync.Mutex
	w        *muxWatch // the watch; nil when none runs: the next wait re-reads first
	watchErr error     // why the watch ended, if the next wait must hear it (errWatchRefused)
	pending  *stateWait[V]
	busy     bool // work of the pending fetch runs; it evaluates the wait when done
	closed   bool

	kvs   []Entry // the range's keys, sorted; shared with published values, never modified
	value V       // derived from kvs
	index uint64  // revision of the last change of the range seen (see freshIndex)

	rev      int64     // highest store revision the state is known to reflect
	revAt    time.Time // when rev was observed
	failed   bool      // the last fetch failed: the next success is reported at once (recovery)
	failedAt time.Time // when it failed: only a probe started later tells of a recovery

	// unconfirmed is set while value holds changes from the watch that
	// the identity's access was not confirmed for (access.go); epoch is
	// the auth epoch access was last confirmed in. changes counts the
	// changes taken from the watch: a check confirms only what the state
	// held when it was asked for, not what came while it ran.
	unconfirmed bool
	epoch       uint64
	changes     uint64
}

// openState reads sp's range with p's identity and starts its watch. The
// new state keeps prev's index if the range did not change since prev saw
// it, so a re-read does not wake watchers for nothing. It returns the state
// and the result of its read (see resync).
func openState[V any](ctx context.Context, s *Source, sp spec, p watchcache.Partition, derive func(spec, []Entry) V, prev *watchState[V]) (*watchState[V], watchcache.FetchResult[V], error) {
	id, err := s.acquire(p)
	if errors.Is(err, ErrUnknownIdentity) && prev != nil && s.reacquire(prev.id) {
		// The identity left the pool (idle, or beyond MaxIdentities) but
		// its credentials stand: the entry keeps it.
		id, err = prev.id, nil
	}
	if err != nil {
		return nil, watchcache.FetchResult[V]{}, err
	}
	st := &watchState[V]{s: s, sp: sp, id: id, derive: derive, p: p}
	if prev != nil {
		prev.mu.Lock()
		st.kvs, st.value, st.index, st.rev = prev.kvs, prev.value, prev.index, prev.rev
		st.epoch = prev.epoch
		prev.mu.Unlock()
		st.view = prev.view
	} else {
		v, _ := s.views.LoadOrStore(viewKey{p, sp}, newStateView())
		st.view = v.(*stateView)
	}
	st.view.mu.Lock()
	st.view.owner = st
	st.view.mu.Unlock()
	res, err := st.resync(ctx, false)
	if err != nil {
		if prev != nil {
			prev.takeViewBack(st)
		}
		st.Close()
		return nil, watchcache.FetchResult[V]{}, err
	}
	if prev != nil {
		// The view is the entry's again if a failed re-read forgot it
		// (takeViewBack), now that it shows what this read saw.
		s.views.LoadOrStore(viewKey{p, sp}, st.view)
	}
	return st, res, nil
}

// takeViewBack makes st, which stays the entry's state, the owner of its
// view again after the state that was to replace it (failed) took it over.
// If the failed read saw a lower revision than st's, the store was
// restored and st's value belongs to its old history: the view is
// forgotten, and consistent reads go to etcd until a read succeeds.
func (st *watchState[V]) takeViewBack(failed *watchState[V]) {
	st.mu.Lock()
	defer st.mu.Unlock()
	v := st.view
	v.mu.Lock()
	if v.owner != failed {
		v.mu.Unlock()
		return
	}
	v.owner = st
	v.mu.Unlock()
	if v.rev.Load() < st.rev {
		st.s.views.CompareAndDelete(viewKey{st.p, st.sp}, v)
		return
	}
	// What the failed state's read saw was never published.
	v.set(st.rev, st.index)
}

// resultLocked is the state's value as a fetch returns it.
func (st *watchState[V]) resultLocked() watchcache.FetchResult[V] {
	return watchcache.FetchResult[V]{Value: st.value, Index: st.index, State: st}
}

// Close ends the watch and releases the identity. The cache calls it.
func (st *watchState[V]) Close() error {
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		return nil
	}
	st.closed = true
	w := st.stopWatchLocked()
	pending := st.pending
	st.mu.Unlock()
	if w != nil {
		w.cancelWatch()
	}
	if pending != nil {
		// The cache closes a state only once no fetch uses it; a wait
		// still registered would be a bug, and must not hold the entry.
		st.finish(pending, watchcache.FetchResult[V]{}, ErrClosed)
	}
	st.s.release(st.id)
	v := st.view
	v.mu.Lock()
	last := v.owner == st // no newer state took the view over
	if last {
		v.mux = nil
	}
	v.mu.Unlock()
	if last {
		st.s.views.CompareAndDelete(viewKey{st.p, st.sp}, v)
	}
	return nil
}

// stopWatchLocked forgets the watch and returns it, for the caller to
// cancel once it released st.mu (cancelling may send on the stream).
func (st *watchState[V]) stopWatchLocked() *muxWatch {
	w := st.w
	st.w = nil
	return w
}

// stopWatch ends the watch.
func (st *watchState[V]) stopWatch() {
	st.mu.Lock()
	w := st.stopWatchLocked()
	st.mu.Unlock()
	if w != nil {
		w.cancelWatch()
	}
}

// observeLocked records that the store was at revision rev (or later) now.
func (st *watchState[V]) observeLocked(rev int64) {
	if rev > st.rev {
		st.rev, st.revAt = rev, time.Now()
	}
	st.view.set(st.rev, st.index)
}

// freshIndex is the index of a range read at revision rev: the
// ModRevision of a single key that exists, otherwise the read's revision
// (no event tells when a key went missing or a prefix last changed). It is
// never 0: etcd's revisions start at 1.
func freshIndex(sp spec, kvs []Entry, rev int64) uint64 {
	if !sp.isRange() && len(kvs) == 1 {
		return kvs[0].ModifyIndex
	}
	return uint64(max(rev, 1))
}

// resync reads the range and restarts the watch from the revision after
// the read, so that no event is missed or seen twice. The index stays if
// the keys are the same as before, unless fresh says the store was reset
// (then the read's index is delivered even if the keys look the same:
// they belong to another history).
//
// The read is made with the identity's token, so it confirms the
// identity's access (access.go) in the epoch it began in. It returns the
// state's result as of the read: what the new watch brings afterwards is
// not confirmed yet.
func (st *watchState[V]) resync(ctx context.Context, fresh bool) (watchcache.FetchResult[V], error) {
	st.stopWatch()
	epoch := st.s.auth.epoch.Load()
	kvs, rev, err := st.s.read(ctx, st.id, st.sp)
	if err != nil {
		return watchcache.FetchResult[V]{}, err
	}
	st.mu.Lock()
	switch {
	case st.index == 0 || fresh:
	case rev < st.rev:
		// A linearizable read returns at least every revision committed
		// before it began; a lower one means another history.
		fresh = true
		st.s.log.Info("etcdkv: etcd's revision went backwards (store restored or rebuilt); delivering the current state as a reset",
			"range", st.sp.describe(), "seen", st.rev, "now", rev)
	case kvstore.SameEntries(kvs, st.kvs):
		st.rev, st.revAt = rev, time.Now()
		st.view.set(st.rev, st.index)
		st.confirmedLocked(epoch)
		res := st.resultLocked()
		st.mu.Unlock()
		return res, st.startWatch(ctx, rev+1)
	}
	st.kvs = kvs
	st.value = st.derive(st.sp, kvs)
	st.index = freshIndex(st.sp, kvs, rev)
	st.rev, st.revAt = rev, time.Now()
	st.view.set(st.rev, st.index)
	st.confirmedLocked(epoch)
	res := st.resultLocked()
	st.mu.Unlock()
	return res, st.startWatch(ctx, rev+1)
}

// confirmedLocked records that the identity's access to the state's value
// was confirmed in epoch.
func (st *watchState[V]) confirmedLocked(epoch uint64) {
	st.unconfirmed, st.epoch = false, epoch
}

// confirm checks the identity's access to the range with etcd (see
// access.go). When it is gone the watch stops: nothing more streams for an
// identity that may not read it.
//
// The check confirms the state as it was when the caller took changes
// (under st.mu, before calling): a change the watch brought while the check
// ran may have been written after a revocation that the check, begun
// earlier, did not see. The state then stays unconfirmed, and the caller
// may deliver only what it held before.
func (st *watchState[V]) confirm(ctx context.Context, changes uint64) error {
	epoch, _, err := st.s.checkAccess(ctx, st.id, st.sp)
	if err != nil {
		if accessClass(err) != nil {
			st.stopWatch()
		}
		return err
	}
	st.mu.Lock()
	if st.changes == changes {
		st.confirmedLocked(epoch)
	}
	st.mu.Unlock()
	return nil
}

// needsConfirmLocked reports whether the state's value must be confirmed
// before it is returned.
func (st *watchState[V]) needsConfirmLocked() bool {
	return st.s.needsCheck(st.epoch, st.unconfirmed)
}

// startWatch starts the entry's watch at revision from, on its identity's
// stream (mux.go), and waits until etcd confirmed it, for at most the
// request timeout. The watch lives until the state closes or a re-read
// replaces it, not just for this fetch. etcd refuses a watch whose token
// is stale (any auth change makes it so) with the words it uses for a
// real denial: a checked read renews the token or tells which, and the
// watch is tried once more.
func (st *watchState[V]) startWatch(ctx context.Context, from int64) error {
	if h := st.s.testHookBeforeWatch; h != nil {
		h(st.sp, from)
	}
	for attempt := 0; ; attempt++ {
		w, err := st.s.watch(ctx, st.id, st.sp, from, st, func(w *muxWatch) {
			st.mu.Lock()
			st.w, st.watchErr = w, nil // before etcd can answer: no event is dropped
			st.mu.Unlock()
		})
		if err == nil {
			st.mu.Lock()
			closed := st.closed
			st.mu.Unlock()
			if closed { // closed while the watch was being made: it must not outlive the state
				st.stopWatch()
				return ErrClosed
			}
			st.view.mu.Lock()
			st.view.mux = w.m
			st.view.mu.Unlock()
			if h := st.s.testHookAfterWatch; h != nil {
				h(st.sp)
			}
			return nil
		}
		st.stopWatch() // the watch that was refused, if it got that far
		switch {
		case errors.Is(err, errWatchCancelled):
			return ErrClosed // only Close cancels a watch being made
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, context.DeadlineExceeded):
			return wrapErr("watch "+st.sp.describe(), fmt.Errorf("not established within %v", st.s.cfg.RequestTimeout))
		case (accessClass(err) != nil || staleToken(err)) && attempt == 0:
			// A checked read renews a stale token (or tells the denial);
			// the next create goes on the new token's stream.
			st.mu.Lock()
			changes := st.changes
			st.mu.Unlock()
			if cerr := st.confirm(ctx, changes); cerr != nil {
				return cerr
			}
			continue
		}
		return st.s.failed(st.id, wrapErr("watch "+st.sp.describe(), err))
	}
}
