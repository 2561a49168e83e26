package watchcache_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/fakeupstream"
)

// Notify sends the current value first, then one event per change, each
// with the correlation ID, and one upstream fetch per change.
func TestNotifyBlockingKind(t *testing.T) {
	for _, opts := range []watchcache.KindOptions{blockingRefresh, {SupportsBlocking: true}} {
		t.Run(fmt.Sprintf("refresh=%v", opts.Refresh), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				src := fakeupstream.New()
				i1 := src.Set("a", "one")
				k := register(t, newCache(t, watchcache.Options{}), "kv", src, opts)
				ch := make(chan watchcache.UpdateEvent[string], 10)
				if err := k.Notify(t.Context(), req("a"), "watch-a", ch); err != nil {
					t.Fatal(err)
				}
				ev := recv(t, ch)
				if ev.CorrelationID != "watch-a" || ev.Result != "one" || ev.Meta.Index != i1 || ev.Err != nil {
					t.Fatalf("first event = %+v, want one at %d", ev, i1)
				}
				src.Set("unrelated", "x") // wakes nobody
				synctest.Wait()
				noEvent(t, ch)
				calls := src.Calls("a")
				for i, v := range []string{"two", "three", "four"} {
					idx := src.Set("a", v)
					ev := recv(t, ch)
					if ev.Result != v || ev.Meta.Index != idx || ev.CorrelationID != "watch-a" {
						t.Fatalf("event %d = %+v, want %s at %d", i, ev, v, idx)
					}
				}
				synctest.Wait()
				if got := src.Calls("a") - calls; got != 3 {
					t.Fatalf("fetches for 3 changes = %d, want 3", got)
				}
				noEvent(t, ch)
			})
		})
	}
}

// NotifyCallback delivers the same events to a callback.
func TestNotifyCallback(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		src.Set("a", "one")
		k := register(t, newCache(t, watchcache.Options{}), "kv", src, blockingRefresh)
		got := make(chan watchcache.UpdateEvent[string], 10)
		if err := k.NotifyCallback(t.Context(), req("a"), "cb", func(ev watchcache.UpdateEvent[string]) { got <- ev }); err != nil {
			t.Fatal(err)
		}
		if ev := recv(t, got); ev.Result != "one" || ev.CorrelationID != "cb" {
			t.Fatalf("first callback = %+v", ev)
		}
		src.Set("a", "two")
		if ev := recv(t, got); ev.Result != "two" {
			t.Fatalf("second callback = %+v", ev)
		}
	})
}

// A panicking callback is contained: the cache logs and counts it and
// keeps delivering to it and to others.
func TestNotifyCallbackPanic(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		src.Set("a", "one")
		k := register(t, newCache(t, watchcache.Options{}), "kv", src, blockingRefresh)
		calls := make(chan string, 10)
		k.NotifyCallback(t.Context(), req("a"), "bad", func(ev watchcache.UpdateEvent[string]) {
			calls <- "bad:" + ev.Result
			panic("callback bug")
		})
		good := make(chan watchcache.UpdateEvent[string], 10)
		k.Notify(t.Context(), req("a"), "good", good)
		recv(t, good)
		synctest.Wait() // the bad callback ran (and panicked) on "one"
		src.Set("a", "two")
		if ev := recv(t, good); ev.Result != "two" {
			t.Fatalf("good watcher got %+v", ev)
		}
		synctest.Wait()
		close(calls)
		var seen []string
		for c := range calls {
			seen = append(seen, c)
		}
		if len(seen) != 2 || seen[1] != "bad:two" {
			t.Fatalf("panicking callback calls = %v, want it called for one and two", seen)
		}
	})
}

