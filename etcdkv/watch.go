package etcdkv

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/kvstore"
)

// maxResyncs bounds how often one fetch re-reads its range because the
// watch ended (compaction, leader loss). Each re-read starts a watch at a
// revision that exists, so more would mean something else is wrong; the
// fetch then fails and the cache backs off rather than looping.
const maxResyncs = 3

// watchState is the State of an entry's FetchResult: its one etcd watch
// and the keys of its range as the watch brought them. The cache hands it
// back to every fetch of the entry and closes it when the entry goes away
// or a fetch replaces it.
//
// Its fields are written by fetches of the entry, which never run
// concurrently, and by Close, which the cache calls only once no fetch
// uses the state; the cache's entry lock orders them.
type watchState[V any] struct {
	s      *Source
	sp     spec
	id     *identity // acquired for the state's life; released by Close
	derive func(spec, []Entry) V

	cancel context.CancelFunc // ends the watch; nil when none runs
	wch    clientv3.WatchChan // nil when no watch runs: the next wait re-reads first

	kvs   []Entry // the range's keys, sorted; shared with published values, never modified
	value V       // derived from kvs
	index uint64  // revision of the last change of the range seen (see freshIndex)

	rev       int64     // highest store revision the state is known to reflect
	revAt     time.Time // when rev was observed
	nextCheck time.Time // next revision probe while waiting
	failed    bool      // the last fetch failed: the next success is reported at once (recovery)
	failedAt  time.Time // when it failed: only a probe started later tells of a recovery

	p    watchcache.Partition // whose entry it is
	view *stateView           // what consistent reads see of it (consistent.go)

	// unconfirmed is set while value holds changes from the watch that
	// the identity's access was not confirmed for (access.go); epoch is
	// the auth epoch access was last confirmed in.
	unconfirmed bool
	epoch       uint64

	closeOnce sync.Once
}

// fetchRange is the fetch function of every kind: sp is the entry's range
// and derive makes the kind's value from its keys.
//
// A fetch with MinIndex (the cache refreshing a healthy entry) waits on
// the entry's watch until the range changes, opts.Timeout ends, or a
// revision probe finds etcd unreachable or its revision gone backwards. A
// fetch without (the first, or a Get that needs the current value now)
// reads the range and starts a new watch from the revision after the read.
func fetchRange[V any](ctx context.Context, s *Source, sp spec, derive func(spec, []Entry) V, opts watchcache.FetchOptions[V], p watchcache.Partition) (watchcache.FetchResult[V], error) {
	var prev *watchState[V]
	if opts.LastResult != nil {
		if st, ok := opts.LastResult.State.(*watchState[V]); ok && st.s == s && st.sp == sp {
			prev = st
		}
	}
	if prev != nil && opts.MinIndex > 0 && !s.stale(prev.id) {
		res, err := prev.wait(ctx, opts)
		return res, fetchErr(err)
	}
	st, err := openState(ctx, s, sp, p, derive, prev)
	if err != nil {
		return watchcache.FetchResult[V]{}, fetchErr(err)
	}
	return st.result(), nil
}

// openState reads sp's range with p's identity and starts its watch. The
// new state keeps prev's index if the range did not change since prev saw
// it, so a re-read does not wake watchers for nothing.
func openState[V any](ctx context.Context, s *Source, sp spec, p watchcache.Partition, derive func(spec, []Entry) V, prev *watchState[V]) (*watchState[V], error) {
	id, err := s.acquire(p)
	if errors.Is(err, ErrUnknownIdentity) && prev != nil && s.reacquire(prev.id) {
		// The identity left the pool (idle, or beyond MaxIdentities) but
		// its credentials stand: the entry keeps it.
		id, err = prev.id, nil
	}
	if err != nil {
		return nil, err
	}
	st := &watchState[V]{s: s, sp: sp, id: id, derive: derive, p: p}
	if prev != nil {
		st.kvs, st.value, st.index, st.rev = prev.kvs, prev.value, prev.index, prev.rev
		st.epoch, st.view = prev.epoch, prev.view
	}
	if st.view == nil {
		v, _ := s.views.LoadOrStore(viewKey{p, sp}, newStateView())
		st.view = v.(*stateView)
	}
	st.view.mu.Lock()
	st.view.owner = st
	st.view.mu.Unlock()
	if err := st.resync(ctx, false); err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}

