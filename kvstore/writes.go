package kvstore

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/btree"
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
//
// Reads ask Satisfied first. While the log remembers nothing, or the read's
// index is at least that of every write it remembers, that is one atomic
// load: the hot path of a read consults nothing that grows with the write
// history. Otherwise the log looks up the read's key in a B-tree of the
// latest write of each key, or scans the B-tree's range of the read's
// prefix: O(log n + matches). Records older than writeLogWindow are pruned
// by whichever read or write comes next, and once none is left the log
// frees its memory and the fast path holds again.
type WriteLog struct {
	// maxIndex is the highest index of a remembered write, 0 when none is
	// remembered. It is written under mu and read without it.
	maxIndex atomic.Uint64

	mu       sync.Mutex              // protects the fields below
	keys     *btree.BTreeG[writeRec] // latest single-key write of each key, by key
	order    []writeRec              // single-key writes, oldest first, from head on
	head     int                     // first live record of order
	prefixes []writeRec              // prefix deletes, oldest first
}

type writeRec struct {
	key   string // the key, or the deleted prefix
	index uint64
	del   bool
	at    time.Time
}

func byKey(a, b writeRec) bool { return a.key < b.key }

// Record notes a write at index: of key, or of every key under it if
// prefix (a delete); del says it deleted.
func (l *WriteLog) Record(key string, prefix, del bool, index uint64) {
	now := time.Now()
	r := writeRec{key: key, index: index, del: del, at: now}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.pruneLocked(now)
	if prefix {
		l.prefixes = append(l.prefixes, r)
		if len(l.prefixes) > writeLogMaxPrefix {
			l.prefixes = l.prefixes[len(l.prefixes)-writeLogMaxPrefix:]
		}
	} else {
		if l.keys == nil {
			l.keys = btree.NewG(32, byKey)
		}
		if old, ok := l.keys.Get(r); !ok || old.index < index {
			l.keys.ReplaceOrInsert(r)
		}
		l.order = append(l.order, r)
		for len(l.order)-l.head > writeLogMax {
			l.dropOldestLocked()
		}
	}
	if index > l.maxIndex.Load() {
		l.maxIndex.Store(index)
	}
}

// dropOldestLocked forgets the oldest single-key write.
func (l *WriteLog) dropOldestLocked() {
	o := l.order[l.head]
	l.order[l.head] = writeRec{}
	l.head++
	if cur, ok := l.keys.Get(o); ok && cur.index == o.index {
		l.keys.Delete(o)
	}
}

// pruneLocked forgets the writes older than the window, and frees the
// memory once none is left.
func (l *WriteLog) pruneLocked(now time.Time) {
	cutoff := now.Add(-writeLogWindow)
	for l.head < len(l.order) && l.order[l.head].at.Before(cutoff) {
		l.dropOldestLocked()
	}
	i := 0
	for i < len(l.prefixes) && l.prefixes[i].at.Before(cutoff) {
		i++
	}
	l.prefixes = l.prefixes[i:]
	switch {
	case l.head == len(l.order) && len(l.prefixes) == 0:
		l.keys, l.order, l.head, l.prefixes = nil, nil, 0, nil
		l.maxIndex.Store(0)
	case l.head > len(l.order)/2 && l.head > 1024:
		l.order = append([]writeRec(nil), l.order[l.head:]...)
		l.head = 0
	}
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

// Satisfied reports whether a result with index, empty or not, of one key
// (isRange false) or of every key under key, reflects every write the log
// remembers to that range. It is one atomic load when the log remembers
// nothing newer than index.
func (l *WriteLog) Satisfied(index uint64, empty bool, key string, isRange bool) bool {
	if m := l.maxIndex.Load(); m == 0 || index >= m {
		return true
	}
	return l.Pending(key, isRange).SatisfiedBy(index, empty)
}

// Pending returns what an entry of one key (isRange false) or of every key
// under key (isRange true) must reflect.
func (l *WriteLog) Pending(key string, isRange bool) Need {
	var n Need
	l.mu.Lock()
	defer l.mu.Unlock()
	l.pruneLocked(time.Now())
	if l.keys != nil {
		if !isRange {
			if r, ok := l.keys.Get(writeRec{key: key}); ok {
				if r.del {
					n.Cover = max(n.Cover, r.index)
				} else {
					n.Must = max(n.Must, r.index)
				}
			}
		} else {
			visit := func(r writeRec) bool {
				n.Must = max(n.Must, r.index) // a put, or a delete of a key that existed
				return true
			}
			if end, ok := prefixEnd(key); ok {
				l.keys.AscendRange(writeRec{key: key}, writeRec{key: end}, visit)
			} else {
				l.keys.AscendGreaterOrEqual(writeRec{key: key}, visit)
			}
		}
	}
	for _, r := range l.prefixes {
		switch {
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

// prefixEnd returns the least key greater than every key that starts with
// prefix; ok is false when there is none (the prefix is empty or all 0xff).
func prefixEnd(prefix string) (string, bool) {
	b := []byte(prefix)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1]), true
		}
	}
	return "", false
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
	if log.Satisfied(meta.Index, Empty(v), key, isRange) {
		return v, meta, nil
	}
	need := log.Pending(key, isRange)
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
