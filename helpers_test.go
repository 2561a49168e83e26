package watchcache_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/fakeupstream"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// quiet discards the cache's logs; set WATCHCACHE_TEST_LOG=1 to see them.
func quiet() *slog.Logger {
	if os.Getenv("WATCHCACHE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// newCache returns a cache closed when the test ends.
func newCache(t testing.TB, opts watchcache.Options) *watchcache.Cache {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = quiet()
	}
	c, err := watchcache.New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// register registers a string kind fetched from src.
func register(t testing.TB, c *watchcache.Cache, name string, src *fakeupstream.Source, opts watchcache.KindOptions) *watchcache.Kind[string] {
	t.Helper()
	k, err := watchcache.Register[string](c, name, src, opts)
	if err != nil {
		t.Fatalf("Register(%q): %v", name, err)
	}
	return k
}

var blockingRefresh = watchcache.KindOptions{Refresh: true, SupportsBlocking: true}

// req is a request for key under the default partition.
func req(key string) watchcache.Request { return watchcache.Request{Key: key} }

// get calls k.Get and fails the test on error.
func get(t testing.TB, k *watchcache.Kind[string], r watchcache.Request) (string, watchcache.ResultMeta) {
	t.Helper()
	v, meta, err := k.Get(context.Background(), r)
	if err != nil {
		t.Fatalf("Get(%+v): %v", r, err)
	}
	return v, meta
}

// recv returns the next event on ch, failing the test if none is ready
// once every goroutine of the bubble is blocked.
func recv[V any](t testing.TB, ch <-chan watchcache.UpdateEvent[V]) watchcache.UpdateEvent[V] {
	t.Helper()
	select {
	case ev := <-ch:
		return ev
	case <-time.After(time.Hour): // fake time: only if nothing else can happen
		t.Fatalf("no event")
		panic("unreachable")
	}
}

// noEvent fails the test if an event is ready on ch.
func noEvent[V any](t testing.TB, ch <-chan watchcache.UpdateEvent[V]) {
	t.Helper()
	select {
	case ev := <-ch:
		t.Fatalf("unexpected event %+v", ev)
	default:
	}
}

var errBoom = errors.New("boom")
