package etcdkv

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"runtime/metrics"
	"strconv"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/etcdtest"
)

// BenchmarkEtcdNotifyManyKeys watches many etcd keys through the cache, one
// watcher each, and changes one random key per iteration, waiting for its
// watcher. etcd runs in a child process, so the memory figures are the
// client side's alone (cache, source and etcd client), measured from the
// benchmark's first run once every watcher has its first value and every
// entry waits: B/key is live heap, inuse-B/key the growth of in-use heap
// spans (allocator slack included), stack-B/key the growth of goroutine
// stacks. etcd-streams and etcd-watchers are the server's own gauges
// (etcd_debugging_mvcc_watch_stream_total, _watcher_total).
//
//	go test -run '^$' -bench EtcdNotifyManyKeys -benchtime 2000x ./etcdkv/
func BenchmarkEtcdNotifyManyKeys(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) { benchManyKeys(b, n) })
	}
}

// manyKeysMem keeps each benchmark's first-run figures (see firstMem in the
// root package's benchmarks).
var manyKeysMem = map[string][5]float64{}

func benchManyKeys(b *testing.B, n int) {
	endpoint := etcdtest.StartChild(b)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	defer cli.Close()
	ctx := context.Background()
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("/service/%06d/config", i)
	}
	for i := 0; i < n; i += 100 { // etcd allows 128 operations per transaction
		var ops []clientv3.Op
		for _, k := range keys[i:min(i+100, n)] {
			ops = append(ops, clientv3.OpPut(k, "v"))
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			b.Fatal(err)
		}
	}
	chans := make([]chan watchcache.UpdateEvent[Key], n)
	for i := range chans {
		chans[i] = make(chan watchcache.UpdateEvent[Key], 1)
	}
	goroutines := runtime.NumGoroutine()
	heap, inuse, stack := benchMemStats()

	src, err := New(Config{Endpoints: []string{endpoint}, Logger: logger()})
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	c, err := watchcache.New(watchcache.Options{Logger: logger()})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close() // before src.Close
	kinds, err := src.Register(c)
	if err != nil {
		b.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for i, k := range keys {
		if err := kinds.Key.Notify(wctx, KeyRequest(k, self), "", chans[i]); err != nil {
			b.Fatal(err)
		}
	}
	for i, ch := range chans {
		select {
		case ev := <-ch:
			if ev.Err != nil || keyValue(ev) != "v" {
				b.Fatalf("first event of %s: %+v", keys[i], ev)
			}
		case <-time.After(5 * time.Minute):
			b.Fatalf("no first event for %s", keys[i])
		}
	}
	for deadline := time.Now().Add(time.Minute); ; {
		src.waits.mu.Lock()
		waiting := src.waits.n
		src.waits.mu.Unlock()
		if waiting == n {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d entries wait for a change", waiting, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, ok := manyKeysMem[b.Name()]; !ok {
		heapAfter, inuseAfter, stackAfter := benchMemStats()
		nf := float64(n)
		manyKeysMem[b.Name()] = [5]float64{
			float64(heapAfter-heap) / nf, float64(inuseAfter-inuse) / nf, float64(stackAfter-stack) / nf,
			float64(runtime.NumGoroutine()-goroutines) / nf,
		}
	}
	mem := manyKeysMem[b.Name()]
	streams, watchers := etcdtest.Metric(b, endpoint, "etcd_debugging_mvcc_watch_stream_total"), etcdtest.Metric(b, endpoint, "etcd_debugging_mvcc_watcher_total")

	rng := rand.New(rand.NewPCG(1, 2))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		j := rng.IntN(n)
		want := strconv.Itoa(i)
		if _, err := cli.Put(ctx, keys[j], want); err != nil {
			b.Fatal(err)
		}
		select {
		case ev := <-chans[j]:
			if ev.Err != nil || keyValue(ev) != want {
				b.Fatalf("event of %s: %+v, want %s", keys[j], ev, want)
			}
		case <-time.After(time.Minute):
			b.Fatalf("no event for %s", keys[j])
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/change")
	b.ReportMetric(mem[0], "B/key")
	b.ReportMetric(mem[1], "inuse-B/key")
	b.ReportMetric(mem[2], "stack-B/key")
	b.ReportMetric(mem[3], "goroutines/key")
	b.ReportMetric(streams, "etcd-streams")
	b.ReportMetric(watchers, "etcd-watchers")
}

func benchMemStats() (live, inuse, stack int64) {
	runtime.GC()
	samples := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(samples)
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(samples[0].Value.Uint64()), int64(m.HeapInuse), int64(m.StackInuse)
}