// A consumer that never reads its unbuffered channel does not delay 99
// others, and when it finally reads, its first receive is the latest value.
func TestNotifySlowConsumer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		src.Set("a", "v0")
		k := register(t, newCache(t, watchcache.Options{}), "kv", src, blockingRefresh)

		stuck := make(chan watchcache.UpdateEvent[string]) // unbuffered, never drained until the end
		if err := k.Notify(t.Context(), req("a"), "stuck", stuck); err != nil {
			t.Fatal(err)
		}
		fast := make([]chan watchcache.UpdateEvent[string], 99)
		for i := range fast {
			fast[i] = make(chan watchcache.UpdateEvent[string])
			k.Notify(t.Context(), req("a"), fmt.Sprint(i), fast[i])
		}
		var wg sync.WaitGroup
		received := make([][]string, len(fast))
		for i, ch := range fast {
			wg.Go(func() {
				for ev := range ch {
					received[i] = append(received[i], ev.Result)
					if ev.Result == "v50" {
						return
					}
				}
			})
		}
		synctest.Wait() // the readers took v0
		var before runtime.MemStats
		for i := 1; i <= 50; i++ {
			src.Set("a", fmt.Sprint("v", i))
			synctest.Wait() // each change reaches all 99 before the next
			if i == 25 {
				runtime.GC()
				runtime.ReadMemStats(&before)
			}
		}
		wg.Wait()
		for i, r := range received {
			if len(r) != 51 {
				t.Fatalf("fast watcher %d got %d events, want all 51", i, len(r))
			}
		}
		var after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&after)
		if grew := int64(after.HeapInuse) - int64(before.HeapInuse); grew > 256<<10 {
			t.Errorf("heap grew %d bytes over 25 changes with a stuck consumer", grew)
		}
		// Its channel is unbuffered, so nothing was delivered yet: the
		// first receive is the latest value, not the one from before the
		// changes.
		if ev := <-stuck; ev.Result != "v50" {
			t.Fatalf("stuck consumer's first event = %q, want the latest, v50", ev.Result)
		}
		synctest.Wait()
		select {
		case ev := <-stuck:
			t.Fatalf("stuck consumer got a stale event after the latest: %+v", ev)
		default:
		}
	})
}

// A slow callback gets the latest event when it returns, not a backlog.
func TestNotifyCallbackSlow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		src.Set("a", "v0")
		k := register(t, newCache(t, watchcache.Options{}), "kv", src, blockingRefresh)
		release := make(chan struct{})
		var seen []string
		var mu sync.Mutex
		k.NotifyCallback(t.Context(), req("a"), "slow", func(ev watchcache.UpdateEvent[string]) {
			mu.Lock()
			seen = append(seen, ev.Result)
			mu.Unlock()
			if ev.Result == "v0" {
				<-release
			}
		})
		synctest.Wait()
		for i := 1; i <= 10; i++ {
			src.Set("a", fmt.Sprint("v", i))
			synctest.Wait()
		}
		close(release)
		synctest.Wait()
		mu.Lock()
		defer mu.Unlock()
		if len(seen) != 2 || seen[1] != "v10" {
			t.Fatalf("slow callback saw %v, want [v0 v10]", seen)
		}
	})
}

// When the index goes backwards, watchers get the new state at once and
// keep following it; indexes within a watcher only grow between resets.
func TestNotifyIndexReset(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		src.SetIndex("a", "old", 500)
		k := register(t, newCache(t, watchcache.Options{}), "kv", src, watchcache.KindOptions{SupportsBlocking: true})
		ch := make(chan watchcache.UpdateEvent[string], 10)
		k.Notify(t.Context(), req("a"), "w", ch)
		recv(t, ch)
		src.SetIndex("a", "rebuilt", 3)
		if ev := recv(t, ch); ev.Result != "rebuilt" || ev.Meta.Index != 3 {
			t.Fatalf("event after reset = %+v, want rebuilt at 3", ev)
		}
		src.SetIndex("a", "next", 4)
		if ev := recv(t, ch); ev.Result != "next" || ev.Meta.Index != 4 {
			t.Fatalf("event after reset+1 = %+v, want next at 4", ev)
		}
	})
}

// Errors reach watchers once, with the last good value; a recovery event
// follows.
func TestNotifyErrorsAndRecovery(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		src.Set("a", "one")
		k := register(t, newCache(t, watchcache.Options{}), "kv", src, blockingRefresh)
		ch := make(chan watchcache.UpdateEvent[string], 100)
		k.Notify(t.Context(), req("a"), "w", ch)
		recv(t, ch)

		src.Fail("a", errBoom)
		ev := recv(t, ch)
		if !errors.Is(ev.Err, errBoom) || ev.Result != "one" {
			t.Fatalf("error event = %+v, want boom with the last value", ev)
		}
		time.Sleep(10 * time.Minute) // many retries
		if n := src.Calls("a"); n < 8 {
			t.Fatalf("only %d fetches in 10m of failure", n)
		}
		noEvent(t, ch) // the same error is not repeated
		if v, _ := get(t, k, req("a")); v != "one" {
			t.Fatalf("last good value not readable during failure: %q", v)
		}
		src.Fail("a", nil)
		idx := src.Set("a", "two")
		ev = recv(t, ch)
		if ev.Err != nil || ev.Result != "two" || ev.Meta.Index != idx || ev.Meta.Age != 0 {
			t.Fatalf("recovery event = %+v, want two at %d", ev, idx)
		}
	})
}

