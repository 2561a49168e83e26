package etcdkv

import (
	"context"
	"errors"
	"strings"
	"sync"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/kvstore"
)

// Store is etcd as a kvstore.Store: the Source's kinds, writes, identities
// and health, for an agent that serves any store. Make one with NewStore.
type Store struct {
	src    *Source
	kinds  *Kinds
	tokens map[string]TokenUser

	ignoredToken sync.Once // logs the first token ignored
}

var _ kvstore.Store = (*Store)(nil)

// NewStore returns src, with the kinds Register made for it, as a
// kvstore.Store. tokens maps the tokens clients present (Consul's
// X-Consul-Token) to etcd users; see LoadTokens.
func NewStore(src *Source, kinds *Kinds, tokens map[string]TokenUser) *Store {
	return &Store{src: src, kinds: kinds, tokens: tokens}
}

// Kinds implements kvstore.Store.
func (s *Store) Kinds() *kvstore.Kinds {
	return &kvstore.Kinds{Key: s.kinds.Key, Prefix: s.kinds.Prefix, Keys: s.kinds.Keys}
}

// GetKey, GetPrefix, GetKeys, ReadKey, ReadPrefix and ReadKeys implement
// kvstore.Store with the Kinds' methods of the same names.
func (s *Store) GetKey(ctx context.Context, req watchcache.Request) (Key, watchcache.ResultMeta, error) {
	return s.kinds.GetKey(ctx, req)
}

func (s *Store) GetPrefix(ctx context.Context, req watchcache.Request) (Prefix, watchcache.ResultMeta, error) {
	return s.kinds.GetPrefix(ctx, req)
}

func (s *Store) GetKeys(ctx context.Context, req watchcache.Request) (KeyList, watchcache.ResultMeta, error) {
	return s.kinds.GetKeys(ctx, req)
}

func (s *Store) ReadKey(ctx context.Context, req watchcache.Request) (Key, watchcache.ResultMeta, error) {
	return s.kinds.ReadKey(ctx, req)
}

func (s *Store) ReadPrefix(ctx context.Context, req watchcache.Request) (Prefix, watchcache.ResultMeta, error) {
	return s.kinds.ReadPrefix(ctx, req)
}

func (s *Store) ReadKeys(ctx context.Context, req watchcache.Request) (KeyList, watchcache.ResultMeta, error) {
	return s.kinds.ReadKeys(ctx, req)
}

// Put implements kvstore.Store.
func (s *Store) Put(ctx context.Context, p watchcache.Partition, key string, value []byte) error {
	_, err := s.src.Put(ctx, p, key, value)
	return err
}

// CompareAndSwap implements kvstore.Store. An index beyond etcd's
// revisions matches no key.
func (s *Store) CompareAndSwap(ctx context.Context, p watchcache.Partition, key string, value []byte, index uint64) (bool, error) {
	rev, ok := revision(index)
	if !ok {
		return false, nil
	}
	ok, _, err := s.src.CompareAndSwap(ctx, p, key, value, rev)
	return ok, err
}

// Delete implements kvstore.Store.
func (s *Store) Delete(ctx context.Context, p watchcache.Partition, key string) error {
	_, err := s.src.Delete(ctx, p, key)
	return err
}

// DeletePrefix implements kvstore.Store.
func (s *Store) DeletePrefix(ctx context.Context, p watchcache.Partition, prefix string) error {
	_, err := s.src.DeletePrefix(ctx, p, prefix)
	return err
}

// DeleteCAS implements kvstore.Store.
func (s *Store) DeleteCAS(ctx context.Context, p watchcache.Partition, key string, index uint64) (bool, error) {
	rev, ok := revision(index)
	if !ok {
		return false, nil
	}
	ok, _, err := s.src.DeleteCAS(ctx, p, key, rev)
	return ok, err
}

// revision converts an index to an etcd revision; ok is false for one no
// key can have.
func revision(index uint64) (int64, bool) {
	if index > 1<<63-1 {
		return 0, false
	}
	return int64(index), true
}

// errNoToken is a token that the tokens do not list, in Consul's words.
var errNoToken error = aclNotFound{}

type aclNotFound struct{}

func (aclNotFound) Error() string        { return "ACL not found" }
func (aclNotFound) Is(target error) bool { return target == kvstore.ErrAuthFailed }

// Identify implements kvstore.Store: basic auth names an etcd user and
// password (Login); a token is mapped to one by the tokens the Store was
// made with. As Consul without ACLs does, a Store with no tokens ignores
// tokens while etcd's authentication is off (clients with
// CONSUL_HTTP_TOKEN set keep working); it logs the first one it ignores.
func (s *Store) Identify(ctx context.Context, c kvstore.Credentials) (watchcache.Partition, error) {
	switch {
	case c.User != "" && c.Token != "":
		return watchcache.Partition{}, errors.New("etcdkv: both basic auth and a token were given")
	case c.User != "" || c.Password != "":
		return s.src.Login(ctx, c.User, c.Password)
	case c.Token != "":
		u, ok := s.tokens[c.Token]
		switch {
		case ok:
			return s.src.Login(ctx, u.User, u.Password)
		case len(s.tokens) == 0:
			on, err := s.src.authEnabled(ctx)
			if err != nil {
				return watchcache.Partition{}, err
			}
			if !on {
				s.ignoredToken.Do(func() {
					s.src.log.Warn("etcdkv: a request carried a token, but no tokens are configured and etcd's authentication is off: tokens are ignored, as Consul without ACLs ignores them")
				})
				return watchcache.Partition{}, nil
			}
		}
		return watchcache.Partition{}, errNoToken
	}
	return watchcache.Partition{}, nil
}

// Health implements kvstore.Store with Source.Health.
func (s *Store) Health(ctx context.Context) (kvstore.Health, error) {
	h, err := s.src.Health(ctx)
	if err != nil {
		return kvstore.Health{}, err
	}
	return kvstore.Health{Reachable: true, Leader: h.Leader, Index: uint64(max(h.Revision, 0)), Endpoint: h.Endpoint,
		LeaderAddr: h.LeaderAddr, Peers: h.Peers}, nil
}

// Describe implements kvstore.Store.
func (s *Store) Describe() string {
	return "etcd " + strings.Join(s.src.cfg.Endpoints, ",")
}

// Who implements kvstore.Store: the etcd user, or "self" for the source's
// own identity.
func (s *Store) Who(p watchcache.Partition) string {
	if user, _, ok := parsePartition(p.Token); ok {
		return user
	}
	return "self"
}
