package etcdkv

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/etcdtest"
)

var self = watchcache.Partition{} // the source's own identity

// TestKey checks the single-key kind: revisions, blocking Gets that wake
// on a change, a missing key (index > 0, wakes when created) and deletes.
func TestKey(t *testing.T) {
	t.Parallel()
	_, f, cli := start(t)

	created := put(t, cli, "/k", "v1")
	v, meta := getKey(t, f, KeyRequest("/k", self))
	if !v.Exists || string(v.Entry.Value) != "v1" || v.Entry.Key != "/k" {
		t.Fatalf("Get /k = %+v, want v1", v)
	}
	if v.Entry.CreateIndex != uint64(created) || v.Entry.ModifyIndex != uint64(created) || meta.Index != uint64(created) {
		t.Fatalf("Get /k: revisions %+v, index %d; want create = mod = index = %d", v.Entry, meta.Index, created)
	}

	// A blocking Get returns on the next change, with its revision.
	type result struct {
		v    Key
		meta watchcache.ResultMeta
		err  error
	}
	blocking := func(r watchcache.Request) <-chan result {
		ch := make(chan result, 1)
		go func() {
			v, meta, err := f.kinds.Key.Get(testCtx(t), r)
			ch <- result{v, meta, err}
		}()
		return ch
	}
	r := KeyRequest("/k", self)
	r.MinIndex = meta.Index
	got := blocking(r)
	modified := put(t, cli, "/k", "v2")
	res := <-got
	if res.err != nil || string(res.v.Entry.Value) != "v2" || res.meta.Index != uint64(modified) {
		t.Fatalf("blocking Get after a put: %+v, index %d, err %v; want v2 at %d", res.v, res.meta.Index, res.err, modified)
	}
	if res.v.Entry.CreateIndex != uint64(created) || res.v.Entry.ModifyIndex != uint64(modified) {
		t.Fatalf("after the second put: %+v; want create %d, mod %d", res.v.Entry, created, modified)
	}

	// A deletion is a change too, at the delete's revision.
	r.MinIndex = res.meta.Index
	got = blocking(r)
	deleted := del(t, cli, "/k")
	res = <-got
	if res.err != nil || res.v.Exists || res.v.Entry.Key != "/k" || res.meta.Index != uint64(deleted) {
		t.Fatalf("blocking Get after a delete: %+v, index %d, err %v; want missing at %d", res.v, res.meta.Index, res.err, deleted)
	}

	// A key that never existed has an index (the read's revision), and a
	// blocking Get on it returns once it is created.
	v, meta = getKey(t, f, KeyRequest("/missing", self))
	if v.Exists || meta.Index == 0 {
		t.Fatalf("Get /missing = %+v, index %d; want missing with a non-zero index", v, meta.Index)
	}
	r = KeyRequest("/missing", self)
	r.MinIndex = meta.Index
	got = blocking(r)
	rev := put(t, cli, "/missing", "here")
	res = <-got
	if res.err != nil || !res.v.Exists || string(res.v.Entry.Value) != "here" || res.meta.Index != uint64(rev) {
		t.Fatalf("blocking Get on a missing key: %+v, index %d, err %v; want it created at %d", res.v, res.meta.Index, res.err, rev)
	}
}