func (st *watchState[V]) result() watchcache.FetchResult[V] {
	return watchcache.FetchResult[V]{Value: st.value, Index: st.index, State: st}
}

// Close ends the watch and releases the identity. The cache calls it.
func (st *watchState[V]) Close() error {
	st.closeOnce.Do(func() {
		st.stopWatch()
		st.s.release(st.id)
		v := st.view
		v.mu.Lock()
		last := v.owner == st // no newer state took the view over
		v.mu.Unlock()
		if last {
			st.s.views.CompareAndDelete(viewKey{st.p, st.sp}, v)
		}
	})
	return nil
}

func (st *watchState[V]) stopWatch() {
	if st.cancel != nil {
		st.cancel()
	}
	st.cancel, st.wch = nil, nil
}

// observe records that the store was at revision rev (or later) now.
func (st *watchState[V]) observe(rev int64) {
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
// identity's access (access.go) in the epoch it began in.
func (st *watchState[V]) resync(ctx context.Context, fresh bool) error {
	st.stopWatch()
	epoch := st.s.auth.epoch.Load()
	kvs, rev, err := st.s.read(ctx, st.id, st.sp)
	if err != nil {
		return err
	}
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
		st.confirmed(epoch)
		return st.startWatch(ctx, rev+1)
	}
	st.kvs = kvs
	st.value = st.derive(st.sp, kvs)
	st.index = freshIndex(st.sp, kvs, rev)
	st.rev, st.revAt = rev, time.Now()
	st.view.set(st.rev, st.index)
	st.confirmed(epoch)
	return st.startWatch(ctx, rev+1)
}

// confirmed records that the identity's access to the state's value was
// confirmed in epoch.
func (st *watchState[V]) confirmed(epoch uint64) {
	st.unconfirmed, st.epoch = false, epoch
}

// confirm checks the identity's access to the range with etcd (see
// access.go). When it is gone the watch stops: nothing more streams for an
// identity that may not read it.
func (st *watchState[V]) confirm(ctx context.Context) error {
	epoch, _, err := st.s.checkAccess(ctx, st.id, st.sp)
	if err != nil {
		if accessClass(err) != nil {
			st.stopWatch()
		}
		return err
	}
	st.confirmed(epoch)
	return nil
}

// needsConfirm reports whether the state's value must be confirmed before
// it is returned.
func (st *watchState[V]) needsConfirm() bool {
	return st.s.needsCheck(st.epoch, st.unconfirmed)
}

// startWatch starts the entry's watch at revision from. The watch lives
// until the state closes, not just for this fetch: its context derives
// from Background, with WithRequireLeader so that a member cut off from
// its cluster ends the watch (ErrNoLeader) instead of holding it silently.
func (st *watchState[V]) startWatch(ctx context.Context, from int64) error {
	if h := st.s.testHookBeforeWatch; h != nil {
		h(st.sp, from)
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(context.Background()))
	// Watch returns once etcd confirmed the watch; only that wait is
	// bounded by the fetch's context and the request timeout.
	rctx, rcancel := context.WithTimeout(ctx, st.s.cfg.RequestTimeout)
	stop := context.AfterFunc(rctx, cancel)
	opts := []clientv3.OpOption{clientv3.WithRev(from)}
	if st.sp.isRange() {
		opts = append(opts, clientv3.WithRange(st.sp.end()))
	}
	wctx = st.id.ctx(wctx)
	md, _ := metadata.FromOutgoingContext(wctx)
	st.view.mu.Lock()
	st.view.md = md
	st.view.mu.Unlock()
	wch := st.s.conn.Watch(wctx, st.sp.start(), opts...)
	established := stop()
	rcancel()
	if !established {
		cancel()
		if err := ctx.Err(); err != nil {
			return err
		}
		return wrapErr("watch "+st.sp.describe(), fmt.Errorf("not established within %v", st.s.cfg.RequestTimeout))
	}
	st.wch, st.cancel = wch, cancel
	return nil
}

