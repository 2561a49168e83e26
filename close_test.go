package watchcache_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"testing/synctest"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/fakeupstream"
)

// Close with 1,000 watchers, hung fetches and waiting Gets ends everything
// and returns once the cache's goroutines are gone (synctest.Test fails if
// any is left blocked). Every watcher gets a final ErrClosed event.
func TestCloseWithWatchersAndHungFetches(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		c, err := watchcache.New(watchcache.Options{Logger: quiet()})
		if err != nil {
			t.Fatal(err)
		}
		k := register(t, c, "kv", src, blockingRefresh)
		poll := register(t, c, "poll", src, watchcache.KindOptions{})
		const keys, watchers = 10, 1000
		for i := range keys {
			src.Set(fmt.Sprint(i), "v")
			src.Hang(fmt.Sprint(i))
		}
		chans := make([]chan watchcache.UpdateEvent[string], watchers)
		closed := make(chan struct{})
		for i := range watchers {
			key := fmt.Sprint(i % keys)
			switch i % 3 {
			case 0:
				chans[i] = make(chan watchcache.UpdateEvent[string], 1)
				err = k.Notify(context.Background(), req(key), "", chans[i])
			case 1:
				err = k.NotifyCallback(context.Background(), req(key), "", func(ev watchcache.UpdateEvent[string]) {
					select {
					case <-closed:
						t.Errorf("callback called after Close: %+v", ev)
					default:
					}
				})
			case 2:
				chans[i] = make(chan watchcache.UpdateEvent[string], 1)
				err = poll.Notify(context.Background(), watchcache.Request{Key: key, MaxAge: 1e9}, "", chans[i])
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		getErrs := make(chan error, keys)
		for i := range keys {
			go func() {
				_, _, err := k.Get(context.Background(), req(fmt.Sprint(i)))
				getErrs <- err
			}()
		}
		synctest.Wait()
		if n := src.InFlight(); n != 2*keys {
			t.Fatalf("hung fetches = %d, want %d", n, 2*keys)
		}

		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		close(closed)
		for i := range keys {
			if err := <-getErrs; !errors.Is(err, watchcache.ErrClosed) {
				t.Fatalf("waiting Get %d = %v, want ErrClosed", i, err)
			}
		}
		for i, ch := range chans {
			if ch == nil {
				continue
			}
			if ev := <-ch; !errors.Is(ev.Err, watchcache.ErrClosed) {
				t.Fatalf("watcher %d final event = %+v, want ErrClosed", i, ev)
			}
		}
		if n := src.InFlight(); n != 0 {
			t.Fatalf("fetches still running after Close: %d", n)
		}

		// After Close: errors, never hangs.
		if _, _, err := k.Get(context.Background(), req("0")); !errors.Is(err, watchcache.ErrClosed) {
			t.Fatalf("Get after Close = %v", err)
		}
		if err := k.Notify(context.Background(), req("0"), "", make(chan watchcache.UpdateEvent[string])); !errors.Is(err, watchcache.ErrClosed) {
			t.Fatalf("Notify after Close = %v", err)
		}
		if err := k.Prepopulate(req("0"), watchcache.FetchResult[string]{}); !errors.Is(err, watchcache.ErrClosed) {
			t.Fatalf("Prepopulate after Close = %v", err)
		}
		if _, err := watchcache.Register(c, "late", src, watchcache.KindOptions{}); !errors.Is(err, watchcache.ErrClosed) {
			t.Fatalf("Register after Close = %v", err)
		}
		if err := c.Close(); !errors.Is(err, watchcache.ErrClosed) {
			t.Fatalf("second Close = %v", err)
		}
	})
}

