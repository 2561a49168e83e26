package watchcache_test

import (
	"context"
	"fmt"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/fakeupstream"
)

// Entries unused for LastGetTTL are evicted (within LastGetTTL/16); each
// Get extends the life.
func TestExpiryTTL(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		src.Set("a", "one")
		k := register(t, newCache(t, watchcache.Options{}), "kv", src, watchcache.KindOptions{LastGetTTL: time.Hour})
		get(t, k, req("a"))
		time.Sleep(50 * time.Minute)
		if _, meta := get(t, k, req("a")); !meta.Hit {
			t.Fatal("evicted before its TTL")
		}
		time.Sleep(50 * time.Minute) // 100m after creation, 50m after the last Get
		if _, meta := get(t, k, req("a")); !meta.Hit {
			t.Fatal("a Get did not extend the entry's life")
		}
		time.Sleep(time.Hour + time.Hour/16 + time.Minute)
		if _, meta := get(t, k, req("a")); meta.Hit {
			t.Fatal("not evicted after its TTL")
		}
		if n := src.Calls("a"); n != 2 {
			t.Fatalf("fetches = %d, want 2", n)
		}
	})
}

// Watched entries are never evicted; once unwatched they expire.
func TestExpiryWatchedEntriesStay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		src.Set("a", "one")
		reg := prometheus.NewRegistry()
		c := newCache(t, watchcache.Options{Registerer: reg})
		k := register(t, c, "kv", src, watchcache.KindOptions{SupportsBlocking: true, LastGetTTL: time.Hour})
		ctx, cancel := context.WithCancel(t.Context())
		ch := make(chan watchcache.UpdateEvent[string], 100)
		k.Notify(ctx, req("a"), "w", ch)
		recv(t, ch)
		time.Sleep(10 * time.Hour)
		src.Set("a", "two")
		if ev := recv(t, ch); ev.Result != "two" {
			t.Fatalf("watcher after 10h = %+v", ev)
		}
		cancel()
		time.Sleep(59 * time.Minute)
		synctest.Wait()
		if n := gauge(t, reg, "watchcache_entries"); n != 1 {
			t.Fatalf("entries 59m after the watcher left = %v, want 1", n)
		}
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		if n := gauge(t, reg, "watchcache_entries"); n != 0 {
			t.Fatalf("entries after TTL = %v, want 0", n)
		}
	})
}

// gauge reads a kind-labelled metric's value for kind "kv".
func gauge(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		var sum float64
		for _, m := range mf.GetMetric() {
			switch {
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			}
		}
		return sum
	}
	return 0
}

// A fetch that returns after its entry was evicted does not bring the
// entry back, and state that is an io.Closer is closed.
func TestExpiryDuringInFlightFetch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var closed, calls atomic.Int64
		release := make(chan struct{})
		fetch := watchcache.FetchFunc[string](func(ctx context.Context, o watchcache.FetchOptions[string], _ watchcache.Request) (watchcache.FetchResult[string], error) {
			n := calls.Add(1)
			if n == 2 {
				<-release // a fetch that ignores its context for a while
				return watchcache.FetchResult[string]{Value: "late", Index: 50, State: closer(&closed)}, nil
			}
			return watchcache.FetchResult[string]{Value: fmt.Sprint("v", n), Index: uint64(n), State: closer(&closed)}, nil
		})
		reg := prometheus.NewRegistry()
		c := newCache(t, watchcache.Options{Registerer: reg})
		k, _ := watchcache.Register(c, "kv", asyncIfPush(fetch), watchcache.KindOptions{Refresh: true, SupportsBlocking: true, LastGetTTL: time.Hour})
		get(t, k, req("a")) // fetch 1; the background fetch 2 now hangs
		time.Sleep(2 * time.Hour)
		synctest.Wait()
		if n := gauge(t, reg, "watchcache_entries"); n != 0 {
			t.Fatalf("entries = %v, want the idle entry evicted", n)
		}
		if n := gauge(t, reg, "watchcache_evictions_total"); n != 1 {
			t.Fatalf("evictions = %v, want 1", n)
		}
		close(release)
		synctest.Wait()
		if n := gauge(t, reg, "watchcache_entries"); n != 0 {
			t.Fatalf("entries = %v after the late fetch returned: resurrected", n)
		}
		if n := closed.Load(); n != 2 {
			t.Fatalf("closed states = %d, want 2 (the entry's and the late fetch's)", n)
		}
		v, meta := get(t, k, req("a"))
		if v == "late" || meta.Hit {
			t.Fatalf("Get after eviction = %q %+v, want a new fetch", v, meta)
		}
	})
}