// wait is a blocking fetch: it returns when the range changed, when
// opts.Timeout ends (with the same index), or with an error when etcd
// cannot be reached or the identity's access is gone. See fetchRange.
func (st *watchState[V]) wait(ctx context.Context, opts watchcache.FetchOptions[V]) (watchcache.FetchResult[V], error) {
	var none watchcache.FetchResult[V]
	timeout := time.NewTimer(opts.Timeout)
	defer timeout.Stop()
	check := time.NewTimer(time.Hour)
	defer check.Stop()
	interval := st.s.cfg.ResetCheckInterval
	if st.failed || st.nextCheck.IsZero() {
		// After a failure, check at once: the cache's backoff paces
		// these fetches, and a success must be reported (the recovery).
		st.nextCheck = time.Now()
		if !st.failed {
			st.nextCheck = st.nextCheck.Add(interval)
		}
	}
	fail := func(err error) (watchcache.FetchResult[V], error) {
		st.failed, st.failedAt = true, time.Now()
		return none, err
	}
	// succeed returns the state's value once the identity's access to it
	// is confirmed, as access.go requires.
	succeed := func() (watchcache.FetchResult[V], error) {
		if st.needsConfirm() {
			if err := st.confirm(ctx); err != nil {
				return fail(err)
			}
		}
		st.failed = false
		return st.result(), nil
	}
	_, authChanged := st.s.auth.current()
	if st.index != opts.MinIndex || (!st.unconfirmed && st.needsConfirm()) {
		// A fetch whose result the cache discarded (or that failed while
		// confirming access) moved the state on, or etcd's auth store
		// changed since the last confirmation (perhaps while no fetch
		// waited): confirm and return.
		return succeed()
	}

	resyncs := 0
	for {
		if st.wch == nil {
			// The watch ended: read the range again and watch from there.
			if resyncs++; resyncs > maxResyncs {
				return fail(fmt.Errorf("etcdkv: watch of %s ended %d times in a row", st.sp.describe(), maxResyncs))
			}
			if err := st.resync(ctx, false); err != nil {
				return fail(err)
			}
			if st.index != opts.MinIndex || st.failed {
				return succeed()
			}
			continue
		}
		check.Reset(time.Until(st.nextCheck))
		select {
		case wr, ok := <-st.wch:
			changed, err := st.take(wr, ok)
			switch {
			case errors.Is(err, errWatchRefused):
				// etcd refuses a watch whose token is stale (any auth
				// change makes it so) with the words it uses for a real
				// denial; a checked read renews the token or tells which.
				if err := st.confirm(ctx); err != nil {
					return fail(err)
				}
				st.stopWatch() // the next round re-reads and watches with the new token
			case err != nil:
				return fail(err)
			case changed:
				st.drain()
				return succeed()
			}
		case <-authChanged:
			// etcd's auth store changed: confirm access now, so that a
			// revocation ends the entry's watchers even if nothing changes.
			_, authChanged = st.s.auth.current()
			if st.needsConfirm() {
				return succeed()
			}
		case <-check.C:
			rev, err := st.checkRevision(ctx)
			if err != nil {
				st.nextCheck = time.Now()
				return fail(err)
			}
			st.nextCheck = time.Now().Add(interval)
			if rev < st.rev {
				if err := st.resync(ctx, false); err != nil {
					return fail(err)
				}
				return succeed()
			}
			if st.failed {
				return succeed()
			}
		case <-timeout.C:
			return succeed()
		case <-ctx.Done():
			return none, ctx.Err()
		}
	}
}