// Bad input is a clear, synchronous error.
func TestValidation(t *testing.T) {
	c := newCache(t, watchcache.Options{})
	src := fakeupstream.New()
	k := register(t, c, "kv", src, blockingRefresh)
	poll := register(t, c, "poll", src, watchcache.KindOptions{})
	ch := make(chan watchcache.UpdateEvent[string])
	ctx := context.Background()
	cases := []struct {
		name string
		err  error
		want error
	}{
		{"duplicate kind", func() error { _, err := watchcache.Register(c, "kv", src, watchcache.KindOptions{}); return err }(), watchcache.ErrDuplicateKind},
		{"nil fetcher", func() error { _, err := watchcache.Register[string](c, "x", nil, watchcache.KindOptions{}); return err }(), watchcache.ErrInvalid},
		{"nil fetch func", func() error {
			_, err := watchcache.Register(c, "x", watchcache.FetchFunc[string](nil), watchcache.KindOptions{})
			return err
		}(), watchcache.ErrInvalid},
		{"empty kind name", func() error { _, err := watchcache.Register(c, "", src, watchcache.KindOptions{}); return err }(), watchcache.ErrInvalid},
		{"negative QueryTimeout", func() error {
			_, err := watchcache.Register(c, "x", src, watchcache.KindOptions{QueryTimeout: -1})
			return err
		}(), watchcache.ErrInvalid},
		{"negative LastGetTTL", func() error {
			_, err := watchcache.Register(c, "x", src, watchcache.KindOptions{LastGetTTL: -1})
			return err
		}(), watchcache.ErrInvalid},
		{"negative RefreshTimer", func() error {
			_, err := watchcache.Register(c, "x", src, watchcache.KindOptions{RefreshTimer: -1})
			return err
		}(), watchcache.ErrInvalid},
		{"polling refresh without RefreshTimer", func() error {
			_, err := watchcache.Register(c, "x", src, watchcache.KindOptions{Refresh: true})
			return err
		}(), watchcache.ErrInvalid},
		{"unknown kind", func() error { _, err := watchcache.KindOf[string](c, "nope"); return err }(), watchcache.ErrUnknownKind},
		{"kind of another type", func() error { _, err := watchcache.KindOf[int](c, "kv"); return err }(), watchcache.ErrKindType},
		{"negative Timeout", func() error { _, _, err := k.Get(ctx, watchcache.Request{Key: "a", Timeout: -1}); return err }(), watchcache.ErrInvalid},
		{"negative MaxAge", func() error { _, _, err := k.Get(ctx, watchcache.Request{Key: "a", MaxAge: -1}); return err }(), watchcache.ErrInvalid},
		{"nil channel", k.Notify(ctx, req("a"), "", nil), watchcache.ErrInvalid},
		{"nil callback", k.NotifyCallback(ctx, req("a"), "", nil), watchcache.ErrInvalid},
		{"Notify with empty key", k.Notify(ctx, req(""), "", ch), watchcache.ErrInvalid},
		{"polling Notify without MaxAge", poll.Notify(ctx, req("a"), "", ch), watchcache.ErrInvalid},
		{"Prepopulate with empty key", k.Prepopulate(req(""), watchcache.FetchResult[string]{}), watchcache.ErrInvalid},
		{"negative fetch rate", func() error { _, err := watchcache.New(watchcache.Options{EntryFetchRate: -1}); return err }(), watchcache.ErrInvalid},
		{"negative burst", func() error { _, err := watchcache.New(watchcache.Options{EntryFetchBurst: -1}); return err }(), watchcache.ErrInvalid},
		{"negative MaxEntries", func() error { _, err := watchcache.New(watchcache.Options{MaxEntries: -1}); return err }(), watchcache.ErrInvalid},
		{"negative burst at run time", c.SetEntryFetchRate(1, -1), watchcache.ErrInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !errors.Is(tc.err, tc.want) {
				t.Fatalf("error = %v, want %v", tc.err, tc.want)
			}
			if tc.err.Error() == tc.want.Error() {
				t.Fatalf("error %q does not name the problem", tc.err)
			}
		})
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := k.Notify(cancelled, req("a"), "", ch); !errors.Is(err, context.Canceled) {
		t.Fatalf("Notify with a cancelled context = %v", err)
	}
	if typed, err := watchcache.KindOf[string](c, "kv"); err != nil || typed != k || typed.Name() != "kv" {
		t.Fatalf("KindOf = %v %v", typed, err)
	}
}

// Metrics are registered on the caller's registry and count what happens.
func TestMetrics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		src.Set("a", "one")
		reg := prometheus.NewRegistry()
		c := newCache(t, watchcache.Options{Registerer: reg})
		k := register(t, c, "kv", src, watchcache.KindOptions{})
		get(t, k, req("a"))
		get(t, k, req("a"))
		get(t, k, req("a"))
		src.Fail("b", errBoom)
		k.Get(context.Background(), req("b"))
		ch := make(chan watchcache.UpdateEvent[string], 1)
		k.Notify(t.Context(), watchcache.Request{Key: "a", MaxAge: 1e9}, "", ch)
		synctest.Wait()
		for name, want := range map[string]float64{
			"watchcache_hits_total":             2,
			"watchcache_misses_total":           2,
			"watchcache_fetches_total":          2, // a success and an error, before the watcher polls
			"watchcache_fetch_duration_seconds": 2,
			"watchcache_entries":                2,
			"watchcache_watchers":               1,
		} {
			if got := gauge(t, reg, name); got != want {
				t.Errorf("%s = %v, want %v", name, got, want)
			}
		}
		st := c.Stats()
		if st.Entries != 2 || st.Watchers != 1 || st.Hits != 2 || st.Misses != 2 || st.Fetches != 2 || st.Failures != 1 {
			t.Errorf("Stats = %+v, want 2 entries, 1 watcher, 2 hits, 2 misses, 2 fetches, 1 failure", st)
		}
		if _, err := watchcache.New(watchcache.Options{Registerer: reg}); err == nil {
			t.Fatal("registering the metrics twice on one registry succeeded")
		}
	})
}

// Prepopulate seeds an entry; refresh kinds then keep it fresh.
func TestPrepopulate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		src.SetIndex("a", "upstream", 10)
		k := register(t, newCache(t, watchcache.Options{}), "kv", src, blockingRefresh)
		if err := k.Prepopulate(req("a"), watchcache.FetchResult[string]{Value: "seeded", Index: 10}); err != nil {
			t.Fatal(err)
		}
		if v, meta := get(t, k, req("a")); v != "seeded" || !meta.Hit || meta.Index != 10 {
			t.Fatalf("Get after Prepopulate = %q %+v", v, meta)
		}
		src.Set("a", "changed")
		synctest.Wait()
		if v, _ := get(t, k, req("a")); v != "changed" {
			t.Fatalf("prepopulated refresh entry did not refresh: %q", v)
		}
	})
}
