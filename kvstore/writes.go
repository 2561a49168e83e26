package kvstore

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/watchcache/watchcache"
)

// Read-your-writes. A store's writes reach its cache entries through the
// upstream's change stream, normally within milliseconds; a read through
// the cache right after a write must still return the write. A store
// records each write it acknowledged, with the index the write has (or
// one the upstream had after it), in a WriteLog; ReadYourWrites then
// checks an entry's result against the writes to its range and waits for
// the entry to catch up, or reads from the upstream directly.

// Bounds of a WriteLog: a record older than writeLogWindow no longer
// matters (a change stream is never that far behind, and an entry that
// has not caught up by then is read directly), and at most writeLogMax
// single-key writes and writeLogMaxPrefix prefix deletes are kept.
const (
	writeLogWindow    = time.Minute
	writeLogMax       = 1 << 16
	writeLogMaxPrefix = 1 << 10
)

// WriteLog remembers a store's recent writes. The zero value is ready to
// use; its methods are safe for concurrent use.
type WriteLog struct {
	mu       sync.Mutex          // protects the fields below
	keys     map[string]writeRec // latest single-key write of each key
	order    []writeRec          // single-key writes, oldest first, for pruning
	prefixes []writeRec          // prefix deletes, oldest first
}

type writeRec struct {
	key   string // the key, or the deleted prefix
	index uint64
	del   bool
	at    time.Time
}

// Record notes a write at index: of key, or of every key under it if
// prefix (a delete); del says it deleted.
func (l *WriteLog) Record(key string, prefix, del bool, index uint64) {
	now := time.Now()
	cutoff := now.Add(-writeLogWindow)
	r := writeRec{key: key, index: index, del: del, at: now}
	l.mu.Lock()
	defer l.mu.Unlock()
	if prefix {
		l.prefixes = append(l.prefixes, r)
		i := 0
		for i < len(l.prefixes) && (len(l.prefixes)-i > writeLogMaxPrefix || l.prefixes[i].at.Before(cutoff)) {
			i++
		}
		l.prefixes = l.prefixes[i:]
		return
	}
	if l.keys == nil {
		l.keys = make(map[string]writeRec)
	}
	if old, ok := l.keys[key]; !ok || old.index < index {
		l.keys[key] = r
	}
	l.order = append(l.order, r)
	i := 0
	for ; i < len(l.order) && (len(l.order)-i > writeLogMax || l.order[i].at.Before(cutoff)); i++ {
		if o := l.order[i]; l.keys[o.key].index == o.index {
			delete(l.keys, o.key)
		}
	}
	l.order = l.order[i:]
}

// Need is what an entry's result must reflect to include a store's writes
// to its range: an index of at least Must (writes that certainly changed
// the range), and an index of at least Cover unless the result is empty
// (deletes of a range that contains the entry's: the state they left is
// empty, whatever the entry saw before them).
type Need struct {
	Must, Cover uint64
}

// SatisfiedBy reports whether a result with index, empty or not, reflects
// the writes.
func (n Need) SatisfiedBy(index uint64, empty bool) bool {
	return index >= n.Must && (index >= n.Cover || empty)
}

// Pending returns what an entry of one key (isRange false) or of every key
// under key (isRange true) must reflect.
func (l *WriteLog) Pending(key string, isRange bool) Need {
	cutoff := time.Now().Add(-writeLogWindow)
	var n Need
	l.mu.Lock()
	defer l.mu.Unlock()
	if !isRange {
		if r, ok := l.keys[key]; ok && r.at.After(cutoff) {
			if r.del {
				n.Cover = max(n.Cover, r.index)
			} else {
				n.Must = max(n.Must, r.index)
			}
		}
	} else {
		for k, r := range l.keys {
			if r.at.After(cutoff) && strings.HasPrefix(k, key) {
				n.Must = max(n.Must, r.index) // a put, or a delete of a key that existed
			}
		}
	}
	for _, r := range l.prefixes {
		switch {
		case !r.at.After(cutoff):
		case strings.HasPrefix(key, r.key):
			// The deleted prefix contains the entry's range.
			n.Cover = max(n.Cover, r.index)
		case isRange && strings.HasPrefix(r.key, key):
			// The deleted prefix lies inside the entry's range, and keys
			// under it existed: the entry changed.
			n.Must = max(n.Must, r.index)
		}
	}
	return n
}

// ReadYourWrites gets req from kind and makes sure the result reflects
// every write in log to the range (key, or every key under it if
// isRange): if it does not, it waits for the entry to catch up (a blocking
// Get per change, up to wait), and failing that reads with direct, from
// the upstream.
func ReadYourWrites[V any](ctx context.Context, log *WriteLog, kind *watchcache.Kind[V], key string, isRange bool, req watchcache.Request, wait time.Duration, direct func(context.Context) (V, watchcache.ResultMeta, error)) (V, watchcache.ResultMeta, error) {
	v, meta, err := kind.Get(ctx, req)
	if err != nil {
		return v, meta, err
	}
	need := log.Pending(key, isRange)
	if need.SatisfiedBy(meta.Index, Empty(v)) {
		return v, meta, nil
	}
	deadline := time.Now().Add(wait)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		r := req
		r.MinIndex, r.Timeout = meta.Index, left
		v2, meta2, err := kind.Get(ctx, r)
		if err != nil {
			if ctx.Err() != nil {
				var zero V
				return zero, watchcache.ResultMeta{}, ctx.Err()
			}
			break // the entry is failing: the upstream decides
		}
		if need.SatisfiedBy(meta2.Index, Empty(v2)) {
			return v2, meta2, nil
		}
		if meta2.Index == meta.Index {
			break // timed out without a change
		}
		meta = meta2
	}
	return direct(ctx)
}
