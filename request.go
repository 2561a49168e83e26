package watchcache

import "time"

// Partition separates entries that must never be shared: a value fetched
// with one Token is never returned to, single-flighted with, or notified to
// a request carrying another. Token is whatever identity the source
// verifies (an ACL token, a verified user name); Datacenter is the scope
// within the store (a datacenter, a cluster name). The zero Partition is
// the source's own identity.
type Partition struct {
	Token      string
	Datacenter string
}

// Request names a cache entry and carries the options of one call.
//
// Key and Partition identify the entry. An empty Key bypasses the cache:
// Get calls the fetch function directly, and Notify refuses it.
type Request struct {
	Key       string
	Partition Partition

	// MinIndex makes a Get on a blocking kind wait until the entry's index
	// is greater than MinIndex, the Timeout ends, or the index resets to a
	// value below it. It is ignored for kinds without SupportsBlocking.
	// For Notify, the first event waits for an index above MinIndex.
	MinIndex uint64

	// Timeout bounds how long a Get waits. Zero means the kind's
	// QueryTimeout for blocking Gets and no bound (but the caller's context)
	// otherwise.
	Timeout time.Duration

	// MaxAge is the oldest value a Get of a non-refresh kind accepts; older
	// values are fetched again. For Notify on a polling kind (one without
	// SupportsBlocking) it is the polling interval, and it is required.
	MaxAge time.Duration

	// MustRevalidate makes a Get of a non-refresh kind fetch once even if
	// the cached value is fresh enough.
	MustRevalidate bool
}

func (r Request) validate() error {
	switch {
	case r.Timeout < 0:
		return invalidf("negative Timeout %v", r.Timeout)
	case r.MaxAge < 0:
		return invalidf("negative MaxAge %v", r.MaxAge)
	}
	return nil
}

// entryKey identifies an entry within its kind.
type entryKey struct {
	part Partition
	key  string
}

// ResultMeta describes where a result came from.
type ResultMeta struct {
	// Hit is true when the result came from the cache without waiting for
	// a fetch.
	Hit bool

	// Age is how stale the result may be. For refresh kinds it is zero
	// while the background query is healthy and counts from the first
	// failure while it is not. For other kinds it is the time since the
	// value was fetched.
	Age time.Duration

	// Index is the entry's index: the source's index of the value, never 0
	// once a value exists.
	Index uint64
}

// UpdateEvent is what a watcher receives: the entry's current result, or
// its last good result with the error that stopped it from being refreshed.
type UpdateEvent[V any] struct {
	// CorrelationID is the string given to Notify, so that one channel can
	// serve many watches.
	CorrelationID string
	Result        V
	Meta          ResultMeta
	// Err is set when the latest fetch failed (Result is then the last good
	// value, if any), and is ErrClosed on the final event of a closed cache.
	Err error
}