// Polling kinds need MaxAge, fetch once per interval for all watchers, add
// up to MaxAge/16 jitter, and notify only when the value changed.
func TestNotifyPolling(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		src.Set("a", "one")
		k := register(t, newCache(t, watchcache.Options{}), "poll", src, watchcache.KindOptions{})
		ch := make(chan watchcache.UpdateEvent[string], 10)
		if err := k.Notify(t.Context(), req("a"), "w", ch); !errors.Is(err, watchcache.ErrInvalid) {
			t.Fatalf("Notify on a polling kind without MaxAge = %v, want ErrInvalid", err)
		}
		calls := src.Report()
		for i := range 10 {
			if err := k.Notify(t.Context(), watchcache.Request{Key: "a", MaxAge: 16 * time.Second}, fmt.Sprint(i), ch); err != nil {
				t.Fatal(err)
			}
		}
		<-calls
		start := time.Now()
		for range 10 {
			if ev := recv(t, ch); ev.Result != "one" {
				t.Fatalf("first event %+v", ev)
			}
		}
		// Ten polls, one per interval, unchanged values: no events.
		for i := range 10 {
			<-calls
			since := time.Since(start)
			lo, hi := time.Duration(i+1)*16*time.Second, time.Duration(i+1)*17*time.Second
			if since < lo || since > hi {
				t.Fatalf("poll %d at %v, want between %v and %v", i+1, since, lo, hi)
			}
		}
		synctest.Wait()
		noEvent(t, ch)
		src.Set("a", "two")
		<-calls
		for range 10 {
			if ev := recv(t, ch); ev.Result != "two" {
				t.Fatalf("changed event %+v", ev)
			}
		}
	})
}

// Cancelling a watcher's context ends the watch and frees it: no more
// events, and a non-refresh entry stops its upstream query.
func TestNotifyCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		src.Set("a", "one")
		c := newCache(t, watchcache.Options{})
		k := register(t, c, "kv", src, watchcache.KindOptions{SupportsBlocking: true})
		ctx, cancel := context.WithCancel(t.Context())
		ch := make(chan watchcache.UpdateEvent[string], 10)
		k.Notify(ctx, req("a"), "w", ch)
		recv(t, ch)
		synctest.Wait()
		if n := src.InFlight(); n != 1 {
			t.Fatalf("blocking queries while watched = %d, want 1", n)
		}
		cancel()
		synctest.Wait()
		if n := src.InFlight(); n != 0 {
			t.Fatalf("blocking queries after the only watcher left = %d, want 0", n)
		}
		src.Set("a", "two")
		synctest.Wait()
		noEvent(t, ch)
	})
}

// Watchers with MinIndex start after that index.
func TestNotifyMinIndex(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		i1 := src.Set("a", "one")
		k := register(t, newCache(t, watchcache.Options{}), "kv", src, blockingRefresh)
		get(t, k, req("a"))
		ch := make(chan watchcache.UpdateEvent[string], 10)
		k.Notify(t.Context(), watchcache.Request{Key: "a", MinIndex: i1}, "w", ch)
		synctest.Wait()
		noEvent(t, ch)
		src.Set("a", "two")
		if ev := recv(t, ch); ev.Result != "two" {
			t.Fatalf("event = %+v, want two", ev)
		}
	})
}

// Different tokens never share an event.
func TestNotifyPartitions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fetch := watchcache.FetchFunc[string](func(ctx context.Context, o watchcache.FetchOptions[string], r watchcache.Request) (watchcache.FetchResult[string], error) {
			if o.MinIndex > 0 {
				<-ctx.Done()
				return watchcache.FetchResult[string]{}, ctx.Err()
			}
			return watchcache.FetchResult[string]{Value: r.Partition.Token, Index: 1}, nil
		})
		c := newCache(t, watchcache.Options{})
		k, _ := watchcache.Register(c, "kv", asyncIfPush(fetch), blockingRefresh)
		a := make(chan watchcache.UpdateEvent[string], 1)
		b := make(chan watchcache.UpdateEvent[string], 1)
		k.Notify(t.Context(), watchcache.Request{Key: "k", Partition: watchcache.Partition{Token: "a"}}, "", a)
		k.Notify(t.Context(), watchcache.Request{Key: "k", Partition: watchcache.Partition{Token: "b"}}, "", b)
		if ev := recv(t, a); ev.Result != "a" {
			t.Fatalf("token a saw %q", ev.Result)
		}
		if ev := recv(t, b); ev.Result != "b" {
			t.Fatalf("token b saw %q", ev.Result)
		}
	})
}
