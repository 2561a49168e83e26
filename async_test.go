package watchcache_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/fakeupstream"
)

// Entries of a push source hold no goroutine while they wait: 1,000 watched
// keys of a blocking kind add a bounded handful, and each change still
// reaches its watcher with one fetch.
func TestAsyncNoGoroutinePerKey(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 1000
		src := fakeupstream.New()
		for i := range n {
			src.Set(fmt.Sprint("k", i), "v")
		}
		c := newCache(t, watchcache.Options{})
		k, err := watchcache.Register(c, "kv", src.Push(), blockingRefresh)
		if err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		before := runtime.NumGoroutine()
		chans := make([]chan watchcache.UpdateEvent[string], n)
		for i := range chans {
			chans[i] = make(chan watchcache.UpdateEvent[string], 1)
			if err := k.Notify(t.Context(), req(fmt.Sprint("k", i)), "", chans[i]); err != nil {
				t.Fatal(err)
			}
		}
		for _, ch := range chans {
			recv(t, ch)
		}
		synctest.Wait()
		if got := src.InFlight(); got != n {
			t.Fatalf("blocking fetches in flight = %d, want %d", got, n)
		}
		if extra := runtime.NumGoroutine() - before; extra > 4 {
			t.Fatalf("%d keys waiting hold %d goroutines, want none per key", n, extra)
		}
		calls := src.TotalCalls()
		src.Set("k7", "w")
		if ev := recv(t, chans[7]); ev.Result != "w" {
			t.Fatalf("event = %+v, want w", ev)
		}
		synctest.Wait()
		if got := src.TotalCalls() - calls; got != 1 {
			t.Fatalf("fetches for one change = %d, want 1", got)
		}
	})
}

// scripted is an AsyncFetcher whose FetchAsync runs a test's function.
type scripted struct {
	fetch func(ctx context.Context, opts watchcache.FetchOptions[string], done func(watchcache.FetchResult[string], error))
}

func (s scripted) Fetch(context.Context, watchcache.FetchOptions[string], watchcache.Request) (watchcache.FetchResult[string], error) {
	panic("Fetch called on a push source")
}

func (s scripted) FetchAsync(ctx context.Context, opts watchcache.FetchOptions[string], _ watchcache.Request, done func(watchcache.FetchResult[string], error)) {
	s.fetch(ctx, opts, done)
}

// The first done counts: a source that calls it twice (synchronously, or
// later from another goroutine) cannot publish twice or the wrong value.
func TestAsyncDoneTwice(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var fetches atomic.Int32
		src := scripted{fetch: func(ctx context.Context, opts watchcache.FetchOptions[string], done func(watchcache.FetchResult[string], error)) {
			n := fetches.Add(1)
			if n == 1 {
				done(watchcache.FetchResult[string]{Value: "first", Index: 5}, nil) // before FetchAsync returns
				done(watchcache.FetchResult[string]{Value: "second", Index: 6}, nil)
				return
			}
			// Later ones: from another goroutine, after a while, twice.
			go func() {
				time.Sleep(time.Second)
				done(watchcache.FetchResult[string]{Value: fmt.Sprint("v", n), Index: uint64(5 + n)}, nil)
				done(watchcache.FetchResult[string]{Value: "ignored", Index: 100}, nil)
			}()
		}}
		c := newCache(t, watchcache.Options{})
		k, err := watchcache.Register[string](c, "kv", src, watchcache.KindOptions{SupportsBlocking: true})
		if err != nil {
			t.Fatal(err)
		}
		ch := make(chan watchcache.UpdateEvent[string], 10)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		if err := k.Notify(ctx, req("a"), "", ch); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"first", "v2", "v3"} {
			if ev := recv(t, ch); ev.Result != want {
				t.Fatalf("event = %+v, want %s", ev, want)
			}
		}
		cancel()
		synctest.Wait()
		for len(ch) > 0 {
			if ev := <-ch; ev.Result == "ignored" || ev.Result == "second" {
				t.Fatalf("a second done was published: %+v", ev)
			}
		}
	})
}

// A fetch its source leaves hanging (ignoring its Timeout) is cut at
// Timeout plus a grace, in both modes: the watcher hears of it, and the
// entry tries again, instead of freezing until Close.
func TestHungFetchIsCut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		src.Set("a", "one")
		opts := blockingRefresh
		opts.QueryTimeout = time.Minute
		k := register(t, newCache(t, watchcache.Options{}), "kv", src, opts)
		ch := make(chan watchcache.UpdateEvent[string], 10)
		if err := k.Notify(t.Context(), req("a"), "", ch); err != nil {
			t.Fatal(err)
		}
		recv(t, ch)
		synctest.Wait()
		src.Hang("a") // the blocking fetch in flight keeps waiting; so do later ones
		time.Sleep(time.Hour)
		synctest.Wait()
		ev := recv(t, ch)
		if ev.Err == nil || !strings.Contains(ev.Err.Error(), "did not return within") {
			t.Fatalf("event after a hung fetch = %+v, want a 'did not return within' error", ev)
		}
		if n := src.Calls("a"); n < 10 {
			t.Fatalf("fetches in an hour of hung fetches cut after ~1m = %d, want many", n)
		}
		src.Release("a")
		src.Set("a", "two")
		for {
			if ev := recv(t, ch); ev.Err == nil && ev.Result == "two" {
				break
			}
		}
	})
}

// slowPush is a push source that works a while on the calling goroutine
// before it answers, and records how many of its calls overlap.
type slowPush struct{ cur, peak atomic.Int32 }

func (s *slowPush) Fetch(context.Context, watchcache.FetchOptions[string], watchcache.Request) (watchcache.FetchResult[string], error) {
	panic("Fetch called on a push source")
}

func (s *slowPush) FetchAsync(_ context.Context, _ watchcache.FetchOptions[string], _ watchcache.Request, done func(watchcache.FetchResult[string], error)) {
	n := s.cur.Add(1)
	for p := s.peak.Load(); n > p && !s.peak.CompareAndSwap(p, n); p = s.peak.Load() {
	}
	time.Sleep(2 * time.Millisecond)
	s.cur.Add(-1)
	done(watchcache.FetchResult[string]{Value: "v", Index: 1}, nil)
}

// Async runs continue on the cache's bounded pool, also when many timers
// (polls, backoff) fire at once: 500 polling entries never run more
// fetches at a time than the pool has workers.
func TestAsyncRunsBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := &slowPush{}
		c := newCache(t, watchcache.Options{})
		k, err := watchcache.Register[string](c, "poll", src, watchcache.KindOptions{Refresh: true, RefreshTimer: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		for i := range 500 {
			get(t, k, req(fmt.Sprint(i)))
		}
		time.Sleep(time.Second)
		if p, bound := int(src.peak.Load()), max(2, runtime.GOMAXPROCS(0)); p > bound {
			t.Fatalf("%d fetches ran at once, want at most the pool's %d workers", p, bound)
		}
	})
}
