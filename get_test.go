package watchcache_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/fakeupstream"
)

// A second Get of a key is served from the cache with its metadata.
func TestGetMissThenHit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		idx := src.Set("a", "one")
		k := register(t, newCache(t, watchcache.Options{}), "kv", src, watchcache.KindOptions{})

		v, meta := get(t, k, req("a"))
		if v != "one" || meta.Hit || meta.Index != idx {
			t.Fatalf("first Get = %q %+v, want miss of %q at %d", v, meta, "one", idx)
		}
		time.Sleep(3 * time.Second)
		v, meta = get(t, k, req("a"))
		if v != "one" || !meta.Hit || meta.Index != idx || meta.Age != 3*time.Second {
			t.Fatalf("second Get = %q %+v, want hit aged 3s", v, meta)
		}
		if n := src.Calls("a"); n != 1 {
			t.Fatalf("fetches = %d, want 1", n)
		}
	})
}

// 100 concurrent Gets of a missing entry share one upstream fetch.
func TestGetSingleFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		src.Set("a", "one")
		src.Hang("a")
		k := register(t, newCache(t, watchcache.Options{}), "kv", src, watchcache.KindOptions{})

		var wg sync.WaitGroup
		errs := make(chan error, 100)
		for range 100 {
			wg.Go(func() {
				v, _, err := k.Get(context.Background(), req("a"))
				if err == nil && v != "one" {
					err = errors.New("got " + v)
				}
				errs <- err
			})
		}
		synctest.Wait() // every Get is waiting on the one hung fetch
		if n := src.Calls("a"); n != 1 {
			t.Fatalf("fetches while 100 Gets wait = %d, want 1", n)
		}
		src.Release("a")
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		if n := src.Calls("a"); n != 1 {
			t.Fatalf("fetches = %d, want 1", n)
		}
	})
}

// Entries are partitioned by token: no sharing of values or fetches.
func TestGetPartitionsByToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		tokens := map[string]int{}
		fetch := watchcache.FetchFunc[string](func(ctx context.Context, _ watchcache.FetchOptions[string], r watchcache.Request) (watchcache.FetchResult[string], error) {
			mu.Lock()
			tokens[r.Partition.Token]++
			mu.Unlock()
			if r.Partition.Token == "bad" {
				return watchcache.FetchResult[string]{}, watchcache.Fatal(errors.New("permission denied"))
			}
			return watchcache.FetchResult[string]{Value: "secret-of-" + r.Partition.Token, Index: 5}, nil
		})
		c := newCache(t, watchcache.Options{})
		k, err := watchcache.Register(c, "kv", asyncIfPush(fetch), watchcache.KindOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		results := make(chan string, 40)
		for i := range 40 {
			tok := []string{"alice", "bob", "bad", "alice"}[i%4]
			wg.Go(func() {
				v, _, err := k.Get(context.Background(), watchcache.Request{Key: "k", Partition: watchcache.Partition{Token: tok}})
				if tok == "bad" {
					if err == nil || v != "" {
						results <- "bad token got " + v
					}
					return
				}
				if err != nil || v != "secret-of-"+tok {
					results <- tok + " got " + v
				}
			})
		}
		wg.Wait()
		close(results)
		for r := range results {
			t.Error(r)
		}
		if tokens["alice"] != 1 || tokens["bob"] != 1 {
			t.Errorf("fetches per token = %v, want one each for alice and bob", tokens)
		}
	})
}

// A blocking Get waits for the index to pass MinIndex.
func TestGetBlocking(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		i1 := src.Set("a", "one")
		k := register(t, newCache(t, watchcache.Options{}), "kv", src, watchcache.KindOptions{SupportsBlocking: true})
		get(t, k, req("a"))

		done := make(chan string)
		go func() {
			v, meta := get(t, k, watchcache.Request{Key: "a", MinIndex: i1, Timeout: time.Minute})
			if meta.Index <= i1 {
				t.Errorf("blocking Get returned index %d, want > %d", meta.Index, i1)
			}
			done <- v
		}()
		synctest.Wait()
		select {
		case v := <-done:
			t.Fatalf("blocking Get returned %q before any change", v)
		default:
		}
		time.Sleep(10 * time.Second)
		src.Set("a", "two")
		if v := <-done; v != "two" {
			t.Fatalf("blocking Get = %q, want two", v)
		}
	})
}

// On timeout a blocking Get returns the last value and no error.
func TestGetBlockingTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		i1 := src.Set("a", "one")
		k := register(t, newCache(t, watchcache.Options{}), "kv", src, blockingRefresh)
		get(t, k, req("a"))

		start := time.Now()
		v, meta, err := k.Get(context.Background(), watchcache.Request{Key: "a", MinIndex: i1, Timeout: 30 * time.Second})
		if err != nil || v != "one" || meta.Index != i1 {
			t.Fatalf("timed out Get = %q %+v %v, want one at %d, no error", v, meta, err, i1)
		}
		if waited := time.Since(start); waited != 30*time.Second {
			t.Fatalf("waited %v, want the 30s timeout", waited)
		}
	})
}

