package etcdkv

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/etcdtest"
)

// BenchmarkEtcdNotifyFanout measures how long one change of an etcd key
// takes to reach every one of many watchers, and how many etcd watches
// that costs:
//
//   - cache: cache watchers (NotifyCallback) on one etcd-key entry;
//   - cache-chan: cache watchers with channels (Notify), each drained by a
//     goroutine, the consumer shape the direct case needs;
//   - direct: one clientv3 watch per watcher, each drained by a goroutine.
//
// A change is done when every watcher has seen it. ns/change is the mean
// time from the Put to that point; etcd-watches is the number of watchers
// the etcd server holds, from its own gauge etcd_debugging_mvcc_watcher_total
// (the server is embedded, so the gauge is in this process's default
// Prometheus registry). Allocations include the embedded etcd server's.
func BenchmarkEtcdNotifyFanout(b *testing.B) {
	for _, n := range []int{10000} {
		b.Run("watchers="+strconv.Itoa(n), func(b *testing.B) {
			b.Run("cache", func(b *testing.B) { benchFanout(b, n, cacheCallbacks) })
			b.Run("cache-chan", func(b *testing.B) { benchFanout(b, n, cacheChannels) })
			b.Run("direct", func(b *testing.B) { benchFanout(b, n, directWatches) })
		})
	}
}

// seenFunc is what a watcher calls with each revision it sees.
type seenFunc func(watcher int, rev int64)

// subscriber starts n watchers of key (whose current revision is rev0)
// that report to seen, and returns when they are set up.
type subscriber func(b *testing.B, ctx context.Context, c *etcdtest.Cluster, key string, rev0 int64, n int, seen seenFunc, wg *sync.WaitGroup)

func cacheCallbacks(b *testing.B, ctx context.Context, c *etcdtest.Cluster, key string, _ int64, n int, seen seenFunc, _ *sync.WaitGroup) {
	f := benchFixture(b, c)
	for i := range n {
		err := f.kinds.Key.NotifyCallback(ctx, KeyRequest(key, self), "", func(ev watchcache.UpdateEvent[Key]) {
			seen(i, int64(ev.Meta.Index))
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

func cacheChannels(b *testing.B, ctx context.Context, c *etcdtest.Cluster, key string, _ int64, n int, seen seenFunc, wg *sync.WaitGroup) {
	f := benchFixture(b, c)
	for i := range n {
		ch := make(chan watchcache.UpdateEvent[Key], 1)
		if err := f.kinds.Key.Notify(ctx, KeyRequest(key, self), "", ch); err != nil {
			b.Fatal(err)
		}
		wg.Go(func() {
			for {
				select {
				case ev := <-ch:
					seen(i, int64(ev.Meta.Index))
				case <-ctx.Done():
					return
				}
			}
		})
	}
}

func directWatches(b *testing.B, ctx context.Context, c *etcdtest.Cluster, key string, rev0 int64, n int, seen seenFunc, wg *sync.WaitGroup) {
	cli := c.Client(b)
	wctx := clientv3.WithRequireLeader(ctx)
	for i := range n {
		wch := cli.Watch(wctx, key, clientv3.WithRev(rev0+1))
		seen(i, rev0) // a watch from rev0+1 has nothing to report until a change
		wg.Go(func() {
			for wr := range wch {
				if len(wr.Events) > 0 {
					seen(i, wr.Events[len(wr.Events)-1].Kv.ModRevision)
				}
			}
		})
	}
}

func benchFixture(b *testing.B, c *etcdtest.Cluster) *fixture {
	src, err := New(Config{Endpoints: c.Endpoints(), Logger: logger()})
	if err != nil {
		b.Fatal(err)
	}
	return fixtureFor(b, src)
}

func benchFanout(b *testing.B, n int, subscribe subscriber) {
	c := etcdtest.Start(b)
	cli := c.Client(b)
	const key = "/bench/k"
	rev0 := put(b, cli, key, "0")
	baseWatchers := serverWatchers(b)

	// Each watcher's highest revision seen; a change is done when all n
	// reached target.
	var (
		target  atomic.Int64
		reached atomic.Int64
		done    = make(chan struct{}, 1)
		highest = make([]atomic.Int64, n)
	)
	seen := func(i int, rev int64) {
		for {
			prev := highest[i].Load()
			if rev <= prev {
				return
			}
			if highest[i].CompareAndSwap(prev, rev) {
				if t := target.Load(); prev < t && rev >= t && reached.Add(1) == int64(n) {
					done <- struct{}{}
				}
				return
			}
		}
	}
	wait := func(what string) {
		select {
		case <-done:
		case <-time.After(2 * time.Minute):
			b.Fatalf("%s: %d of %d watchers reached revision %d", what, reached.Load(), n, target.Load())
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	target.Store(rev0)
	subscribe(b, ctx, c, key, rev0, n, seen, &wg)
	wait("initial value")
	var watches float64
	eventually(b, "etcd watches settle", func() bool {
		w := serverWatchers(b) - baseWatchers
		if w == watches && w > 0 {
			return true
		}
		watches = w
		return false
	})

	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		rev := rev0 + int64(i) + 1 // the only writer: revisions are predictable
		reached.Store(0)
		target.Store(rev)
		resp, err := cli.Put(context.Background(), key, strconv.Itoa(i))
		if err != nil {
			b.Fatal(err)
		}
		if resp.Header.Revision != rev {
			b.Fatalf("put at revision %d, want %d: another writer?", resp.Header.Revision, rev)
		}
		wait(fmt.Sprintf("change %d", i))
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/change")
	b.ReportMetric(watches, "etcd-watches")
}
