// Package memstore is an in-memory kvstore.Store for tests of what stands
// on the interface (the agent's HTTP contract): a map of keys with a global
// index, blocking reads that wake on changes, users with the prefixes they
// may read and write, and switches for an outage and for a store rebuilt
// from scratch.
//
// It blocks only on channels and timers, so inside a testing/synctest
// bubble a blocking read waiting for a change is durably blocked and time
// is fake.
package memstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/kvstore"
)

// User is someone who may use the store: a password for basic auth,
// tokens that stand for it, and the key prefixes it may read and write
// ("" for every key).
type User struct {
	Password string
	Tokens   []string
	Prefixes []string
}

// Store is the in-memory store. Make one with New; the zero value is not
// usable.
type Store struct {
	kinds *kvstore.Kinds

	mu        sync.Mutex // protects the fields below
	index     uint64
	keys      map[string]kvstore.Entry
	deleted   map[string]uint64 // index at which a key was last deleted
	changed   chan struct{}     // closed and replaced on every change
	users     map[string]User
	tokens    map[string]string // token -> user
	down      error             // while set, every request fails with it
	readCalls int
}

// ErrDown is what requests fail with during an outage (SetDown).
var ErrDown = errors.New("memstore: store unreachable")

// New returns an empty store with the given users, its kinds registered
// on c.
func New(c *watchcache.Cache, users map[string]User) (*Store, error) {
	// The index starts at 1, as etcd's revision does: a key written first
	// has index 2, above the index 1 that every untouched range reports.
	s := &Store{index: 1, keys: map[string]kvstore.Entry{}, deleted: map[string]uint64{}, changed: make(chan struct{}),
		users: users, tokens: map[string]string{}}
	for name, u := range users {
		for _, t := range u.Tokens {
			s.tokens[t] = name
		}
	}
	opts := watchcache.KindOptions{Refresh: true, SupportsBlocking: true}
	k := &kvstore.Kinds{}
	var err error
	if k.Key, err = watchcache.Register(c, "mem-key", fetcher(s, readKey), opts); err != nil {
		return nil, err
	}
	if k.Prefix, err = watchcache.Register(c, "mem-prefix", fetcher(s, readPrefix), opts); err != nil {
		return nil, err
	}
	if k.Keys, err = watchcache.Register(c, "mem-keys", fetcher(s, readKeys), opts); err != nil {
		return nil, err
	}
	s.kinds = k
	return s, nil
}

var _ kvstore.Store = (*Store)(nil)

// SetDown starts (true) or ends an outage: meanwhile every request fails.
func (s *Store) SetDown(down bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down = nil
	if down {
		s.down = ErrDown
	}
	s.wakeLocked()
}

// Reset empties the store and restarts its index at 1, as a store rebuilt
// from scratch.
func (s *Store) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.index = 1
	clear(s.keys)
	clear(s.deleted)
	s.wakeLocked()
}

// Index returns the store's current index.
func (s *Store) Index() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.index
}

func (s *Store) wakeLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// userOf returns the user of a Partition ("" for the store's own, which
// may do anything).
func userOf(p watchcache.Partition) string {
	name, _ := strings.CutPrefix(p.Token, "user:")
	return name
}

// allowedLocked reports whether p may use every key of the range that
// starts with key (a single key when !prefix).
func (s *Store) allowedLocked(p watchcache.Partition, key string, prefix bool) error {
	name := userOf(p)
	if name == "" {
		return nil
	}
	u, ok := s.users[name]
	if !ok {
		return fmt.Errorf("memstore: %w", kvstore.ErrUnknownIdentity)
	}
	for _, pre := range u.Prefixes {
		if strings.HasPrefix(key, pre) {
			return nil
		}
	}
	return fmt.Errorf("memstore: %q: %w", key, kvstore.ErrPermissionDenied)
}

// read is one of the three reads: it returns the value for a request key
// and the range it covers.
type read[V any] func(s *Store, reqKey string) (v V, rangeKey string, prefix bool, err error)

func readKey(s *Store, k string) (kvstore.Key, string, bool, error) {
	key, err := kvstore.ParseKey(k)
	if err != nil {
		return kvstore.Key{}, "", false, err
	}
	e, ok := s.keys[key]
	if !ok {
		return kvstore.NewKey(kvstore.Entry{Key: key}, false), key, false, nil
	}
	return kvstore.NewKey(e, true), key, false, nil
}

func (s *Store) entriesLocked(prefix string) []kvstore.Entry {
	var out []kvstore.Entry
	for k, e := range s.keys {
		if strings.HasPrefix(k, prefix) {
			out = append(out, e)
		}
	}
	sortEntries(out)
	return out
}

func readPrefix(s *Store, k string) (kvstore.Prefix, string, bool, error) {
	prefix, err := kvstore.ParsePrefix(k)
	if err != nil {
		return kvstore.Prefix{}, "", false, err
	}
	return kvstore.NewPrefix(s.entriesLocked(prefix)), prefix, true, nil
}