// TestPrefixAndKeys checks the prefix and keys kinds: sorted values,
// separator listing, Notify on puts, deletes and a prefix delete.
func TestPrefixAndKeys(t *testing.T) {
	t.Parallel()
	_, f, cli := start(t)
	put(t, cli, "/p/b/d", "bd")
	put(t, cli, "/p/a", "a")
	put(t, cli, "/p/b/c", "bc")
	put(t, cli, "/q", "outside")
	last := put(t, cli, "/p0", "outside too")

	prefixes := watch(t, f.kinds.Prefix, PrefixRequest("/p/", self))
	keys := watch(t, f.kinds.Keys, KeysRequest("/p/", "/", self))
	allKeys := watch(t, f.kinds.Keys, KeysRequest("/p/", "", self))

	ev := next(t, prefixes)
	if got := prefixKeys(ev.Result); !slices.Equal(got, []string{"/p/a", "/p/b/c", "/p/b/d"}) || ev.Meta.Index != uint64(last) {
		t.Fatalf("prefix /p/: keys %v at %d, want /p/a /p/b/c /p/b/d at %d", got, ev.Meta.Index, last)
	}
	if string(ev.Result.Entries[0].Value) != "a" || string(ev.Result.Entries[1].Value) != "bc" {
		t.Fatalf("prefix /p/: values %+v", ev.Result.Entries)
	}
	if kev := next(t, keys); !slices.Equal(kev.Result.Keys, []string{"/p/a", "/p/b/"}) {
		t.Fatalf("keys /p/ separator /: %v, want /p/a /p/b/", kev.Result.Keys)
	}
	if kev := next(t, allKeys); !slices.Equal(kev.Result.Keys, []string{"/p/a", "/p/b/c", "/p/b/d"}) {
		t.Fatalf("keys /p/ without separator: %v", kev.Result.Keys)
	}

	rev := put(t, cli, "/p/c", "c")
	ev = next(t, prefixes)
	if got := prefixKeys(ev.Result); !slices.Equal(got, []string{"/p/a", "/p/b/c", "/p/b/d", "/p/c"}) || ev.Meta.Index != uint64(rev) {
		t.Fatalf("after put /p/c: %v at %d, want 4 keys at %d", got, ev.Meta.Index, rev)
	}
	if kev := next(t, keys); !slices.Equal(kev.Result.Keys, []string{"/p/a", "/p/b/", "/p/c"}) || kev.Meta.Index != uint64(rev) {
		t.Fatalf("keys after put /p/c: %v at %d", kev.Result.Keys, kev.Meta.Index)
	}
	if kev := next(t, allKeys); kev.Meta.Index != uint64(rev) {
		t.Fatalf("keys without separator after put /p/c: index %d, want %d", kev.Meta.Index, rev)
	}

	rev = del(t, cli, "/p/a")
	ev = next(t, prefixes)
	if got := prefixKeys(ev.Result); !slices.Equal(got, []string{"/p/b/c", "/p/b/d", "/p/c"}) || ev.Meta.Index != uint64(rev) {
		t.Fatalf("after delete /p/a: %v at %d, want 3 keys at %d", got, ev.Meta.Index, rev)
	}
	next(t, keys)
	next(t, allKeys)

	// Deleting the sub-prefix /p/b/ removes two keys in one revision.
	rev = del(t, cli, "/p/b/", clientv3.WithPrefix())
	ev = next(t, prefixes)
	if got := prefixKeys(ev.Result); !slices.Equal(got, []string{"/p/c"}) || ev.Meta.Index != uint64(rev) {
		t.Fatalf("after deleting prefix /p/b/: %v at %d, want /p/c at %d", got, ev.Meta.Index, rev)
	}
	if kev := next(t, keys); !slices.Equal(kev.Result.Keys, []string{"/p/c"}) {
		t.Fatalf("keys after deleting prefix /p/b/: %v", kev.Result.Keys)
	}

	// The whole prefix, through the source.
	rev, err := f.src.DeletePrefix(testCtx(t), self, "/p/")
	if err != nil {
		t.Fatalf("DeletePrefix: %v", err)
	}
	ev = next(t, prefixes)
	if len(ev.Result.Entries) != 0 || ev.Meta.Index != uint64(rev) {
		t.Fatalf("after DeletePrefix /p/: %v at %d, want none at %d", prefixKeys(ev.Result), ev.Meta.Index, rev)
	}
	if kev := next(t, keys); len(kev.Result.Keys) != 0 || kev.Meta.Index != uint64(rev) {
		t.Fatalf("keys after DeletePrefix /p/: %v at %d", kev.Result.Keys, kev.Meta.Index)
	}
	// Keys outside the prefix survived.
	if v, _ := getKey(t, f, KeyRequest("/p0", self)); !v.Exists {
		t.Fatal("DeletePrefix /p/ deleted /p0")
	}

	// The empty prefix is every key.
	all, _, err := f.kinds.Prefix.Get(testCtx(t), PrefixRequest("", self))
	if err != nil || !slices.Equal(prefixKeys(all), []string{"/p0", "/q"}) {
		t.Fatalf("prefix \"\": %v, %v; want /p0 /q", prefixKeys(all), err)
	}
}