// A blocking Get waiting on an index from before a reset returns the new
// state at once, and so does one that arrives with such an index later.
func TestGetBlockingIndexReset(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		src.SetIndex("a", "old", 100)
		k := register(t, newCache(t, watchcache.Options{}), "kv", src, blockingRefresh)
		get(t, k, req("a"))

		done := make(chan watchcache.ResultMeta)
		go func() {
			v, meta := get(t, k, watchcache.Request{Key: "a", MinIndex: 100, Timeout: time.Hour})
			if v != "restored" {
				t.Errorf("Get after reset = %q, want restored", v)
			}
			done <- meta
		}()
		synctest.Wait()
		src.SetIndex("a", "restored", 7) // a snapshot restore: the index went backwards
		if meta := <-done; meta.Index != 7 {
			t.Fatalf("index after reset = %d, want 7", meta.Index)
		}
		start := time.Now()
		v, meta := get(t, k, watchcache.Request{Key: "a", MinIndex: 100, Timeout: time.Hour})
		if v != "restored" || meta.Index != 7 || time.Since(start) != 0 {
			t.Fatalf("late Get with pre-reset index = %q %+v after %v, want restored at 7 at once", v, meta, time.Since(start))
		}
		// An index from the future still blocks until passed.
		go func() {
			v, _ := get(t, k, watchcache.Request{Key: "a", MinIndex: 200, Timeout: time.Hour})
			done <- watchcache.ResultMeta{Index: uint64(len(v))}
		}()
		synctest.Wait()
		select {
		case <-done:
			t.Fatal("Get with an index above any seen returned without a change")
		default:
		}
		src.SetIndex("a", "future", 201)
		<-done
	})
}

// MaxAge and MustRevalidate force a fresh fetch for non-refresh kinds.
func TestGetMaxAgeAndMustRevalidate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		src.Set("a", "one")
		k := register(t, newCache(t, watchcache.Options{}), "kv", src, watchcache.KindOptions{})
		get(t, k, req("a"))

		time.Sleep(5 * time.Second)
		if _, meta := get(t, k, watchcache.Request{Key: "a", MaxAge: 10 * time.Second}); !meta.Hit {
			t.Fatalf("Get within MaxAge missed: %+v", meta)
		}
		src.Set("a", "two")
		v, meta := get(t, k, watchcache.Request{Key: "a", MaxAge: 2 * time.Second})
		if v != "two" || meta.Hit || meta.Age != 0 {
			t.Fatalf("Get past MaxAge = %q %+v, want a fresh two", v, meta)
		}
		src.Set("a", "three")
		if v, meta := get(t, k, watchcache.Request{Key: "a", MustRevalidate: true}); v != "three" || meta.Hit {
			t.Fatalf("MustRevalidate Get = %q %+v, want a fresh three", v, meta)
		}
		if n := src.Calls("a"); n != 3 {
			t.Fatalf("fetches = %d, want 3", n)
		}
	})
}

// The error rules: the first error is returned; a later error does not
// hide the last good value from plain Gets; a Get that needs a fresh value
// gets the error with the last value; a newer success replaces the error.
func TestGetErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		src.Fail("a", errBoom)
		k := register(t, newCache(t, watchcache.Options{}), "kv", src, watchcache.KindOptions{})

		if _, _, err := k.Get(context.Background(), req("a")); !errors.Is(err, errBoom) {
			t.Fatalf("first Get error = %v, want boom", err)
		}
		src.Fail("a", nil)
		src.Set("a", "one")
		if v, _ := get(t, k, req("a")); v != "one" {
			t.Fatalf("Get after recovery = %q, want one", v)
		}
		src.Fail("a", errBoom)
		time.Sleep(time.Minute)
		v, meta, err := k.Get(context.Background(), watchcache.Request{Key: "a", MaxAge: time.Second})
		if !errors.Is(err, errBoom) || v != "one" || meta.Age != time.Minute {
			t.Fatalf("stale Get on failing source = %q %+v %v, want one aged 1m with boom", v, meta, err)
		}
		if v, meta, err := k.Get(context.Background(), req("a")); err != nil || v != "one" || !meta.Hit {
			t.Fatalf("plain Get after failure = %q %+v %v, want the last good value, no error", v, meta, err)
		}
		src.Fail("a", nil)
		src.Set("a", "two")
		if v, _, err := k.Get(context.Background(), watchcache.Request{Key: "a", MustRevalidate: true}); err != nil || v != "two" {
			t.Fatalf("Get after second recovery = %q %v, want two", v, err)
		}
		if _, _, err := k.Get(context.Background(), req("a")); err != nil {
			t.Fatalf("error returned again after a newer success: %v", err)
		}
	})
}