type closeCounter struct{ n *atomic.Int64 }

func (c closeCounter) Close() error { c.n.Add(1); return nil }

func closer(n *atomic.Int64) any { return &closeCounter{n} }

// A state replaced by a newer fetch's state is closed.
func TestStateReplacedIsClosed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var closed, calls atomic.Int64
		fetch := watchcache.FetchFunc[string](func(ctx context.Context, o watchcache.FetchOptions[string], _ watchcache.Request) (watchcache.FetchResult[string], error) {
			n := calls.Add(1)
			return watchcache.FetchResult[string]{Value: "v", Index: uint64(n), State: closer(&closed)}, nil
		})
		c := newCache(t, watchcache.Options{})
		k, _ := watchcache.Register(c, "kv", asyncIfPush(fetch), watchcache.KindOptions{})
		get(t, k, req("a"))
		get(t, k, watchcache.Request{Key: "a", MustRevalidate: true})
		synctest.Wait() // the loop closes the replaced state once it released the entry
		if n := closed.Load(); n != 1 {
			t.Fatalf("closed = %d, want the first state closed", n)
		}
	})
}

// With MaxEntries, one-off partitions (token rotation) keep the cache
// bounded, evicting least recently used unwatched entries.
func TestExpiryMaxEntries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		src.Set("a", "one")
		reg := prometheus.NewRegistry()
		c := newCache(t, watchcache.Options{Registerer: reg, MaxEntries: 10})
		k := register(t, c, "kv", src, blockingRefresh)
		watched := watchcache.Request{Key: "a", Partition: watchcache.Partition{Token: "watched"}}
		ch := make(chan watchcache.UpdateEvent[string], 10)
		k.Notify(t.Context(), watched, "w", ch)
		recv(t, ch)
		hot := watchcache.Request{Key: "a", Partition: watchcache.Partition{Token: "hot"}}
		for i := range 200 {
			time.Sleep(2 * time.Second)
			get(t, k, watchcache.Request{Key: "a", Partition: watchcache.Partition{Token: fmt.Sprint("rotated-", i)}})
			get(t, k, hot)
			synctest.Wait()
			if n := gauge(t, reg, "watchcache_entries"); n > 10 {
				t.Fatalf("entries = %v after %d tokens, want at most 10", n, i)
			}
		}
		if _, meta := get(t, k, hot); !meta.Hit {
			t.Fatal("the most recently used entry was evicted")
		}
		src.Set("a", "two")
		if ev := recv(t, ch); ev.Result != "two" {
			t.Fatalf("watched entry lost: %+v", ev)
		}
		if n := gauge(t, reg, "watchcache_evictions_total"); n < 180 {
			t.Fatalf("capacity evictions = %v", n)
		}
	})
}

// State returned with an error, or for a request that bypasses the cache,
// is not kept, so it is closed at once.
func TestStateNotKeptIsClosed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var closed atomic.Int64
		fail := true
		fetch := watchcache.FetchFunc[string](func(ctx context.Context, o watchcache.FetchOptions[string], r watchcache.Request) (watchcache.FetchResult[string], error) {
			res := watchcache.FetchResult[string]{Value: "v", Index: 1, State: closer(&closed)}
			if r.Key == "a" && fail {
				return res, errBoom
			}
			return res, nil
		})
		c := newCache(t, watchcache.Options{})
		k, _ := watchcache.Register(c, "kv", asyncIfPush(fetch), watchcache.KindOptions{})
		k.Get(context.Background(), req("a"))
		synctest.Wait() // the state is closed after the publish that woke the Get, once the entry's lock is released
		if n := closed.Load(); n != 1 {
			t.Fatalf("closed after a failed fetch = %d, want 1", n)
		}
		get(t, k, req(""))
		synctest.Wait()
		if n := closed.Load(); n != 2 {
			t.Fatalf("closed after a bypassing Get = %d, want 2", n)
		}
		fail = false
		get(t, k, req("a"))
		synctest.Wait()
		if n := closed.Load(); n != 2 {
			t.Fatalf("closed after a kept fetch = %d, want still 2", n)
		}
	})
}

