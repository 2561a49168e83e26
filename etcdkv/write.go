package etcdkv

import (
	"context"
	"strconv"

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
	s.writes.Record(key, false, false, uint64(rev))
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
		s.writes.Record(key, false, false, uint64(rev))
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
		s.writes.Record(key, false, true, uint64(rev))
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
		s.writes.Record(prefix, true, true, uint64(rev))
	}
	return rev, nil
}

// DeleteCAS deletes key if its ModRevision is modRev, as Consul's DELETE
// ?cas=: ok reports whether it deleted the key, or found it missing (as
// Consul, a delete of a missing key succeeds, whatever modRev); modRev 0
// deletes nothing that exists. rev is the revision of the delete, or the
// store's current revision when it did not delete.
func (s *Source) DeleteCAS(ctx context.Context, p watchcache.Partition, key string, modRev int64) (ok bool, rev int64, err error) {
	switch {
	case key == "":
		return false, 0, invalidf("delete-cas: empty key")
	case modRev < 0:
		return false, 0, invalidf("delete-cas %q: negative revision %d", key, modRev)
	}
	id, err := s.acquire(p)
	if err != nil {
		return false, 0, err
	}
	defer s.release(id)
	// A missing key has ModRevision 0 in comparisons.
	resp, err := s.conn.Txn(id.ctx(ctx)).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", modRev)).
		Then(clientv3.OpDelete(key)).
		Else(clientv3.OpGet(key, clientv3.WithCountOnly())).
		Commit()
	if err != nil {
		return false, 0, s.failed(id, wrapErr("delete-cas "+strconv.Quote(key), err))
	}
	rev = resp.Header.Revision
	if !resp.Succeeded {
		return resp.Responses[0].GetResponseRange().GetCount() == 0, rev, nil
	}
	if resp.Responses[0].GetResponseDeleteRange().GetDeleted() > 0 {
		s.writes.Record(key, false, true, uint64(rev))
	}
	return true, rev, nil
}