func prefixKeys(p Prefix) []string {
	keys := make([]string, len(p.Entries))
	for i, kv := range p.Entries {
		keys[i] = kv.Key
	}
	return keys
}

// TestUnrelatedWritesWakeNobody checks that writes outside an entry's
// range neither change its index nor make its fetch return: exactly one
// fetch per kind completes between the initial value and the next
// related change, however many unrelated writes came first.
func TestUnrelatedWritesWakeNobody(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t)
	reg := prometheus.NewRegistry()
	f := newFixture(t, testConfig(c, 1), watchcache.Options{Registerer: reg})
	cli := c.Client(t)
	put(t, cli, "/w/k", "1")
	put(t, cli, "/w/p/x", "1")

	keyCh := watch(t, f.kinds.Key, KeyRequest("/w/k", self))
	prefixCh := watch(t, f.kinds.Prefix, PrefixRequest("/w/p/", self))
	keysCh := watch(t, f.kinds.Keys, KeysRequest("/w/p/", "/", self))
	k0, p0, ks0 := next(t, keyCh), next(t, prefixCh), next(t, keysCh)
	before := fetches(t, reg)

	for range 20 {
		put(t, cli, "/w/other", "x")  // beside both
		put(t, cli, "/w/k2", "x")     // shares the key as a prefix
		put(t, cli, "/w/p", "x")      // the prefix without its slash
		put(t, cli, "/w/pp/x", "x")   // a sibling prefix
		del(t, cli, "/w/p/never-set") // deletes nothing
	}
	krev := put(t, cli, "/w/k", "2")
	prev := put(t, cli, "/w/p/y", "2")

	if ev := next(t, keyCh); ev.Meta.Index != uint64(krev) || keyValue(ev) != "2" {
		t.Fatalf("key watcher: next event at %d (%s), want the put at %d; the first was at %d", ev.Meta.Index, keyValue(ev), krev, k0.Meta.Index)
	}
	if ev := next(t, prefixCh); ev.Meta.Index != uint64(prev) {
		t.Fatalf("prefix watcher: next event at %d, want the put at %d; the first was at %d", ev.Meta.Index, prev, p0.Meta.Index)
	}
	if ev := next(t, keysCh); ev.Meta.Index != uint64(prev) {
		t.Fatalf("keys watcher: next event at %d, want the put at %d; the first was at %d", ev.Meta.Index, prev, ks0.Meta.Index)
	}
	after := fetches(t, reg)
	for _, kind := range []string{KindKey, KindPrefix, KindKeys} {
		if n := after[kind] - before[kind]; n != 1 {
			t.Errorf("kind %s: %v fetches completed around 100 unrelated writes and one related one, want 1", kind, n)
		}
	}
}

