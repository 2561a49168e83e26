package watchcache_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/fakeupstream"
)

// pushMode makes register use the fake upstream in push mode
// (watchcache.AsyncFetcher). TestMain runs the whole suite in both modes.
var pushMode bool

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 && !flagSet("test.list") {
		// The second run covers the tests only: benchmarks choose their
		// mode themselves.
		for _, f := range []string{"test.bench", "test.fuzz"} {
			if err := flag.Set(f, ""); err != nil {
				panic(err)
			}
		}
		fmt.Fprintln(os.Stderr, "watchcache_test: the suite again, with the fake upstream in push mode")
		pushMode = true
		code = m.Run()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: errors on successful test run: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// flagSet reports whether the test flag name was given a value.
func flagSet(name string) bool {
	f := flag.Lookup(name)
	return f != nil && f.Value.String() != ""
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
	var f watchcache.Fetcher[string] = src
	if pushMode {
		f = src.Push()
	}
	k, err := watchcache.Register[string](c, name, f, opts)
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

// goAsync makes a pull Fetcher an AsyncFetcher: FetchAsync runs Fetch on a
// goroutine of its own and calls done with its result (a panic becomes
// ErrFetchPanic, as the cache reports it for Fetch). It lets the tests
// that script their own fetch functions run in push mode too.
type goAsync struct{ f watchcache.Fetcher[string] }

func (g goAsync) Fetch(ctx context.Context, o watchcache.FetchOptions[string], r watchcache.Request) (watchcache.FetchResult[string], error) {
	return g.f.Fetch(ctx, o, r)
}

func (g goAsync) FetchAsync(ctx context.Context, o watchcache.FetchOptions[string], r watchcache.Request, done func(watchcache.FetchResult[string], error)) {
	go func() {
		res, err := func() (res watchcache.FetchResult[string], err error) {
			defer func() {
				if p := recover(); p != nil {
					res, err = watchcache.FetchResult[string]{}, fmt.Errorf("%w: %v", watchcache.ErrFetchPanic, p)
				}
			}()
			return g.f.Fetch(ctx, o, r)
		}()
		done(res, err)
	}()
}

// asyncIfPush is f, as an AsyncFetcher in push mode.
func asyncIfPush(f watchcache.Fetcher[string]) watchcache.Fetcher[string] {
	if pushMode {
		return goAsync{f}
	}
	return f
}
