package consulkv

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/kvstore"
)

// Store is the source as a kvstore.Store, with its kinds registered on a
// cache. Get one from Register.
type Store struct {
	s     *Source
	kinds *kvstore.Kinds
}

var _ kvstore.Store = (*Store)(nil)

// Register adds the kinds KindKey, KindPrefix and KindKeys to c and
// returns the Store that serves them. All three refresh in the background
// with one blocking query per entry, however many readers and watchers
// share it.
func (s *Source) Register(c *watchcache.Cache) (*Store, error) {
	opts := watchcache.KindOptions{Refresh: true, SupportsBlocking: true, QueryTimeout: s.cfg.QueryTimeout, LastGetTTL: s.cfg.LastGetTTL, ReleaseAfter: s.cfg.ReleaseAfter}
	k := &kvstore.Kinds{}
	var err error
	if k.Key, err = watchcache.Register(c, KindKey, fetch(s, readKey), opts); err != nil {
		return nil, err
	}
	if k.Prefix, err = watchcache.Register(c, KindPrefix, fetch(s, readPrefix), opts); err != nil {
		return nil, err
	}
	if k.Keys, err = watchcache.Register(c, KindKeys, fetch(s, readKeys), opts); err != nil {
		return nil, err
	}
	return &Store{s: s, kinds: k}, nil
}

// Kinds implements kvstore.Store.
func (st *Store) Kinds() *kvstore.Kinds { return st.kinds }

// get is a cached read with read-your-writes.
func get[V any](ctx context.Context, st *Store, kind *watchcache.Kind[V], r read[V], req watchcache.Request) (V, watchcache.ResultMeta, error) {
	key, _, err := r.parse(req.Key)
	if err != nil {
		var zero V
		return zero, watchcache.ResultMeta{}, err
	}
	return kvstore.ReadYourWrites(ctx, &st.s.writes, kind, key, r.isRange, req, st.s.cfg.ReadYourWritesWait,
		func(ctx context.Context) (V, watchcache.ResultMeta, error) { return direct(ctx, st.s, r, req) })
}

// GetKey implements kvstore.Store.
func (st *Store) GetKey(ctx context.Context, req watchcache.Request) (kvstore.Key, watchcache.ResultMeta, error) {
	return get(ctx, st, st.kinds.Key, readKey, req)
}

// GetPrefix implements kvstore.Store.
func (st *Store) GetPrefix(ctx context.Context, req watchcache.Request) (kvstore.Prefix, watchcache.ResultMeta, error) {
	return get(ctx, st, st.kinds.Prefix, readPrefix, req)
}

// GetKeys implements kvstore.Store.
func (st *Store) GetKeys(ctx context.Context, req watchcache.Request) (kvstore.KeyList, watchcache.ResultMeta, error) {
	return get(ctx, st, st.kinds.Keys, readKeys, req)
}

// ReadKey implements kvstore.Store: a consistent read (?consistent).
func (st *Store) ReadKey(ctx context.Context, req watchcache.Request) (kvstore.Key, watchcache.ResultMeta, error) {
	return direct(ctx, st.s, readKey, req)
}

// ReadPrefix implements kvstore.Store.
func (st *Store) ReadPrefix(ctx context.Context, req watchcache.Request) (kvstore.Prefix, watchcache.ResultMeta, error) {
	return direct(ctx, st.s, readPrefix, req)
}

// ReadKeys implements kvstore.Store.
func (st *Store) ReadKeys(ctx context.Context, req watchcache.Request) (kvstore.KeyList, watchcache.ResultMeta, error) {
	return direct(ctx, st.s, readKeys, req)
}

// Put implements kvstore.Store.
func (st *Store) Put(ctx context.Context, p watchcache.Partition, key string, value []byte) error {
	_, err := st.put(ctx, p, key, value, nil)
	return err
}

// CompareAndSwap implements kvstore.Store with ?cas=.
func (st *Store) CompareAndSwap(ctx context.Context, p watchcache.Partition, key string, value []byte, index uint64) (bool, error) {
	return st.put(ctx, p, key, value, &index)
}

