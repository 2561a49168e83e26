package consulkv

import (
	"context"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/kvstore"
)

// Names of the kinds Register adds to a cache.
const (
	KindKey    = "consul-key"
	KindPrefix = "consul-prefix"
	KindKeys   = "consul-keys"
)

// read is one of the three reads: it parses a request key and reads its
// range with a consul/api client. key is the key or the prefix.
type read[V any] struct {
	parse   func(reqKey string) (key, sep string, err error)
	get     func(cli *api.Client, key, sep string, q *api.QueryOptions) (V, *api.QueryMeta, error)
	isRange bool
}

// path returns key as consul/api's KV reads and deletes take it: they
// strip one leading '/', so one is added and every key is sent as is.
func path(key string) string { return "/" + key }

var readKey = read[kvstore.Key]{
	parse: func(k string) (string, string, error) {
		key, err := kvstore.ParseKey(k)
		return key, "", err
	},
	get: func(cli *api.Client, key, _ string, q *api.QueryOptions) (kvstore.Key, *api.QueryMeta, error) {
		p, meta, err := cli.KV().Get(path(key), q)
		if err != nil || p == nil {
			return kvstore.NewKey(kvstore.Entry{Key: key}, false), meta, err
		}
		return kvstore.NewKey(entryOf(p), true), meta, nil
	},
}

var readPrefix = read[kvstore.Prefix]{
	parse: func(k string) (string, string, error) {
		prefix, err := kvstore.ParsePrefix(k)
		return prefix, "", err
	},
	get: func(cli *api.Client, prefix, _ string, q *api.QueryOptions) (kvstore.Prefix, *api.QueryMeta, error) {
		pairs, meta, err := cli.KV().List(path(prefix), q)
		if err != nil {
			return kvstore.Prefix{}, meta, err
		}
		entries := make([]kvstore.Entry, len(pairs))
		for i, p := range pairs {
			entries[i] = entryOf(p)
		}
		return kvstore.NewPrefix(entries), meta, nil
	},
	isRange: true,
}

var readKeys = read[kvstore.KeyList]{
	parse: kvstore.ParseKeys,
	get: func(cli *api.Client, prefix, sep string, q *api.QueryOptions) (kvstore.KeyList, *api.QueryMeta, error) {
		keys, meta, err := cli.KV().Keys(path(prefix), sep, q)
		return kvstore.NewKeyList(keys), meta, err
	},
	isRange: true,
}

func entryOf(p *api.KVPair) kvstore.Entry {
	return kvstore.Entry{Key: p.Key, Value: p.Value, Flags: p.Flags, CreateIndex: p.CreateIndex, ModifyIndex: p.ModifyIndex}
}

// earlyPause is the shortest time between two blocking queries of one
// fetch that came back before their wait with the same index: Consul may
// do that, and a server that does it at once must not make the fetch
// spin. It doubles up to a second.
const earlyPause = 50 * time.Millisecond

// fetch is the fetch function of a read: a blocking query from
// opts.MinIndex, re-issued while it returns early with that same index.
func fetch[V any](s *Source, r read[V]) watchcache.FetchFunc[V] {
	return func(ctx context.Context, opts watchcache.FetchOptions[V], req watchcache.Request) (watchcache.FetchResult[V], error) {
		var none watchcache.FetchResult[V]
		key, sep, err := r.parse(req.Key)
		if err != nil {
			return none, watchcache.Fatal(err)
		}
		id, err := s.client(req.Partition)
		if err != nil {
			return none, watchcache.Fatal(err)
		}
		deadline := time.Now().Add(opts.Timeout)
		pause := earlyPause
		for {
			q := &api.QueryOptions{Token: id.token}
			if opts.MinIndex > 0 {
				q.WaitIndex, q.WaitTime = opts.MinIndex, min(time.Until(deadline), s.cfg.QueryTimeout)
			}
			v, meta, err := r.get(id.cli, key, sep, q.WithContext(ctx))
			if err != nil {
				if ctx.Err() != nil {
					return none, ctx.Err()
				}
				return none, classify("read "+describe(key, r.isRange), err, true)
			}
			left := time.Until(deadline)
			if opts.MinIndex == 0 || meta.LastIndex != opts.MinIndex || left <= 0 {
				return watchcache.FetchResult[V]{Value: v, Index: meta.LastIndex}, nil
			}
			// Back before its wait with the same index: ask again.
			t := time.NewTimer(min(pause, left))
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return none, ctx.Err()
			}
			pause = min(2*pause, time.Second)
		}
	}
}

// direct reads a range from the server, consistently, bypassing the cache.
func direct[V any](ctx context.Context, s *Source, r read[V], req watchcache.Request) (V, watchcache.ResultMeta, error) {
	var zero V
	key, sep, err := r.parse(req.Key)
	if err != nil {
		return zero, watchcache.ResultMeta{}, err
	}
	id, err := s.client(req.Partition)
	if err != nil {
		return zero, watchcache.ResultMeta{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	v, meta, err := r.get(id.cli, key, sep, (&api.QueryOptions{Token: id.token, RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return zero, watchcache.ResultMeta{}, classify("read "+describe(key, r.isRange), err, false)
	}
	return v, watchcache.ResultMeta{Index: max(meta.LastIndex, 1)}, nil
}

// describe names a range in messages.
func describe(key string, isRange bool) string {
	if isRange {
		return `"` + key + `" (prefix)`
	}
	return `"` + key + `"`
}
