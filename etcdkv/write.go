package etcdkv

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/watchcache/watchcache"
)

// Writes go to etcd with the identity of their Partition and return the
// revision etcd answered with. Each successful write is remembered for a
// minute, so that the Kinds' Get methods return it (read-your-writes)
// even before the entry's watch delivered it.

// Put sets key to value and returns the revision of the write.
func (s *Source) Put(ctx context.Context, p watchcache.Partition, key string, value []byte) (int64, error) {
	if key == "" {
		return 0, invalidf("put: empty key")
	}
	id, err := s.acquire(p)
	if err != nil {
		return 0, err
	}
	defer s.release(id)
	resp, err := s.conn.Put(id.ctx(ctx), key, string(value))
	if err != nil {
		return 0, s.failed(id, wrapErr("put "+strconv.Quote(key), err))
	}
	rev := resp.Header.Revision
	s.writes.record(key, false, false, rev)
	return rev, nil
}

// CompareAndSwap sets key to value if the key's ModRevision is modRev, as
// Consul's ?cas=: modRev 0 means "only if the key does not exist". ok
// reports whether it did; rev is the revision of the write, or the
// store's current revision when it did not.
func (s *Source) CompareAndSwap(ctx context.Context, p watchcache.Partition, key string, value []byte, modRev int64) (ok bool, rev int64, err error) {
	switch {
	case key == "":
		return false, 0, invalidf("compare-and-swap: empty key")
	case modRev < 0:
		return false, 0, invalidf("compare-and-swap %q: negative revision %d", key, modRev)
	}
	id, err := s.acquire(p)
	if err != nil {
		return false, 0, err
	}
	defer s.release(id)
	// A key that does not exist has ModRevision 0 in comparisons.
	resp, err := s.conn.Txn(id.ctx(ctx)).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", modRev)).
		Then(clientv3.OpPut(key, string(value))).
		Commit()
	if err != nil {
		return false, 0, s.failed(id, wrapErr("compare-and-swap "+strconv.Quote(key), err))
	}
	rev = resp.Header.Revision
	if resp.Succeeded {
		s.writes.record(key, false, false, rev)
	}
	return resp.Succeeded, rev, nil
}

// Delete deletes key. It returns the revision of the delete, or the
// store's current revision when the key did not exist.
func (s *Source) Delete(ctx context.Context, p watchcache.Partition, key string) (int64, error) {
	if key == "" {
		return 0, invalidf("delete: empty key")
	}
	id, err := s.acquire(p)
	if err != nil {
		return 0, err
	}
	defer s.release(id)
	resp, err := s.conn.Delete(id.ctx(ctx), key)
	if err != nil {
		return 0, s.failed(id, wrapErr("delete "+strconv.Quote(key), err))
	}
	rev := resp.Header.Revision
	if resp.Deleted > 0 {
		// A delete of nothing writes no revision: no entry would ever
		// reach it, so it must not be waited for.
		s.writes.record(key, false, true, rev)
	}
	return rev, nil
}

// DeletePrefix deletes every key that starts with prefix ("" deletes every
// key). It returns the revision of the delete, or the store's current
// revision when there was nothing to delete.
func (s *Source) DeletePrefix(ctx context.Context, p watchcache.Partition, prefix string) (int64, error) {
	id, err := s.acquire(p)
	if err != nil {
		return 0, err
	}
	defer s.release(id)
	sp := spec{kind: kindPrefix, key: prefix}
	resp, err := s.conn.Delete(id.ctx(ctx), sp.start(), clientv3.WithRange(sp.end()))
	if err != nil {
		return 0, s.failed(id, wrapErr("delete prefix "+strconv.Quote(prefix), err))
	}
	rev := resp.Header.Revision
	if resp.Deleted > 0 {
		s.writes.record(prefix, true, true, rev)
	}
	return rev, nil
}

