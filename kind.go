package watchcache

import (
	"fmt"
	"hash/maphash"
	"sync"
	"time"
)

// Defaults for KindOptions, as in Consul's agent/cache.
const (
	// DefaultQueryTimeout bounds each background blocking fetch.
	DefaultQueryTimeout = 10 * time.Minute
	// DefaultLastGetTTL is how long an unwatched entry lives after its
	// last Get.
	DefaultLastGetTTL = 72 * time.Hour
	// DefaultReleaseAfter is how long an entry nobody reads or watches
	// keeps its upstream subscription.
	DefaultReleaseAfter = 10 * time.Minute
)

// KindOptions describe how a kind's entries are fetched and kept. The zero
// value is a kind that fetches on demand, without blocking, and keeps
// entries for DefaultLastGetTTL.
type KindOptions struct {
	// Refresh keeps every entry of the kind fresh in the background, from
	// its first fetch until it is evicted: with blocking fetches for
	// blocking kinds, every RefreshTimer otherwise.
	Refresh bool

	// SupportsBlocking says the fetch function honours MinIndex and
	// Timeout by waiting for a change. Watchers of such kinds follow the
	// index; watchers of other ("polling") kinds must give a MaxAge and
	// are notified only when the value changes.
	SupportsBlocking bool

	// RefreshTimer is the pause between background fetches of a refresh
	// kind. It is required for refresh kinds without SupportsBlocking.
	RefreshTimer time.Duration

	// QueryTimeout bounds each background fetch; 0 means
	// DefaultQueryTimeout.
	QueryTimeout time.Duration

	// LastGetTTL is how long an entry that nobody watches lives after its
	// last Get; 0 means DefaultLastGetTTL.
	LastGetTTL time.Duration

	// ReleaseAfter is how long an entry that nobody reads or watches keeps
	// its upstream subscription: then its background refresh stops and
	// its State is closed (an etcd watch, a connection), and only its last
	// value is kept until LastGetTTL; the next Get or Notify revalidates
	// it with a fetch before using it. 0 means DefaultReleaseAfter; a
	// negative value, never (entries refresh until LastGetTTL, as in
	// Consul).
	ReleaseAfter time.Duration
}

func (o KindOptions) withDefaults() (KindOptions, error) {
	switch {
	case o.RefreshTimer < 0:
		return o, invalidf("negative RefreshTimer %v", o.RefreshTimer)
	case o.QueryTimeout < 0:
		return o, invalidf("negative QueryTimeout %v", o.QueryTimeout)
	case o.LastGetTTL < 0:
		return o, invalidf("negative LastGetTTL %v", o.LastGetTTL)
	case o.Refresh && !o.SupportsBlocking && o.RefreshTimer == 0:
		return o, invalidf("a refresh kind without SupportsBlocking needs a RefreshTimer, or it would fetch in a busy loop")
	}
	if o.QueryTimeout == 0 {
		o.QueryTimeout = DefaultQueryTimeout
	}
	if o.LastGetTTL == 0 {
		o.LastGetTTL = DefaultLastGetTTL
	}
	if o.ReleaseAfter == 0 {
		o.ReleaseAfter = DefaultReleaseAfter
	}
	return o, nil
}

// numShards splits each kind's entry map so that creating entries does not
// stall hits on unrelated keys.
const numShards = 16

// Kind is a registered kind of data whose values have type V. Get it from
// Register or KindOf; the zero value is not usable. Its methods are safe for
// concurrent use.
type Kind[V any] struct {
	c       *Cache
	name    string
	fetcher Fetcher[V]
	async   AsyncFetcher[V] // fetcher, if it pushes (async.go)
	opts    KindOptions
	m       *kindMetrics
	seed    maphash.Seed
	shards  [numShards]shard[V]
}

// shard is one part of a kind's entries. Entries of the zero Partition
// (no token: the common case) are keyed by their key alone, which halves a
// map slot (a key is 16 bytes, an entryKey 48); the others by entryKey.
type shard[V any] struct {
	mu sync.RWMutex         // protects the maps
	m0 map[string]*entry[V] // entries of the zero Partition
	m  map[entryKey]*entry[V]
}

func (s *shard[V]) get(ek entryKey) *entry[V] {
	if ek.part == (Partition{}) {
		return s.m0[ek.key]
	}
	return s.m[ek]
}

func (s *shard[V]) put(e *entry[V]) {
	if e.key.part == (Partition{}) {
		s.m0[e.key.key] = e
		return
	}
	s.m[e.key] = e
}

func (s *shard[V]) del(ek entryKey) {
	if ek.part == (Partition{}) {
		delete(s.m0, ek.key)
		return
	}
	delete(s.m, ek)
}

// all calls f on the shard's entries, in the maps' (random) order, until
// f returns false.
func (s *shard[V]) all(f func(*entry[V]) bool) {
	for _, e := range s.m0 {
		if !f(e) {
			return
		}
	}
	for _, e := range s.m {
		if !f(e) {
			return
		}
	}
}

