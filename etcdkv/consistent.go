package etcdkv

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/watchcache/watchcache"
)

// Consistent reads from the cache.
//
// A consistent read (Consul's ?consistent, Cache-Control: no-cache) must
// reflect every write that completed before it began. Reading etcd for
// each costs a linearizable read per request; instead, as Kubernetes'
// watch cache does, the source learns the store's current revision R with
// one linearizable request shared by the consistent reads of an identity
// that wait together (the batched access check of access.go, whose
// response carries the revision, and which confirms access too; under
// load about one per twelve reads), waits until the entry's
// watch has delivered everything up to R (an idle watch is asked for a
// progress notification, which reports its revision), and answers from the
// cache. An entry that cannot catch up within ConsistentWait (its watch
// is down, the entry is failing) is read through from etcd instead, as is
// one whose stream ignores progress requests (behind etcd's gRPC proxy)
// at once.

// stateView is what consistent reads see of an entry's state: written by
// the entry's fetches, read by anyone. One view serves an entry across the
// states that replace one another (a re-read makes a new state).
type stateView struct {
	rev   atomic.Int64  // highest store revision the state's value reflects
	index atomic.Uint64 // index of the state's value

	mu    sync.Mutex    // protects the fields below
	moved chan struct{} // closed when rev or index moves; made by the first reader that waits
	mux   *watchMux     // the stream of the watch
	owner any           // the state that writes the view now

	progressing atomic.Bool // a progress request is out
}

func newStateView() *stateView { return &stateView{} }

// set records the state's revision and index and wakes waiting readers.
func (v *stateView) set(rev int64, index uint64) {
	if v.rev.Load() == rev && v.index.Load() == index {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	// The index first: a reader that loads rev and then index, and finds
	// rev new enough, then finds the index that goes with it.
	v.index.Store(index)
	v.rev.Store(rev)
	v.progressing.Store(false)
	if v.moved != nil { // most views never have a reader waiting
		close(v.moved)
		v.moved = nil
	}
}

// changed returns a channel closed when rev or index next moves.
func (v *stateView) changed() <-chan struct{} {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.moved == nil {
		v.moved = make(chan struct{})
	}
	return v.moved
}

// viewKey identifies an entry of one kind: its partition and range.
type viewKey struct {
	p  watchcache.Partition
	sp spec
}

// DefaultConsistentWait bounds how long a consistent read waits for its
// entry to catch up before it reads etcd directly.
const DefaultConsistentWait = time.Second

// requestProgress asks etcd, on the stream of v's watch, for a progress
// notification: etcd answers every watch of the stream with its current
// revision once they are synced. Readers waiting on one view share one
// request until the view moves. It reports false when the stream ignores
// progress requests (etcd's gRPC proxy does): waiting is for nothing.
func (s *Source) requestProgress(v *stateView) bool {
	v.mu.Lock()
	m := v.mux
	v.mu.Unlock()
	if m == nil {
		return true // the watch is being made again: its read moves the view
	}
	if m.ignoresProgress() {
		return false
	}
	if !v.progressing.CompareAndSwap(false, true) {
		return true
	}
	if err := m.requestProgress(); err != nil {
		v.progressing.Store(false)
		s.log.Debug("etcdkv: asking a watch for its progress", "error", err)
	}
	return true
}

// consistentRead serves a consistent read of sp for req from the cache
// once the entry has caught up with the store's current revision, and
// from etcd directly otherwise.
func consistentRead[V any](ctx context.Context, s *Source, kind *watchcache.Kind[V], sp spec, derive func(spec, []Entry) V, req watchcache.Request) (V, watchcache.ResultMeta, error) {
	var zero V
	id, err := s.acquire(req.Partition)
	if err != nil {
		return zero, watchcache.ResultMeta{}, err
	}
	_, rev, err := s.checkAccess(ctx, id, sp)
	s.release(id)
	if err != nil {
		return zero, watchcache.ResultMeta{}, err
	}
	v, meta, err := kind.Get(ctx, req)
	if err != nil {
		return zero, watchcache.ResultMeta{}, err
	}
	// Set on the first wait (most reads find the entry caught up): the
	// wait for the entry, whatever it waits on, ends at until.
	var (
		until    time.Time
		deadline <-chan time.Time
	)
	for {
		view, _ := s.views.Load(viewKey{req.Partition, sp})
		sv, _ := view.(*stateView)
		if sv == nil {
			break
		}
		seen := sv.rev.Load() // before the index: see set
		index := sv.index.Load()
		if seen >= rev && index == meta.Index {
			meta.Hit = false // it took a round trip to etcd
			s.consistentCached.Add(1)
			return v, meta, nil
		}
		if until.IsZero() {
			until = time.Now().Add(s.cfg.ConsistentWait)
		}
		left := time.Until(until)
		if left <= 0 {
			break
		}
		if seen >= rev {
			// The entry saw a change that it has not published yet.
			r := req
			r.MinIndex, r.Timeout = meta.Index, left
			if v, meta, err = kind.Get(ctx, r); err != nil {
				return zero, watchcache.ResultMeta{}, err
			}
			continue
		}
		moved := sv.changed()
		if sv.rev.Load() != seen || sv.index.Load() != index {
			continue // it moved before changed: moved may never close
		}
		if !s.requestProgress(sv) {
			break // no report will come: read etcd now
		}
		if deadline == nil {
			t := time.NewTimer(left)
			defer t.Stop()
			deadline = t.C
		}
		select {
		case <-moved:
			v, meta, err = kind.Get(ctx, req)
			if err != nil {
				return zero, watchcache.ResultMeta{}, err
			}
			continue
		case <-deadline:
		case <-ctx.Done():
			return zero, watchcache.ResultMeta{}, ctx.Err()
		}
		break
	}
	s.log.Debug("etcdkv: entry did not catch up with the store for a consistent read; reading from etcd", "range", sp.describe())
	s.consistentDirect.Add(1)
	return readValue(ctx, s, sp, req.Partition, derive)
}