// A blocking Get on a failing source returns the error after one attempt,
// not after its whole timeout.
func TestGetBlockingSeesFreshError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		i1 := src.Set("a", "one")
		k := register(t, newCache(t, watchcache.Options{}), "kv", src, blockingRefresh)
		get(t, k, req("a"))

		start := time.Now()
		go func() {
			time.Sleep(time.Second)
			src.Fail("a", errBoom) // wakes the background blocking fetch, which now fails
		}()
		v, meta, err := k.Get(context.Background(), watchcache.Request{Key: "a", MinIndex: i1, Timeout: 10 * time.Minute})
		if !errors.Is(err, errBoom) || v != "one" || meta.Index != i1 {
			t.Fatalf("blocking Get = %q %+v %v, want one with boom", v, meta, err)
		}
		if waited := time.Since(start); waited != time.Second {
			t.Fatalf("blocking Get waited %v for the error, want 1s", waited)
		}
	})
}

// For refresh kinds, Age is 0 while the background query is healthy and
// counts from the first failure while it is not; the value stays readable.
// (The entry is kept subscribed while idle, which release_test.go covers.)
func TestGetRefreshAge(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		src.Set("a", "one")
		opts := blockingRefresh
		opts.ReleaseAfter = -1
		k := register(t, newCache(t, watchcache.Options{}), "kv", src, opts)
		get(t, k, req("a"))
		time.Sleep(time.Hour)
		if _, meta := get(t, k, req("a")); meta.Age != 0 || !meta.Hit {
			t.Fatalf("healthy refresh entry after 1h: %+v, want Age 0", meta)
		}
		src.Fail("a", errBoom)
		synctest.Wait()
		failedAt := time.Now()
		time.Sleep(90 * time.Second)
		v, meta, err := k.Get(context.Background(), req("a"))
		if err != nil || v != "one" || meta.Age != time.Since(failedAt) {
			t.Fatalf("failing refresh entry = %q %+v %v, want one aged %v", v, meta, err, time.Since(failedAt))
		}
		src.Fail("a", nil)
		src.Set("a", "two")
		time.Sleep(2 * time.Minute) // past the longest backoff
		if v, meta := get(t, k, req("a")); v != "two" || meta.Age != 0 {
			t.Fatalf("recovered refresh entry = %q %+v, want two with Age 0", v, meta)
		}
	})
}

// Cancelling the Get that created an entry, while its fetch hangs, returns
// at once and does not freeze the entry for others.
func TestGetCancelWhileFetchHangs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		src.Set("a", "one")
		src.Hang("a")
		k := register(t, newCache(t, watchcache.Options{}), "kv", src, blockingRefresh)

		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error)
		go func() {
			_, _, err := k.Get(ctx, req("a"))
			errc <- err
		}()
		synctest.Wait()
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled Get = %v, want context.Canceled", err)
		}
		src.Release("a")
		synctest.Wait()
		if _, meta := get(t, k, req("a")); !meta.Hit {
			t.Fatalf("entry did not get its value after the first caller left: %+v", meta)
		}
		// And it keeps refreshing.
		src.Set("a", "two")
		synctest.Wait()
		if v, _ := get(t, k, req("a")); v != "two" {
			t.Fatalf("entry stopped refreshing: %q", v)
		}
	})
}

// A Get with an empty key bypasses the cache.
func TestGetEmptyKeyBypasses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		src.Set("", "root")
		k := register(t, newCache(t, watchcache.Options{}), "kv", src, watchcache.KindOptions{})
		for range 3 {
			if v, meta := get(t, k, req("")); v != "root" || meta.Hit {
				t.Fatalf("bypass Get = %q %+v", v, meta)
			}
		}
		if n := src.Calls(""); n != 3 {
			t.Fatalf("fetches = %d, want 3: an empty key must not be cached", n)
		}
	})
}

// A fetch function's panic is an error, not a crash.
func TestGetFetchPanic(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		src.Panic("a", "kaboom")
		k := register(t, newCache(t, watchcache.Options{}), "kv", src, watchcache.KindOptions{})
		if _, _, err := k.Get(context.Background(), req("a")); !errors.Is(err, watchcache.ErrFetchPanic) {
			t.Fatalf("Get on panicking fetch = %v, want ErrFetchPanic", err)
		}
	})
}

// A blocking Get answered by a failed attempt is no longer a reason to
// fetch: against a failing upstream each blocking Get costs one fetch, not
// the free retries of an entry that nobody waits on any more.
func TestGetBlockingFailureFetchesOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		idx := src.Set("a", "v")
		k := register(t, newCache(t, watchcache.Options{}), "kv", src, watchcache.KindOptions{SupportsBlocking: true})
		get(t, k, req("a"))
		src.Fail("a", errBoom)
		calls := src.Calls("a")
		const gets = 20
		for i := range gets {
			_, _, err := k.Get(t.Context(), watchcache.Request{Key: "a", MinIndex: idx})
			if !errors.Is(err, errBoom) {
				t.Fatalf("blocking Get %d = %v, want the upstream's error", i, err)
			}
			synctest.Wait()
		}
		if got := src.Calls("a") - calls; got != gets {
			t.Fatalf("%d blocking Gets against a failing upstream made %d fetches, want %d", gets, got, gets)
		}
	})
}