// Register adds a kind named name to c, fetched by f. Names are unique per
// cache; registering one twice is an error wrapping ErrDuplicateKind.
func Register[V any](c *Cache, name string, f Fetcher[V], opts KindOptions) (*Kind[V], error) {
	if name == "" {
		return nil, invalidf("empty kind name")
	}
	if f == nil {
		return nil, invalidf("nil Fetcher for kind %q", name)
	}
	if ff, ok := f.(FetchFunc[V]); ok && ff == nil {
		return nil, invalidf("nil FetchFunc for kind %q", name)
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("kind %q: %w", name, err)
	}
	k := &Kind[V]{c: c, name: name, fetcher: f, opts: opts, seed: maphash.MakeSeed()}
	k.async, _ = f.(AsyncFetcher[V])
	for i := range k.shards {
		k.shards[i].m0 = make(map[string]*entry[V])
		k.shards[i].m = make(map[entryKey]*entry[V])
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	if _, dup := c.kinds[name]; dup {
		return nil, fmt.Errorf("%w: %q", ErrDuplicateKind, name)
	}
	k.m = c.metrics.forKind(name)
	c.kinds[name] = k
	return k, nil
}

// KindOf returns the kind registered under name, which must have values of
// type V.
func KindOf[V any](c *Cache, name string) (*Kind[V], error) {
	c.mu.Lock()
	k, ok := c.kinds[name]
	c.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownKind, name)
	}
	typed, ok := k.(*Kind[V])
	if !ok {
		var v V
		return nil, fmt.Errorf("%w: %q does not hold %T", ErrKindType, name, v)
	}
	return typed, nil
}

// Name returns the name the kind was registered under.
func (k *Kind[V]) Name() string { return k.name }

func (k *Kind[V]) shardFor(key string) *shard[V] {
	return &k.shards[maphash.String(k.seed, key)%numShards]
}

// lookup returns the entry for ek, or nil.
func (k *Kind[V]) lookup(ek entryKey) *entry[V] {
	s := k.shardFor(ek.key)
	s.mu.RLock()
	e := s.get(ek)
	s.mu.RUnlock()
	return e
}

// entryFor returns the entry for ek, creating it if needed. It fails only
// when the cache is closed.
func (k *Kind[V]) entryFor(ek entryKey) (*entry[V], error) {
	if k.c.isClosed() {
		return nil, ErrClosed // entries of a closed cache are retired but stay in the map
	}
	if e := k.lookup(ek); e != nil {
		return e, nil
	}
	s := k.shardFor(ek.key)
	s.mu.Lock()
	if e := s.get(ek); e != nil {
		s.mu.Unlock()
		return e, nil
	}
	// Checked under the shard lock: Close sets the flag before it walks the
	// shards, so an entry created here is either refused or seen by Close.
	if k.c.isClosed() {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	k.c.useClock.Add(1)
	e := newEntry(k, ek)
	// In the expiry heap before it can be found: an eviction racing with
	// this must find it there to take it out.
	k.c.exp.schedule(e, time.Now().Add(e.expiryCheck()))
	s.put(e)
	s.mu.Unlock()

	k.m.entries.Inc()
	k.c.count.Add(1)
	k.c.enforceCapacity(e)
	return e, nil
}

// lockEntry returns the entry for ek, created if needed, with its mu held.
// An entry evicted between the lookup and the lock is gone from the map by
// then (eviction removes it under its lock), so the next lookup finds or
// makes its successor.
func (k *Kind[V]) lockEntry(ek entryKey) (*entry[V], error) {
	for {
		e, err := k.entryFor(ek)
		if err != nil {
			return nil, err
		}
		e.mu.Lock()
		if !e.evicted {
			return e, nil
		}
		e.mu.Unlock()
	}
}

// remove deletes e from its shard if it is still the entry for its key.
func (k *Kind[V]) remove(e *entry[V]) bool {
	s := k.shardFor(e.key.key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.get(e.key) != e {
		return false
	}
	s.del(e.key)
	return true
}

// forEach calls f on every entry. f runs without shard locks held.
func (k *Kind[V]) forEach(f func(*entry[V])) {
	var batch []*entry[V]
	for i := range k.shards {
		s := &k.shards[i]
		s.mu.RLock()
		batch = batch[:0]
		s.all(func(e *entry[V]) bool {
			batch = append(batch, e)
			return true
		})
		s.mu.RUnlock()
		for _, e := range batch {
			f(e)
		}
	}
}

// kindHandle is what the Cache needs of a kind, whatever its value type.
type kindHandle interface {
	metrics() *kindMetrics
	closeAll()
	setRate(r rateSetting)
	sample(start, max int, visit func(victim)) int
}

func (k *Kind[V]) metrics() *kindMetrics { return k.m }

func (k *Kind[V]) closeAll() { k.forEach(func(e *entry[V]) { e.close() }) }

func (k *Kind[V]) setRate(r rateSetting) {
	k.forEach(func(e *entry[V]) {
		e.mu.Lock()
		defer e.mu.Unlock()
		if e.limiter != nil {
			r.apply(e.limiter)
		}
	})
}

// sample visits up to max entries, starting at shard start, and returns the
// number visited. It is used to find eviction victims without an LRU list.
func (k *Kind[V]) sample(start, max int, visit func(victim)) int {
	n := 0
	for i := 0; i < numShards && n < max; i++ {
		s := &k.shards[(start+i)%numShards]
		s.mu.RLock()
		s.all(func(e *entry[V]) bool { // map iteration order is random
			visit(e)
			n++
			return n < max
		})
		s.mu.RUnlock()
	}
	return n
}