func readKeys(s *Store, k string) (kvstore.KeyList, string, bool, error) {
	prefix, sep, err := kvstore.ParseKeys(k)
	if err != nil {
		return kvstore.KeyList{}, "", false, err
	}
	return kvstore.NewKeyList(kvstore.KeyNames(prefix, sep, s.entriesLocked(prefix))), prefix, true, nil
}

// rangeIndexLocked is the index of the last change of a range: its
// newest creation, modification or deletion; 1 when it never changed.
func (s *Store) rangeIndexLocked(key string, prefix bool) uint64 {
	var idx uint64 = 1
	consider := func(k string, i uint64) {
		if (prefix && strings.HasPrefix(k, key)) || (!prefix && k == key) {
			idx = max(idx, i)
		}
	}
	for k, e := range s.keys {
		consider(k, e.ModifyIndex)
	}
	for k, i := range s.deleted {
		consider(k, i)
	}
	return idx
}

// readNow serves one read under s.mu.
func readNow[V any](s *Store, r read[V], req watchcache.Request) (V, uint64, error) {
	var zero V
	if s.down != nil {
		return zero, 0, s.down
	}
	v, key, prefix, err := r(s, req.Key)
	if err != nil {
		return zero, 0, watchcache.Fatal(err)
	}
	if err := s.allowedLocked(req.Partition, key, prefix); err != nil {
		return zero, 0, watchcache.Fatal(err)
	}
	return v, s.rangeIndexLocked(key, prefix), nil
}

// fetcher is the fetch function of a read: with MinIndex it waits until
// the range's index differs from it (a change, or a reset below it), the
// timeout ends, or the store goes down.
func fetcher[V any](s *Store, r read[V]) watchcache.FetchFunc[V] {
	return func(ctx context.Context, opts watchcache.FetchOptions[V], req watchcache.Request) (watchcache.FetchResult[V], error) {
		var timeout <-chan time.Time
		if opts.MinIndex > 0 && opts.Timeout > 0 {
			t := time.NewTimer(opts.Timeout)
			defer t.Stop()
			timeout = t.C
		}
		for {
			s.mu.Lock()
			v, idx, err := readNow(s, r, req)
			changed := s.changed
			s.readCalls++
			s.mu.Unlock()
			if err != nil || opts.MinIndex == 0 || idx != opts.MinIndex {
				return watchcache.FetchResult[V]{Value: v, Index: idx}, err
			}
			select {
			case <-changed:
			case <-timeout:
				return watchcache.FetchResult[V]{Value: v, Index: idx}, nil
			case <-ctx.Done():
				return watchcache.FetchResult[V]{}, ctx.Err()
			}
		}
	}
}

// Fetches returns how many reads the kinds made.
func (s *Store) Fetches() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.readCalls
}

// Kinds implements kvstore.Store.
func (s *Store) Kinds() *kvstore.Kinds { return s.kinds }

// get is a cached read that waits for the entry to catch up with the store
// (every write here is immediately visible, so this gives read-your-writes).
func get[V any](ctx context.Context, s *Store, kind *watchcache.Kind[V], r read[V], req watchcache.Request) (V, watchcache.ResultMeta, error) {
	v, meta, err := kind.Get(ctx, req)
	if err != nil {
		return v, meta, err
	}
	s.mu.Lock()
	_, want, werr := readNow(s, r, req)
	s.mu.Unlock()
	for werr == nil && meta.Index < want {
		r := req
		r.MinIndex, r.Timeout = meta.Index, time.Second
		if v, meta, err = kind.Get(ctx, r); err != nil {
			return v, meta, err
		}
	}
	return v, meta, nil
}

// GetKey implements kvstore.Store.
func (s *Store) GetKey(ctx context.Context, req watchcache.Request) (kvstore.Key, watchcache.ResultMeta, error) {
	return get(ctx, s, s.kinds.Key, readKey, req)
}

// GetPrefix implements kvstore.Store.
func (s *Store) GetPrefix(ctx context.Context, req watchcache.Request) (kvstore.Prefix, watchcache.ResultMeta, error) {
	return get(ctx, s, s.kinds.Prefix, readPrefix, req)
}

// GetKeys implements kvstore.Store.
func (s *Store) GetKeys(ctx context.Context, req watchcache.Request) (kvstore.KeyList, watchcache.ResultMeta, error) {
	return get(ctx, s, s.kinds.Keys, readKeys, req)
}

func direct[V any](s *Store, r read[V], req watchcache.Request) (V, watchcache.ResultMeta, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, idx, err := readNow(s, r, req)
	return v, watchcache.ResultMeta{Index: idx}, err
}

