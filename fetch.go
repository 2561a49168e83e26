package watchcache

import (
	"context"
	"fmt"
	"time"
)

// Fetcher fetches values of one kind from the source of truth.
//
// Fetch must honour ctx: the cache cancels it when nothing needs the result
// any more (the entry was evicted, its last watcher left, the cache closed)
// and waits for Fetch to return before Close returns.
//
// For a blocking kind, Fetch should block until the source's index is
// greater than opts.MinIndex or opts.Timeout ends, and then return the
// current value and index either way. A returned index lower than MinIndex
// means the source was reset (restored, or rebuilt from scratch) and is
// delivered to everyone at once. An error wrapped with Fatal stops the
// background refresh of the entry.
type Fetcher[V any] interface {
	Fetch(ctx context.Context, opts FetchOptions[V], req Request) (FetchResult[V], error)
}

// FetchFunc adapts a function to the Fetcher interface.
type FetchFunc[V any] func(ctx context.Context, opts FetchOptions[V], req Request) (FetchResult[V], error)

// Fetch calls f.
func (f FetchFunc[V]) Fetch(ctx context.Context, opts FetchOptions[V], req Request) (FetchResult[V], error) {
	return f(ctx, opts, req)
}

// FetchOptions are the cache's parameters for one fetch.
type FetchOptions[V any] struct {
	// MinIndex is the entry's current index for background fetches of
	// blocking kinds. It is 0 for the first fetch, for polling kinds, for a
	// fetch a Get needs answered now, and for the first fetch after a
	// failure (so that recovery is published without waiting for a change).
	MinIndex uint64

	// Timeout is how long a blocking fetch may wait for a change: the
	// kind's QueryTimeout, or the caller's Timeout when the cache is
	// bypassed.
	Timeout time.Duration

	// LastResult is the entry's last successful result, nil on the first
	// fetch. Its State is the opaque per-entry state the previous fetch
	// returned, for sources that keep a watch or a connection per entry.
	// It is the cache's own copy, shared with readers: do not modify it.
	LastResult *FetchResult[V]
}

// FetchResult is what a fetch returns.
type FetchResult[V any] struct {
	Value V

	// Index is the source's index of Value (an etcd revision, a Consul
	// X-Consul-Index). A zero index is published as 1; for blocking kinds
	// it also counts as a failure for backoff, so a source that never sets
	// it cannot make the entry spin.
	Index uint64

	// State is kept with the entry and handed back in the next fetch's
	// LastResult. If it is an io.Closer it is closed when the entry goes
	// away, when a later fetch returns a different State, and when it comes
	// with an error or for a request that bypasses the cache (neither is
	// kept).
	State any
}

// callFetch runs one fetch and turns a panic into an error.
func callFetch[V any](ctx context.Context, f Fetcher[V], opts FetchOptions[V], req Request) (res FetchResult[V], err error) {
	defer func() {
		if p := recover(); p != nil {
			res, err = FetchResult[V]{}, fmt.Errorf("%w: %v", ErrFetchPanic, p)
		}
	}()
	return f.Fetch(ctx, opts, req)
}
