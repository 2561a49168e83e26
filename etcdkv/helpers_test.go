package etcdkv

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/etcdtest"
)

// TestMain fails the package if a goroutine of a Source, a cache, an etcd
// client or server outlives the tests.
func TestMain(m *testing.M) {
	etcdtest.RunChildIfAsked() // the etcd of BenchmarkEtcdNotifyManyKeys
	goleak.VerifyTestMain(m)
}

// waitFor bounds every wait of a test for something etcd or the cache
// does. Generous: the machines are small and shared, and -race is slow.
const waitFor = 30 * time.Second

// logger discards logs; set WATCHCACHE_TEST_LOG=1 to see them.
func logger() *slog.Logger {
	if os.Getenv("WATCHCACHE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// testCtx returns a context that bounds a whole test step.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	t.Cleanup(cancel)
	return ctx
}

// fastReconnect makes clients come back promptly after a member restarts
// (gRPC's default reconnect backoff starts at 1s and grows to minutes).
func fastReconnect(cc *clientv3.Config) {
	cc.DialOptions = append(cc.DialOptions, grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
		MinConnectTimeout: 5 * time.Second,
	}))
}

// allEndpoints returns the client URLs of every member, running or not,
// so that clients use restarted members again.
func allEndpoints(c *etcdtest.Cluster, n int) []string {
	eps := make([]string, n)
	for i := range eps {
		eps[i] = c.Endpoint(i)
	}
	return eps
}

// testConfig is a Config for tests against c (of n members): short
// intervals so failures show within a second or two.
func testConfig(c *etcdtest.Cluster, n int) Config {
	return Config{
		Endpoints:          allEndpoints(c, n),
		DialTimeout:        10 * time.Second,
		RequestTimeout:     2 * time.Second,
		ResetCheckInterval: 200 * time.Millisecond,
		ReadYourWritesWait: 2 * time.Second,
		ConfigureClient:    fastReconnect,
		Logger:             logger(),
	}
}

// fixture is a Source and a cache with its kinds, on a test cluster.
type fixture struct {
	src   *Source
	cache *watchcache.Cache
	kinds *Kinds
}

// newFixture starts a Source with cfg and a cache with opts, both closed
// (cache first) when the test ends.
func newFixture(t testing.TB, cfg Config, opts watchcache.Options) *fixture {
	t.Helper()
	src, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := src.Close(); err != nil {
			t.Errorf("Source.Close: %v", err)
		}
	})
	if opts.Logger == nil {
		opts.Logger = logger()
	}
	c, err := watchcache.New(opts)
	if err != nil {
		t.Fatalf("watchcache.New: %v", err)
	}
	t.Cleanup(func() { c.Close() }) // registered last: runs before src.Close
	kinds, err := src.Register(c)
	if err != nil {
		t.Fatalf("Register: %v", err)
	}
	return &fixture{src: src, cache: c, kinds: kinds}
}

// start starts a one-member cluster and a fixture on it, with a client
// for the test's own writes.
func start(t testing.TB) (*etcdtest.Cluster, *fixture, *clientv3.Client) {
	t.Helper()
	c := etcdtest.Start(t)
	f := newFixture(t, testConfig(c, 1), watchcache.Options{})
	return c, f, c.Client(t)
}

func put(t testing.TB, cli *clientv3.Client, key, val string) int64 {
	t.Helper()
	resp, err := cli.Put(testCtx(t), key, val)
	if err != nil {
		t.Fatalf("Put(%q): %v", key, err)
	}
	return resp.Header.Revision
}

func del(t testing.TB, cli *clientv3.Client, key string, opts ...clientv3.OpOption) int64 {
	t.Helper()
	resp, err := cli.Delete(testCtx(t), key, opts...)
	if err != nil {
		t.Fatalf("Delete(%q): %v", key, err)
	}
	return resp.Header.Revision
}

// getKey gets a key through the cache and fails the test on error.
func getKey(t testing.TB, f *fixture, r watchcache.Request) (Key, watchcache.ResultMeta) {
	t.Helper()
	v, meta, err := f.kinds.Key.Get(testCtx(t), r)
	if err != nil {
		t.Fatalf("Get %q: %v", r.Key, err)
	}
	return v, meta
}

// watch subscribes to kind with req and returns the channel of events.
func watch[V any](t testing.TB, kind *watchcache.Kind[V], req watchcache.Request) <-chan watchcache.UpdateEvent[V] {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch := make(chan watchcache.UpdateEvent[V], 16)
	if err := kind.Notify(ctx, req, req.Key, ch); err != nil {
		t.Fatalf("Notify %q: %v", req.Key, err)
	}
	return ch
}

// next returns the next event on ch, failing the test after waitFor.
func next[V any](t testing.TB, ch <-chan watchcache.UpdateEvent[V]) watchcache.UpdateEvent[V] {
	t.Helper()
	timer := time.NewTimer(waitFor)
	defer timer.Stop()
	select {
	case ev := <-ch:
		return ev
	case <-timer.C:
		t.Fatalf("no event after %v", waitFor)
		panic("unreachable")
	}
}

// until returns the first event on ch that ok accepts, failing the test
// after waitFor. Events it skips are described in the failure message.
func until[V any](t testing.TB, ch <-chan watchcache.UpdateEvent[V], what string, ok func(watchcache.UpdateEvent[V]) bool) watchcache.UpdateEvent[V] {
	t.Helper()
	timer := time.NewTimer(waitFor)
	defer timer.Stop()
	var seen []string
	for {
		select {
		case ev := <-ch:
			if ok(ev) {
				return ev
			}
			seen = append(seen, fmt.Sprintf("{index %d err %v value %+v}", ev.Meta.Index, ev.Err, ev.Result))
		case <-timer.C:
			t.Fatalf("no event with %s after %v; got %v", what, waitFor, seen)
		}
	}
}

// eventually polls cond until it holds, for state that offers no
// notification; it fails the test after waitFor.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v", what, waitFor)
		}
		<-tick.C
	}
}

func keyValue(ev watchcache.UpdateEvent[Key]) string {
	if !ev.Result.Exists {
		return "<missing>"
	}
	return string(ev.Result.Entry.Value)
}