// DeleteCAS deletes key if its ModRevision is modRev, as Consul's DELETE
// ?cas=: modRev 0 never deletes (ok is false, rev 0). ok reports whether
// it deleted; rev is the revision of the delete, or the store's current
// revision when it did not.
func (s *Source) DeleteCAS(ctx context.Context, p watchcache.Partition, key string, modRev int64) (ok bool, rev int64, err error) {
	switch {
	case key == "":
		return false, 0, invalidf("delete-cas: empty key")
	case modRev < 0:
		return false, 0, invalidf("delete-cas %q: negative revision %d", key, modRev)
	case modRev == 0:
		return false, 0, nil
	}
	id, err := s.acquire(p)
	if err != nil {
		return false, 0, err
	}
	defer s.release(id)
	resp, err := s.conn.Txn(id.ctx(ctx)).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", modRev)).
		Then(clientv3.OpDelete(key)).
		Commit()
	if err != nil {
		return false, 0, s.failed(id, wrapErr("delete-cas "+strconv.Quote(key), err))
	}
	rev = resp.Header.Revision
	if resp.Succeeded {
		// ModRevision matched a non-zero revision, so the key existed.
		s.writes.record(key, false, true, rev)
	}
	return resp.Succeeded, rev, nil
}

// Limits of the write log: writes older than writeLogWindow are forgotten
// (a watch that far behind is broken, and reads then get what the cache
// has), and at most writeLogMax single-key writes are kept.
const (
	writeLogWindow    = time.Minute
	writeLogMax       = 1 << 16
	writeLogMaxPrefix = 1 << 10
)

// writeLog remembers this process's recent writes, so that a read through
// the cache right after a write can tell whether its entry reflects it.
// The zero value is not usable; call init.
type writeLog struct {
	mu       sync.Mutex          // protects the fields below
	keys     map[string]writeRec // latest single-key write of each key
	order    []writeRec          // single-key writes, oldest first, for pruning
	prefixes []writeRec          // DeletePrefix writes, oldest first
}

type writeRec struct {
	key string // the key, or the deleted prefix
	rev int64
	del bool
	at  time.Time
}

func (l *writeLog) init() { l.keys = make(map[string]writeRec) }

// record notes a write at rev: of key, or of every key under it if prefix
// (a delete).
func (l *writeLog) record(key string, prefix, del bool, rev int64) {
	now := time.Now()
	cutoff := now.Add(-writeLogWindow)
	r := writeRec{key: key, rev: rev, del: del, at: now}
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
	if old, ok := l.keys[key]; !ok || old.rev < rev {
		l.keys[key] = r
	}
	l.order = append(l.order, r)
	i := 0
	for ; i < len(l.order) && (len(l.order)-i > writeLogMax || l.order[i].at.Before(cutoff)); i++ {
		if o := l.order[i]; l.keys[o.key].rev == o.rev {
			delete(l.keys, o.key)
		}
	}
	l.order = l.order[i:]
}

// need is what an entry's result must reflect to include this process's
// writes to its range: an index of at least must (writes that certainly
// changed the range), and an index of at least cover unless the result is
// empty (deletes of a range that contains the entry's: the state they left
// is empty, whatever the entry saw before them).
type need struct {
	must, cover int64
}

func (n need) satisfiedBy(index uint64, empty bool) bool {
	i := int64(index)
	return i >= n.must && (i >= n.cover || empty)
}

// pending returns what an entry of sp must reflect.
func (l *writeLog) pending(sp spec) need {
	cutoff := time.Now().Add(-writeLogWindow)
	var n need
	l.mu.Lock()
	defer l.mu.Unlock()
	if !sp.isRange() {
		if r, ok := l.keys[sp.key]; ok && r.at.After(cutoff) {
			if r.del {
				n.cover = max(n.cover, r.rev)
			} else {
				n.must = max(n.must, r.rev)
			}
		}
	} else {
		for k, r := range l.keys {
			if r.at.After(cutoff) && strings.HasPrefix(k, sp.key) {
				n.must = max(n.must, r.rev) // a put, or a delete of a key that existed
			}
		}
	}
	for _, r := range l.prefixes {
		switch {
		case !r.at.After(cutoff):
		case strings.HasPrefix(sp.key, r.key):
			// The deleted prefix contains the entry's range.
			n.cover = max(n.cover, r.rev)
		case sp.isRange() && strings.HasPrefix(r.key, sp.key):
			// The deleted prefix lies inside the entry's range, and keys
			// under it existed: the entry changed.
			n.must = max(n.must, r.rev)
		}
	}
	return n
}
