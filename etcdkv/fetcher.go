package etcdkv

import (
	"context"
	"time"

	"github.com/watchcache/watchcache"
)

// Fetches without a goroutine per entry.
//
// The kinds' fetcher is a watchcache.AsyncFetcher. A fetch that needs a
// read (the first, a Get that needs the current value, a re-read) runs on
// the source's work queue, a bounded pool of goroutines that exist while
// there is work. A fetch that waits for a change (MinIndex) is a small
// record on its entry's state (stateWait) and in the source's list of
// waits, and nothing runs for it until something happens:
//
//   - the watch's stream delivers a response for it (watchEvent);
//   - the waits' ticker (tickWaits, one goroutine per source) finds its
//     Timeout passed, asks etcd for its revision (one probe per identity
//     per ResetCheckInterval, which tells a store restored to an older
//     revision, whose watches would stay silent, and an unreachable etcd),
//     or hears that etcd's auth store changed (access.go);
//   - its context is cancelled.
//
// Each of these calls evaluate, which decides under the state's lock, as
// the blocking wait did: answer the fetch, keep waiting, or queue work
// (re-read the range, confirm access, check the revision) that evaluates
// again when it is done. At most one piece of work runs per state (busy).
// When etcd does not answer a read, the reads queued before it fail at once
// with its error (outage, work.go): every entry hears of an outage within
// about one request timeout, however many are queued.

// rangeFetcher is the fetcher of a kind: sp is the entry's range, derive
// makes the kind's value from its keys.
type rangeFetcher[V any] struct {
	s      *Source
	parse  func(string) (spec, error)
	derive func(spec, []Entry) V
}

// Fetch implements watchcache.Fetcher, for requests that bypass the cache.
func (f rangeFetcher[V]) Fetch(ctx context.Context, opts watchcache.FetchOptions[V], req watchcache.Request) (watchcache.FetchResult[V], error) {
	type result struct {
		res watchcache.FetchResult[V]
		err error
	}
	ch := make(chan result, 1)
	f.FetchAsync(ctx, opts, req, func(res watchcache.FetchResult[V], err error) { ch <- result{res, err} })
	r := <-ch
	return r.res, r.err
}

// FetchAsync implements watchcache.AsyncFetcher.
//
// A fetch with MinIndex (the cache refreshing a healthy entry) waits on
// the entry's watch until the range changes, opts.Timeout ends, or a
// revision probe finds etcd unreachable or its revision gone backwards. A
// fetch without (the first, or a Get that needs the current value now)
// reads the range and starts a new watch from the revision after the read.
func (f rangeFetcher[V]) FetchAsync(ctx context.Context, opts watchcache.FetchOptions[V], req watchcache.Request, done func(watchcache.FetchResult[V], error)) {
	sp, err := f.parse(req.Key)
	if err != nil {
		done(watchcache.FetchResult[V]{}, watchcache.Fatal(err))
		return
	}
	s := f.s
	var prev *watchState[V]
	if opts.LastResult != nil {
		if st, ok := opts.LastResult.State.(*watchState[V]); ok && st.s == s && st.sp == sp {
			prev = st
		}
	}
	if prev != nil && opts.MinIndex > 0 && !s.stale(prev.id) {
		prev.wait(ctx, opts, done)
		return
	}
	queued := time.Now()
	s.work.run(func() {
		if err := s.outage.since(queued); err != nil {
			done(watchcache.FetchResult[V]{}, fetchErr(err))
			return
		}
		// The read's result, not the state's value once the watch started:
		// what the watch brought since is not confirmed (access.go), and
		// the next fetch delivers it once it is.
		_, res, err := openState(ctx, s, sp, req.Partition, f.derive, prev)
		if err != nil {
			done(watchcache.FetchResult[V]{}, fetchErr(err))
			return
		}
		done(res, nil)
	})
}