// errWatchRefused is take's report of a watch that etcd cancelled for an
// access reason, which may be a stale token rather than a denial.
var errWatchRefused = errors.New("etcdkv: watch refused")

// take applies one watch response. It reports whether the range changed.
// A watch that ended (compacted, no leader, closed) leaves st.wch nil for
// a re-read; one that etcd refused returns errWatchRefused.
func (st *watchState[V]) take(wr clientv3.WatchResponse, ok bool) (changed bool, err error) {
	if !ok || wr.Canceled || wr.Err() != nil {
		err := wr.Err()
		st.stopWatch()
		switch {
		case accessClass(err) != nil:
			return false, errWatchRefused
		case errors.Is(err, rpctypes.ErrCompacted):
			st.s.log.Info("etcdkv: watch fell behind a compaction; reading the current state",
				"range", st.sp.describe(), "compact_revision", wr.CompactRevision)
		default:
			st.s.log.Debug("etcdkv: watch ended; reading the current state", "range", st.sp.describe(), "error", err)
		}
		return false, nil
	}
	if len(wr.Events) == 0 {
		st.observe(wr.Header.GetRevision()) // progress notification
		return false, nil
	}
	// The events first, then the revision they bring the state to: a
	// consistent read that sees the revision must see them.
	st.kvs = applyEvents(st.kvs, wr.Events, st.sp.keysOnly())
	st.value = st.derive(st.sp, st.kvs)
	st.unconfirmed = true
	last := wr.Events[len(wr.Events)-1].Kv.ModRevision
	st.index = uint64(last)
	st.observe(max(last, wr.Header.GetRevision()))
	return true, nil
}

// drain applies the responses that are already waiting, so a burst of
// changes becomes one result. A response that ends the watch leaves it for
// the next fetch.
func (st *watchState[V]) drain() {
	for st.wch != nil {
		select {
		case wr, ok := <-st.wch:
			if _, err := st.take(wr, ok); err != nil {
				return // st.wch is nil: the next fetch re-reads, which tells
			}
		default:
			return
		}
	}
}

// checkRevision returns the store's current revision, from a probe that
// started after the state observed its revision, within the last interval
// and after the state's last failure (see revisionProbe).
func (st *watchState[V]) checkRevision(ctx context.Context) (int64, error) {
	since := st.revAt
	if t := time.Now().Add(-st.s.cfg.ResetCheckInterval); t.After(since) {
		since = t
	}
	if st.failedAt.After(since) {
		since = st.failedAt // another entry's probe from before the failure proves nothing
	}
	return st.id.probe.check(ctx, since, func(ctx context.Context) (int64, error) {
		ctx, cancel := context.WithTimeout(ctx, st.s.cfg.RequestTimeout)
		defer cancel()
		resp, err := st.s.conn.Get(st.id.ctx(ctx), st.sp.probeKey(), clientv3.WithCountOnly())
		if err != nil {
			return 0, st.s.failed(st.id, wrapErr("checking etcd's revision for "+st.sp.describe(), err))
		}
		return resp.Header.Revision, nil
	})
}

// read reads sp's range (linearizably) with id's client, and returns its
// keys sorted and the store's revision.
func (s *Source) read(ctx context.Context, id *identity, sp spec) ([]Entry, int64, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	resp, err := s.conn.Get(id.ctx(ctx), sp.start(), sp.readOpts()...)
	if err != nil {
		return nil, 0, s.failed(id, wrapErr("read "+sp.describe(), err))
	}
	kvs := make([]Entry, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		kvs[i] = fromPB(kv, sp.keysOnly()) // etcd returns ranges sorted by key
	}
	return kvs, resp.Header.Revision, nil
}

// failed notes what err says about id, and returns err: credentials that
// etcd rejected take the identity out of the pool.
func (s *Source) failed(id *identity, err error) error {
	switch {
	case s.isClosed():
		return fmt.Errorf("%w (%w)", ErrClosed, err)
	case errors.Is(err, ErrAuthFailed):
		s.rejected(id)
	}
	return err
}