// fetches returns the completed fetches per kind, from the cache's metrics.
func fetches(t testing.TB, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	n := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "watchcache_fetches_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			n[label(m, "kind")] += m.GetCounter().GetValue()
		}
	}
	return n
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// TestOneWatchPerEntry checks, on the etcd server, that an entry holds
// one etcd watch however many watchers and blocking Gets share it, and
// that the watch goes when the entry does. Not parallel: it counts every
// watcher of the process.
func TestOneWatchPerEntry(t *testing.T) {
	_, f, cli := start(t)
	put(t, cli, "/one", "0")
	base := serverWatchers(t)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := make(chan watchcache.UpdateEvent[Key], 1)
	const watchers = 50
	for range watchers {
		if err := f.kinds.Key.Notify(ctx, KeyRequest("/one", self), "", ch); err != nil {
			t.Fatal(err)
		}
	}
	getKey(t, f, KeyRequest("/one", self))
	eventually(t, "one etcd watcher for the entry", func() bool { return serverWatchers(t)-base == 1 })

	// A change reaches every watcher; still one etcd watch.
	rev := put(t, cli, "/one", "1")
	r := KeyRequest("/one", self)
	r.MinIndex = uint64(rev - 1)
	if v, _, err := f.kinds.Key.Get(testCtx(t), r); err != nil || string(v.Entry.Value) != "1" {
		t.Fatalf("blocking Get: %+v, %v", v, err)
	}
	if n := serverWatchers(t) - base; n != 1 {
		t.Fatalf("etcd watchers for one entry with %d cache watchers: %v, want 1", watchers, n)
	}

	cancel()
	f.cache.Close() // evicts the entry, which closes its watch
	eventually(t, "no etcd watcher once the cache is closed", func() bool { return serverWatchers(t) == base })
}

// serverWatchers reads etcd's own count of watchers (all embedded servers
// of the process register it on the default Prometheus registry).
func serverWatchers(t testing.TB) float64 {
	t.Helper()
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "etcd_debugging_mvcc_watcher_total" {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatal("etcd_debugging_mvcc_watcher_total is not registered")
	return 0
}

// TestBadRequests checks that requests that can never succeed fail at once,
// fatally (no retry loop), with errors naming the problem.
func TestBadRequests(t *testing.T) {
	t.Parallel()
	_, f, _ := start(t)
	ctx := testCtx(t)
	for _, tc := range []struct {
		name string
		get  func() error
		want error
	}{
		{"prefix without *", func() error {
			_, _, err := f.kinds.Prefix.Get(ctx, watchcache.Request{Key: "/a/"})
			return err
		}, watchcache.ErrInvalid},
		{"malformed keys", func() error {
			_, _, err := f.kinds.Keys.Get(ctx, watchcache.Request{Key: "/a/"})
			return err
		}, watchcache.ErrInvalid},
		{"datacenter", func() error {
			_, _, err := f.kinds.Key.Get(ctx, KeyRequest("/a", watchcache.Partition{Datacenter: "dc2"}))
			return err
		}, watchcache.ErrInvalid},
		{"identity not from Login", func() error {
			_, _, err := f.kinds.Key.Get(ctx, KeyRequest("/a", watchcache.Partition{Token: tokenPrefix + "mallory"}))
			return err
		}, ErrUnknownIdentity},
		{"foreign token", func() error {
			_, _, err := f.kinds.Key.Get(ctx, KeyRequest("/a", watchcache.Partition{Token: "s3cr3t"}))
			return err
		}, ErrUnknownIdentity},
		{"empty key bypassing the cache", func() error {
			_, _, err := f.kinds.Key.Get(ctx, watchcache.Request{})
			return err
		}, watchcache.ErrInvalid},
		{"put of an empty key", func() error {
			_, err := f.src.Put(ctx, self, "", nil)
			return err
		}, watchcache.ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.get()
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
	// Reads of an entry that failed fatally are errors, not hangs.
	start := time.Now()
	_, _, err := f.kinds.Key.Get(ctx, KeyRequest("/a", watchcache.Partition{Token: "s3cr3t"}))
	if !errors.Is(err, watchcache.ErrFatal) || time.Since(start) > 5*time.Second {
		t.Fatalf("second Get of an unknown identity: %v after %v, want a fatal error at once", err, time.Since(start))
	}
}