// Entries evicted for capacity are freed at once, not at their next expiry
// check hours later: under token rotation (one-off partitions) the live
// heap stays flat.
func TestExpiryMaxEntriesFreesMemory(t *testing.T) {
	src := fakeupstream.New()
	src.Set("a", strings.Repeat("x", 1024)) // 1 KiB values make a leak plain
	c := newCache(t, watchcache.Options{MaxEntries: 100})
	k := register(t, c, "kv", src, watchcache.KindOptions{})
	rotate := func(from, to int) {
		for i := from; i < to; i++ {
			get(t, k, watchcache.Request{Key: "a", Partition: watchcache.Partition{Token: fmt.Sprint("token-", i)}})
		}
	}
	live := func() int64 {
		runtime.GC()
		s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
		metrics.Read(s)
		return int64(s[0].Value.Uint64())
	}
	rotate(0, 1000)
	before := live()
	rotate(1000, 11_000)
	grew := live() - before
	if n := c.Stats().Entries; n > 100 {
		t.Fatalf("entries = %d, want at most 100", n)
	}
	// 10,000 leaked entries would hold at least 10 MiB of values.
	if grew > 1<<20 {
		t.Fatalf("live heap grew %d KiB over 10,000 one-off partitions with MaxEntries 100", grew>>10)
	}
}

// A state that is an io.Closer is closed after the entry's lock is
// released: a slow Close (a client's) does not stall the entry.
func TestStateClosedOutsideEntryLock(t *testing.T) {
	release := make(chan struct{})
	closing := make(chan struct{})
	var n atomic.Int64
	fetch := watchcache.FetchFunc[string](func(ctx context.Context, o watchcache.FetchOptions[string], _ watchcache.Request) (watchcache.FetchResult[string], error) {
		i := n.Add(1)
		return watchcache.FetchResult[string]{Value: fmt.Sprint("v", i), Index: uint64(i), State: &slowCloser{closing, release}}, nil
	})
	c := newCache(t, watchcache.Options{})
	k, err := watchcache.Register(c, "kv", asyncIfPush(fetch), watchcache.KindOptions{})
	if err != nil {
		t.Fatal(err)
	}
	get(t, k, req("a"))
	revalidated := make(chan error, 1)
	go func() {
		_, _, err := k.Get(context.Background(), watchcache.Request{Key: "a", MustRevalidate: true})
		revalidated <- err
	}()
	<-closing // the first state is being closed, and its Close hangs
	defer close(release)
	done := make(chan error, 1)
	go func() {
		done <- k.Notify(t.Context(), watchcache.Request{Key: "a", MaxAge: time.Hour}, "w", make(chan watchcache.UpdateEvent[string], 1))
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Notify waited for a state's Close: it runs under the entry's lock")
	}
	if err := <-revalidated; err != nil {
		t.Fatal(err)
	}
}

// slowCloser is a state whose Close announces itself on closing (once) and
// waits for release.
type slowCloser struct{ closing, release chan struct{} }

func (s *slowCloser) Close() error {
	select {
	case s.closing <- struct{}{}:
	default:
	}
	<-s.release
	return nil
}

// MaxEntries is a hard bound: concurrent misses, which pin the entries
// they create while they wait, overshoot it only while they wait, and the
// cache is back under it once they have returned.
func TestExpiryMaxEntriesConcurrentMisses(t *testing.T) {
	src := fakeupstream.New()
	src.Set("a", "v")
	c := newCache(t, watchcache.Options{MaxEntries: 100})
	k := register(t, c, "kv", src, watchcache.KindOptions{})
	const gets, parallel = 6000, 64
	var next atomic.Int64
	var wg sync.WaitGroup
	for range parallel {
		wg.Go(func() {
			for i := next.Add(1); i <= gets; i = next.Add(1) {
				r := watchcache.Request{Key: "a", Partition: watchcache.Partition{Token: fmt.Sprint("one-off-", i)}}
				if _, _, err := k.Get(context.Background(), r); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if n := c.Stats().Entries; n > 100 {
		t.Fatalf("entries = %d after %d concurrent one-off Gets, want at most MaxEntries (100)", n, gets)
	}
}