// put writes key with PUT /v1/kv/<key>[?cas=]. It makes the request
// itself: consul/api refuses keys that begin with '/', which are keys like
// any other to a watchcache agent upstream (and to etcd behind it).
func (st *Store) put(ctx context.Context, p watchcache.Partition, key string, value []byte, cas *uint64) (bool, error) {
	if key == "" {
		return false, invalidf("put: empty key")
	}
	id, err := st.s.client(p)
	if err != nil {
		return false, err
	}
	u := *st.s.base
	u.Path, u.RawQuery = "/v1/kv/"+key, ""
	if cas != nil {
		u.RawQuery = url.Values{"cas": {strconv.FormatUint(*cas, 10)}}.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u.String(), strings.NewReader(string(value)))
	if err != nil {
		return false, invalidf("put %q: %v", key, err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	if id.token != "" {
		req.Header.Set("X-Consul-Token", id.token)
	}
	if id.user != "" || id.password != "" {
		req.SetBasicAuth(id.user, id.password)
	}
	resp, err := st.s.http.Do(req)
	if err != nil {
		return false, classify("put "+strconv.Quote(key), err, false)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return false, classify("put "+strconv.Quote(key), api.StatusError{Code: resp.StatusCode, Body: string(body)}, false)
	}
	ok := strings.TrimSpace(string(body)) == "true"
	if ok {
		st.recordWrite(ctx, id, key, false, false)
	}
	return ok, nil
}

// Delete implements kvstore.Store.
func (st *Store) Delete(ctx context.Context, p watchcache.Partition, key string) error {
	return st.remove(ctx, p, key, false, nil)
}

// DeletePrefix implements kvstore.Store.
func (st *Store) DeletePrefix(ctx context.Context, p watchcache.Partition, prefix string) error {
	return st.remove(ctx, p, prefix, true, nil)
}

// DeleteCAS implements kvstore.Store.
func (st *Store) DeleteCAS(ctx context.Context, p watchcache.Partition, key string, index uint64) (bool, error) {
	ok := false
	err := st.remove(ctx, p, key, false, func(kv *api.KV, w *api.WriteOptions) (err error) {
		ok, _, err = kv.DeleteCAS(&api.KVPair{Key: path(key), ModifyIndex: index}, w)
		return err
	})
	return ok, err
}

// remove deletes key (or every key under it if prefix), with del if given.
func (st *Store) remove(ctx context.Context, p watchcache.Partition, key string, prefix bool, del func(*api.KV, *api.WriteOptions) error) error {
	if key == "" && !prefix {
		return invalidf("delete: empty key")
	}
	id, err := st.s.client(p)
	if err != nil {
		return err
	}
	w := (&api.WriteOptions{Token: id.token}).WithContext(ctx)
	switch {
	case del != nil:
		err = del(id.cli.KV(), w)
	case prefix:
		_, err = id.cli.KV().DeleteTree(path(key), w)
	default:
		_, err = id.cli.KV().Delete(path(key), w)
	}
	if err != nil {
		return classify("delete "+describe(key, prefix), err, false)
	}
	st.recordWrite(ctx, id, key, prefix, true)
	return nil
}

// recordWrite learns, with one consistent read of what a write changed, an
// index at which the write is visible, and records it for read-your-writes.
// If that read fails (a write-only token), the write is not recorded: the
// identity cannot read it through the cache either.
func (st *Store) recordWrite(ctx context.Context, id ident, key string, prefix, del bool) {
	ctx, cancel := context.WithTimeout(ctx, st.s.cfg.RequestTimeout)
	defer cancel()
	q := (&api.QueryOptions{Token: id.token, RequireConsistent: true}).WithContext(ctx)
	var (
		meta *api.QueryMeta
		err  error
	)
	if prefix {
		_, meta, err = id.cli.KV().Keys(path(key), "", q)
	} else {
		_, meta, err = id.cli.KV().Get(path(key), q)
	}
	if err != nil {
		st.s.log.Debug("consulkv: no index for a write; reads may not see it at once", "key", key, "error", err)
		return
	}
	st.s.writes.Record(key, prefix, del, meta.LastIndex)
}

// Identify implements kvstore.Store: a token is the identity; basic auth
// credentials are kept to be passed along. Neither is checked here: the
// server checks every request, and refuses them with 403.
func (st *Store) Identify(_ context.Context, c kvstore.Credentials) (watchcache.Partition, error) {
	return st.s.identify(c)
}

// Health implements kvstore.Store: /v1/status/leader.
func (st *Store) Health(ctx context.Context) (kvstore.Health, error) {
	ctx, cancel := context.WithTimeout(ctx, st.s.cfg.RequestTimeout)
	defer cancel()
	leader, err := st.s.cli.Status().LeaderWithQueryOptions((&api.QueryOptions{Token: st.s.cfg.Token}).WithContext(ctx))
	if err != nil {
		return kvstore.Health{}, classify("status", err, false)
	}
	peers, err := st.s.cli.Status().PeersWithQueryOptions((&api.QueryOptions{Token: st.s.cfg.Token}).WithContext(ctx))
	if err != nil {
		return kvstore.Health{}, classify("status", err, false)
	}
	return kvstore.Health{Reachable: true, Leader: leader != "", Endpoint: st.s.base.Host, LeaderAddr: leader, Peers: peers}, nil
}

// Describe implements kvstore.Store.
func (st *Store) Describe() string { return "consul " + st.s.base.String() }

// Who implements kvstore.Store: the basic-auth user, a digest of a token
// (never the token), or "self" for the source's own token.
func (st *Store) Who(p watchcache.Partition) string {
	switch {
	case strings.HasPrefix(p.Token, tokenPrefix):
		sum := sha256.Sum256([]byte(strings.TrimPrefix(p.Token, tokenPrefix)))
		return "token:" + hex.EncodeToString(sum[:4])
	case strings.HasPrefix(p.Token, basicPrefix):
		user, _, _ := strings.Cut(strings.TrimPrefix(p.Token, basicPrefix), ":")
		return user
	}
	return "self"
}
