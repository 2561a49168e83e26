package watchcache_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/fakeupstream"
)

// fetchLog records when each key was fetched.
type fetchLog struct {
	mu    sync.Mutex
	times map[string][]time.Time
}

func (l *fetchLog) add(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.times == nil {
		l.times = map[string][]time.Time{}
	}
	l.times[key] = append(l.times[key], time.Now())
}

func (l *fetchLog) get(key string) []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]time.Time(nil), l.times[key]...)
}

// Failing entries retry at once three times, then back off exponentially
// up to a minute, with jitter that spreads entries failing together.
func TestRefreshBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var log fetchLog
		fetch := watchcache.FetchFunc[string](func(ctx context.Context, _ watchcache.FetchOptions[string], r watchcache.Request) (watchcache.FetchResult[string], error) {
			log.add(r.Key)
			return watchcache.FetchResult[string]{}, errBoom
		})
		c := newCache(t, watchcache.Options{})
		k, _ := watchcache.Register(c, "kv", asyncIfPush(fetch), blockingRefresh)
		const entries = 20
		for i := range entries {
			if _, _, err := k.Get(context.Background(), req(fmt.Sprint(i))); !errors.Is(err, errBoom) {
				t.Fatalf("Get = %v, want boom", err)
			}
		}
		time.Sleep(10 * time.Minute)

		distinct := map[time.Duration]bool{}
		for i := range entries {
			ts := log.get(fmt.Sprint(i))
			if len(ts) < 12 || len(ts) > 30 {
				t.Fatalf("entry %d fetched %d times in 10m of failure", i, len(ts))
			}
			for n := 1; n < len(ts); n++ {
				gap := ts[n].Sub(ts[n-1])
				failures := n // failures before fetch n
				var lo, hi time.Duration
				if failures > 3 {
					hi = min(time.Second<<(failures-4), time.Minute)
					lo = hi / 2
				}
				if gap < lo || gap > hi {
					t.Fatalf("entry %d: wait after %d failures = %v, want within [%v, %v]", i, failures, gap, lo, hi)
				}
			}
			distinct[ts[8].Sub(ts[0])] = true
		}
		if len(distinct) < entries/2 {
			t.Fatalf("retries of %d entries failing together fell at only %d distinct times", entries, len(distinct))
		}
	})
}

// A source that returns index 0 at once is treated as index 1 and as a
// failure for backoff, so it cannot make the entry spin.
func TestRefreshZeroIndexDoesNotSpin(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int64
		fetch := watchcache.FetchFunc[string](func(ctx context.Context, o watchcache.FetchOptions[string], _ watchcache.Request) (watchcache.FetchResult[string], error) {
			calls.Add(1)
			return watchcache.FetchResult[string]{Value: "v", Index: 0}, nil
		})
		c := newCache(t, watchcache.Options{})
		k, _ := watchcache.Register(c, "kv", asyncIfPush(fetch), blockingRefresh)
		v, meta := get(t, k, req("a"))
		if v != "v" || meta.Index != 1 {
			t.Fatalf("Get = %q %+v, want index 1", v, meta)
		}
		time.Sleep(10 * time.Minute)
		if n := calls.Load(); n > 30 {
			t.Fatalf("%d fetches in 10m from a zero-index source: busy loop", n)
		}
	})
}

// The per-entry token bucket bounds fetches and can be changed at run time.
func TestRefreshRateLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int64
		fetch := watchcache.FetchFunc[string](func(ctx context.Context, o watchcache.FetchOptions[string], _ watchcache.Request) (watchcache.FetchResult[string], error) {
			n := calls.Add(1)
			return watchcache.FetchResult[string]{Value: "v", Index: uint64(n)}, nil // always changed
		})
		c := newCache(t, watchcache.Options{EntryFetchRate: 2, EntryFetchBurst: 1})
		k, _ := watchcache.Register(c, "kv", asyncIfPush(fetch), blockingRefresh)
		get(t, k, req("a"))
		time.Sleep(10 * time.Second)
		if n := calls.Load(); n < 19 || n > 22 {
			t.Fatalf("fetches in 10s at 2/s = %d, want about 21", n)
		}
		if err := c.SetEntryFetchRate(10, 1); err != nil {
			t.Fatal(err)
		}
		before := calls.Load()
		time.Sleep(10 * time.Second)
		if n := calls.Load() - before; n < 95 || n > 102 {
			t.Fatalf("fetches in 10s at 10/s = %d, want about 100", n)
		}
		if err := c.SetEntryFetchRate(-1, 1); !errors.Is(err, watchcache.ErrInvalid) {
			t.Fatalf("negative rate = %v, want ErrInvalid", err)
		}
	})
}

