package watchcache_test

import (
	"context"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/fakeupstream"
)

// releaseOpts is a blocking refresh kind that releases idle entries after
// a minute: released by 1m7.5s after the last use.
var releaseOpts = watchcache.KindOptions{Refresh: true, SupportsBlocking: true, ReleaseAfter: time.Minute}

const releasedBy = time.Minute + time.Minute/8

// An entry nobody reads or watches lets its upstream query go, keeps its
// value, and revalidates it on the next Get (a miss that sees the change
// made meanwhile); then it refreshes again.
func TestReleaseIdleEntry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		src.Set("a", "one")
		reg := prometheus.NewRegistry()
		c := newCache(t, watchcache.Options{Registerer: reg})
		k := register(t, c, "kv", src, releaseOpts)
		get(t, k, req("a"))
		synctest.Wait()
		if n := src.InFlight(); n != 1 {
			t.Fatalf("blocking fetches after a Get = %d, want 1 (the refresh)", n)
		}
		time.Sleep(releasedBy)
		synctest.Wait()
		if n := src.InFlight(); n != 0 {
			t.Fatalf("blocking fetches of an idle entry = %d, want 0 (released)", n)
		}
		if n := gauge(t, reg, "watchcache_releases_total"); n != 1 {
			t.Fatalf("releases counted = %v, want 1", n)
		}
		if n := c.Stats().Entries; n != 1 {
			t.Fatalf("entries = %d, want 1: a released entry keeps its value", n)
		}
		calls := src.Calls("a")
		i2 := src.Set("a", "two")
		synctest.Wait()
		if n := src.Calls("a"); n != calls {
			t.Fatalf("a released entry fetched %d times on a change, want 0", n-calls)
		}
		v, meta := get(t, k, req("a"))
		if v != "two" || meta.Hit || meta.Index != i2 {
			t.Fatalf("Get after release = %q %+v, want two at %d, not a hit", v, meta, i2)
		}
		synctest.Wait()
		if n := src.InFlight(); n != 1 {
			t.Fatalf("blocking fetches after revalidation = %d, want 1 (refreshing again)", n)
		}
		if v, meta := get(t, k, req("a")); v != "two" || !meta.Hit {
			t.Fatalf("second Get = %q %+v, want a hit", v, meta)
		}
	})
}

// Reads and watches keep the subscription.
func TestReleaseNotWhileUsed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		src.Set("read", "v")
		src.Set("watched", "v")
		k := register(t, newCache(t, watchcache.Options{}), "kv", src, releaseOpts)
		ch := make(chan watchcache.UpdateEvent[string], 1)
		if err := k.Notify(t.Context(), req("watched"), "", ch); err != nil {
			t.Fatal(err)
		}
		recv(t, ch)
		for range 10 {
			if _, meta := get(t, k, req("read")); meta.Index == 0 {
				t.Fatal("no index")
			}
			time.Sleep(30 * time.Second)
		}
		synctest.Wait()
		if n := src.InFlight(); n != 2 {
			t.Fatalf("blocking fetches after 5m of reads and a watch = %d, want 2", n)
		}
		if _, meta := get(t, k, req("read")); !meta.Hit {
			t.Fatalf("Get of a key read every 30s = %+v, want a hit", meta)
		}
	})
}

// A watch on a released entry starts from the revalidated value, never the
// old one; so does a blocking Get, which answers at once when the value
// changed while released.
func TestReleaseRevalidatesWatchesAndBlockingGets(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		i1 := src.Set("a", "one")
		src.Set("b", "one")
		k := register(t, newCache(t, watchcache.Options{}), "kv", src, releaseOpts)
		get(t, k, req("a"))
		get(t, k, req("b"))
		time.Sleep(releasedBy)
		synctest.Wait()
		i2 := src.Set("a", "two")
		src.Set("b", "two")

		ch := make(chan watchcache.UpdateEvent[string], 2)
		if err := k.Notify(t.Context(), req("a"), "", ch); err != nil {
			t.Fatal(err)
		}
		if ev := recv(t, ch); ev.Result != "two" || ev.Meta.Index != i2 {
			t.Fatalf("first event on a released entry = %+v, want two at %d", ev, i2)
		}
		synctest.Wait()
		noEvent(t, ch)

		start := time.Now()
		v, _, err := k.Get(context.Background(), watchcache.Request{Key: "b", MinIndex: i1 + 1, Timeout: time.Minute})
		if err != nil || v != "two" || time.Since(start) != 0 {
			t.Fatalf("blocking Get on a released entry = %q %v after %v, want two at once", v, err, time.Since(start))
		}
	})
}

// closingState counts the States a fetch function opened and closed.
type closingState struct{ open *atomic.Int32 }

func (s closingState) Close() error { s.open.Add(-1); return nil }

// The State (an etcd watch, a connection) is closed on release, also when
// a blocking fetch was using it, and a new one is opened on revalidation.
func TestReleaseClosesState(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var open atomic.Int32
		fetch := watchcache.FetchFunc[string](func(ctx context.Context, opts watchcache.FetchOptions[string], _ watchcache.Request) (watchcache.FetchResult[string], error) {
			if opts.MinIndex > 0 {
				<-ctx.Done() // waits for a change that never comes
				return watchcache.FetchResult[string]{}, ctx.Err()
			}
			if opts.LastResult != nil && opts.LastResult.State != nil {
				return watchcache.FetchResult[string]{Value: "v", Index: 1, State: opts.LastResult.State}, nil
			}
			open.Add(1)
			return watchcache.FetchResult[string]{Value: "v", Index: 1, State: closingState{&open}}, nil
		})
		k, err := watchcache.Register(newCache(t, watchcache.Options{}), "kv", asyncIfPush(fetch), releaseOpts)
		if err != nil {
			t.Fatal(err)
		}
		get(t, k, req("a"))
		synctest.Wait()
		if n := open.Load(); n != 1 {
			t.Fatalf("open states = %d, want 1", n)
		}
		time.Sleep(releasedBy)
		synctest.Wait()
		if n := open.Load(); n != 0 {
			t.Fatalf("open states after release = %d, want 0", n)
		}
		get(t, k, req("a"))
		synctest.Wait()
		if n := open.Load(); n != 1 {
			t.Fatalf("open states after revalidation = %d, want 1", n)
		}
	})
}