// ReadKey implements kvstore.Store.
func (s *Store) ReadKey(_ context.Context, req watchcache.Request) (kvstore.Key, watchcache.ResultMeta, error) {
	return direct(s, readKey, req)
}

// ReadPrefix implements kvstore.Store.
func (s *Store) ReadPrefix(_ context.Context, req watchcache.Request) (kvstore.Prefix, watchcache.ResultMeta, error) {
	return direct(s, readPrefix, req)
}

// ReadKeys implements kvstore.Store.
func (s *Store) ReadKeys(_ context.Context, req watchcache.Request) (kvstore.KeyList, watchcache.ResultMeta, error) {
	return direct(s, readKeys, req)
}

// write runs f under s.mu after the checks every write makes.
func (s *Store) write(p watchcache.Partition, key string, prefix bool, f func()) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.down != nil {
		return s.down
	}
	if err := s.allowedLocked(p, key, prefix); err != nil {
		return err
	}
	f()
	return nil
}

func (s *Store) putLocked(key string, value []byte) {
	s.index++
	e := kvstore.Entry{Key: key, Value: value, CreateIndex: s.index, ModifyIndex: s.index}
	if old, ok := s.keys[key]; ok {
		e.CreateIndex = old.CreateIndex
	}
	s.keys[key] = e
	delete(s.deleted, key)
	s.wakeLocked()
}

func (s *Store) deleteLocked(key string) {
	if _, ok := s.keys[key]; !ok {
		return
	}
	s.index++
	delete(s.keys, key)
	s.deleted[key] = s.index
	s.wakeLocked()
}

// Put implements kvstore.Store.
func (s *Store) Put(_ context.Context, p watchcache.Partition, key string, value []byte) error {
	return s.write(p, key, false, func() { s.putLocked(key, value) })
}

// CompareAndSwap implements kvstore.Store.
func (s *Store) CompareAndSwap(_ context.Context, p watchcache.Partition, key string, value []byte, index uint64) (bool, error) {
	ok := false
	err := s.write(p, key, false, func() {
		if s.keys[key].ModifyIndex == index { // a missing key's is 0
			s.putLocked(key, value)
			ok = true
		}
	})
	return ok, err
}

// Delete implements kvstore.Store.
func (s *Store) Delete(_ context.Context, p watchcache.Partition, key string) error {
	return s.write(p, key, false, func() { s.deleteLocked(key) })
}

// DeletePrefix implements kvstore.Store.
func (s *Store) DeletePrefix(_ context.Context, p watchcache.Partition, prefix string) error {
	return s.write(p, prefix, true, func() {
		for k := range s.keys {
			if strings.HasPrefix(k, prefix) {
				s.deleteLocked(k)
			}
		}
	})
}

// DeleteCAS implements kvstore.Store.
func (s *Store) DeleteCAS(_ context.Context, p watchcache.Partition, key string, index uint64) (bool, error) {
	ok := false
	err := s.write(p, key, false, func() {
		switch e, exists := s.keys[key]; {
		case !exists:
			ok = true // as Consul: a missing key is deleted already
		case e.ModifyIndex == index:
			s.deleteLocked(key)
			ok = true
		}
	})
	return ok, err
}

// aclNotFound is an unknown token, in Consul's words.
type aclNotFound struct{}

func (aclNotFound) Error() string        { return "ACL not found" }
func (aclNotFound) Is(target error) bool { return target == kvstore.ErrAuthFailed }

// Identify implements kvstore.Store.
func (s *Store) Identify(_ context.Context, c kvstore.Credentials) (watchcache.Partition, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case c.Token != "":
		name, ok := s.tokens[c.Token]
		if !ok {
			return watchcache.Partition{}, aclNotFound{}
		}
		return watchcache.Partition{Token: "user:" + name}, nil
	case c.User != "":
		if u, ok := s.users[c.User]; !ok || u.Password != c.Password {
			return watchcache.Partition{}, fmt.Errorf("memstore: wrong user or password: %w", kvstore.ErrAuthFailed)
		}
		return watchcache.Partition{Token: "user:" + c.User}, nil
	}
	return watchcache.Partition{}, nil
}

// Health implements kvstore.Store.
func (s *Store) Health(context.Context) (kvstore.Health, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.down != nil {
		return kvstore.Health{}, s.down
	}
	return kvstore.Health{Reachable: true, Leader: true, Index: max(s.index, 1), Endpoint: "memory",
		LeaderAddr: "memory", Peers: []string{"memory"}}, nil
}

// Describe implements kvstore.Store.
func (s *Store) Describe() string { return "memory" }

func sortEntries(es []kvstore.Entry) {
	slices.SortFunc(es, func(a, b kvstore.Entry) int { return strings.Compare(a.Key, b.Key) })
}

// Who implements kvstore.Store.
func (s *Store) Who(p watchcache.Partition) string {
	if name := userOf(p); name != "" {
		return name
	}
	return "self"
}