// A fatal error stops the background refresh and withholds the cached
// value; watchers hear it once; each later Get tries once more.
func TestRefreshFatalStops(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		src.Set("a", "one")
		k := register(t, newCache(t, watchcache.Options{}), "kv", src, blockingRefresh)
		ch := make(chan watchcache.UpdateEvent[string], 10)
		k.Notify(t.Context(), req("a"), "w", ch)
		recv(t, ch)
		denied := errors.New("permission denied")
		src.Fail("a", watchcache.Fatal(denied))
		ev := recv(t, ch)
		if !errors.Is(ev.Err, watchcache.ErrFatal) || !errors.Is(ev.Err, denied) || ev.Result != "" {
			t.Fatalf("event = %+v, want fatal permission denied, the value withheld", ev)
		}
		calls := src.Calls("a")
		time.Sleep(time.Hour)
		if n := src.Calls("a") - calls; n != 0 {
			t.Fatalf("%d fetches after a fatal error, want refresh stopped", n)
		}
		noEvent(t, ch)
		// Access was refused: a plain Get does not serve what was cached
		// for this partition before; it tries once more and reports.
		if v, _, err := k.Get(context.Background(), req("a")); !errors.Is(err, denied) || v != "" {
			t.Fatalf("plain Get after fatal = %q %v, want no value and the error", v, err)
		}
		calls++
		// A blocking Get asks for one more attempt and reports its error.
		if _, _, err := k.Get(context.Background(), watchcache.Request{Key: "a", MinIndex: 1}); !errors.Is(err, denied) {
			t.Fatalf("blocking Get after fatal = %v", err)
		}
		if n := src.Calls("a") - calls; n != 1 {
			t.Fatalf("blocking Get after fatal fetched %d times, want 1", n)
		}
		// Access restored: the next asking Get revives the entry and its watchers.
		src.Fail("a", nil)
		src.Set("a", "two")
		if _, _, err := k.Get(context.Background(), watchcache.Request{Key: "a", MinIndex: 1}); err != nil {
			t.Fatal(err)
		}
		if ev := recv(t, ch); ev.Err != nil || ev.Result != "two" {
			t.Fatalf("watcher after recovery = %+v", ev)
		}
		src.Set("a", "three")
		if ev := recv(t, ch); ev.Result != "three" {
			t.Fatalf("refresh did not resume: %+v", ev)
		}
	})
}

// Refresh kinds without blocking fetch every RefreshTimer (plus up to 1/16
// of it as jitter).
func TestRefreshTimer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		src.Set("a", "one")
		k := register(t, newCache(t, watchcache.Options{}), "kv", src, watchcache.KindOptions{Refresh: true, RefreshTimer: 30 * time.Second})
		get(t, k, req("a"))
		src.Set("a", "two")
		time.Sleep(29 * time.Second)
		if v, _ := get(t, k, req("a")); v != "one" {
			t.Fatalf("value before RefreshTimer = %q", v)
		}
		time.Sleep(3 * time.Second) // past 30s plus up to 1/16 of jitter
		if v, meta := get(t, k, req("a")); v != "two" || meta.Age != 0 {
			t.Fatalf("value after RefreshTimer = %q %+v", v, meta)
		}
	})
}

// A source that comes back without a change is a recovery too: the first
// fetch after a failure does not block waiting for a change.
func TestRefreshRecoversWithoutChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		i1 := src.Set("a", "one")
		k := register(t, newCache(t, watchcache.Options{}), "kv", src, blockingRefresh)
		ch := make(chan watchcache.UpdateEvent[string], 10)
		k.Notify(t.Context(), req("a"), "w", ch)
		recv(t, ch)
		src.Fail("a", errBoom)
		if ev := recv(t, ch); !errors.Is(ev.Err, errBoom) {
			t.Fatalf("event = %+v, want boom", ev)
		}
		time.Sleep(time.Minute)
		failedFor := time.Minute
		src.Fail("a", nil)
		start := time.Now()
		ev := recv(t, ch)
		if ev.Err != nil || ev.Result != "one" || ev.Meta.Index != i1 || ev.Meta.Age != 0 {
			t.Fatalf("recovery event = %+v, want one at %d, healthy", ev, i1)
		}
		if waited := time.Since(start); waited > backoffCap(failedFor) {
			t.Fatalf("recovery took %v: it waited for a change instead of the next retry", waited)
		}
	})
}

// backoffCap is the longest a retry can be after failing for d.
func backoffCap(d time.Duration) time.Duration { return min(2*d, time.Minute) }
