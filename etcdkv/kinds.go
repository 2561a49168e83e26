package etcdkv

import (
	"context"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/kvstore"
)

// Names of the kinds Register adds to a cache.
const (
	KindKey    = "etcd-key"
	KindPrefix = "etcd-prefix"
	KindKeys   = "etcd-keys"
)

// Kinds are the kinds a Source registered on a cache; get them from
// Register. Use their Get methods for reads that must see this process's
// writes; the Kind fields serve everything else (Notify, NotifyCallback,
// Get without that need).
type Kinds struct {
	// Key is one key (KeyRequest), Prefix every key under a prefix
	// (PrefixRequest), Keys the key names under a prefix (KeysRequest).
	Key    *watchcache.Kind[Key]
	Prefix *watchcache.Kind[Prefix]
	Keys   *watchcache.Kind[KeyList]

	s *Source
}

// Register adds the kinds KindKey, KindPrefix and KindKeys to c. All three
// refresh in the background with blocking fetches, one etcd watch per
// entry, however many Gets and watchers share the entry.
func (s *Source) Register(c *watchcache.Cache) (*Kinds, error) {
	opts := watchcache.KindOptions{
		Refresh:          true,
		SupportsBlocking: true,
		QueryTimeout:     s.cfg.QueryTimeout,
		LastGetTTL:       s.cfg.LastGetTTL,
		ReleaseAfter:     s.cfg.ReleaseAfter,
	}
	k := &Kinds{s: s}
	var err error
	if k.Key, err = watchcache.Register(c, KindKey, fetcher(s, parseKeyKey, deriveKey), opts); err != nil {
		return nil, err
	}
	if k.Prefix, err = watchcache.Register(c, KindPrefix, fetcher(s, parsePrefixKey, derivePrefix), opts); err != nil {
		return nil, err
	}
	if k.Keys, err = watchcache.Register(c, KindKeys, fetcher(s, parseKeysKey, deriveKeys), opts); err != nil {
		return nil, err
	}
	return k, nil
}

func fetcher[V any](s *Source, parse func(string) (spec, error), derive func(spec, []Entry) V) rangeFetcher[V] {
	return rangeFetcher[V]{s: s, parse: parse, derive: derive}
}

// GetKey is k.Key.Get that also sees this process's writes: after a Put,
// CompareAndSwap, Delete, DeletePrefix or DeleteCAS of the Source has
// returned, GetKey of a key it wrote returns the written state or a newer
// one (read-your-writes), without waiting for the watch longer than
// Config.ReadYourWritesWait.
func (k *Kinds) GetKey(ctx context.Context, req watchcache.Request) (Key, watchcache.ResultMeta, error) {
	sp, err := parseKeyKey(req.Key)
	if err != nil {
		return Key{}, watchcache.ResultMeta{}, err
	}
	return getConsistent(ctx, k.s, k.Key, sp, deriveKey, req)
}

// GetPrefix is k.Prefix.Get with read-your-writes, as GetKey.
func (k *Kinds) GetPrefix(ctx context.Context, req watchcache.Request) (Prefix, watchcache.ResultMeta, error) {
	sp, err := parsePrefixKey(req.Key)
	if err != nil {
		return Prefix{}, watchcache.ResultMeta{}, err
	}
	return getConsistent(ctx, k.s, k.Prefix, sp, derivePrefix, req)
}

// GetKeys is k.Keys.Get with read-your-writes, as GetKey.
func (k *Kinds) GetKeys(ctx context.Context, req watchcache.Request) (KeyList, watchcache.ResultMeta, error) {
	sp, err := parseKeysKey(req.Key)
	if err != nil {
		return KeyList{}, watchcache.ResultMeta{}, err
	}
	return getConsistent(ctx, k.s, k.Keys, sp, deriveKeys, req)
}

// getConsistent gets req from the cache with read-your-writes for sp's
// range (kvstore.ReadYourWrites): the watch is normally milliseconds
// behind a write, and a read from etcd with the caller's identity covers
// one that is stuck or far behind.
func getConsistent[V any](ctx context.Context, s *Source, kind *watchcache.Kind[V], sp spec, derive func(spec, []Entry) V, req watchcache.Request) (V, watchcache.ResultMeta, error) {
	return kvstore.ReadYourWrites(ctx, &s.writes, kind, sp.key, sp.isRange(), req, s.cfg.ReadYourWritesWait,
		func(ctx context.Context) (V, watchcache.ResultMeta, error) {
			s.log.Debug("etcdkv: entry has not caught up with a write of this process; reading from etcd", "range", sp.describe())
			return readValue(ctx, s, sp, req.Partition, derive)
		})
}

// readValue reads sp's range from etcd with p's identity, bypassing the
// cache.
func readValue[V any](ctx context.Context, s *Source, sp spec, p watchcache.Partition, derive func(spec, []Entry) V) (V, watchcache.ResultMeta, error) {
	var zero V
	id, err := s.acquire(p)
	if err != nil {
		return zero, watchcache.ResultMeta{}, err
	}
	defer s.release(id)
	kvs, rev, err := s.read(ctx, id, sp)
	if err != nil {
		return zero, watchcache.ResultMeta{}, err
	}
	return derive(sp, kvs), watchcache.ResultMeta{Index: freshIndex(sp, kvs, rev)}, nil
}
