package watchcache_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"runtime/metrics"
	"syscall"
	"testing"
	"time"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/fakeupstream"
)

// memInUse is the live heap (the bytes of reachable objects, measured by
// the GC that runs first) and the goroutine stack memory in use. Live bytes
// rather than HeapInuse: spans left partly free by an earlier benchmark run
// would otherwise absorb new objects and hide them.
func memInUse() (heap, stack int64) {
	heap, _, stack = memStats()
	return heap, stack
}

// memStats is memInUse plus HeapInuse: the heap's in-use spans, which
// counts the allocator's slack too.
func memStats() (live, inuse, stack int64) {
	runtime.GC()
	samples := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(samples)
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(samples[0].Value.Uint64()), int64(m.HeapInuse), int64(m.StackInuse)
}

// firstInuse keeps, per benchmark, the HeapInuse growth its first run
// measured. Later runs would find spans freed by earlier ones and
// undercount; run the benchmark alone for a figure from a fresh process.
var firstInuse = map[string]float64{}

// BenchmarkNotifyFanout measures one upstream change delivered to every
// watcher of one key. Each iteration is one change and ends when every
// watcher has received it. The consumers' channels are allocated before
// the baseline, so B/watcher is what the cache spends per watcher.
func BenchmarkNotifyFanout(b *testing.B) {
	for _, n := range []int{1000, 10_000, 100_000} {
		b.Run(fmt.Sprintf("watchers=%d", n), func(b *testing.B) {
			src := fakeupstream.New()
			src.Set("k", "v0")
			c := newCache(b, watchcache.Options{})
			k := register(b, c, "kv", src, blockingRefresh)
			get(b, k, req("k"))
			chans := make([]chan watchcache.UpdateEvent[string], n)
			for i := range chans {
				chans[i] = make(chan watchcache.UpdateEvent[string], 1)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()

			goroutines := runtime.NumGoroutine()
			heap, _ := memInUse()
			for i, ch := range chans {
				if err := k.Notify(ctx, req("k"), "w", ch); err != nil {
					b.Fatal(err)
				}
				<-chans[i] // initial value
			}
			// Reported at the end: ResetTimer drops metrics reported before it.
			heapAfter, _ := memInUse()
			perWatcher := float64(heapAfter-heap) / float64(n)
			goroutinesPer := float64(runtime.NumGoroutine()-goroutines) / float64(n)

			calls := src.Calls("k")
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				want := fmt.Sprint("v", i+1)
				src.Set("k", want)
				for _, ch := range chans {
					if ev := <-ch; ev.Result != want {
						b.Fatalf("got %q, want %q", ev.Result, want)
					}
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/change")
			b.ReportMetric(float64(src.Calls("k")-calls)/float64(b.N), "fetches/change")
			b.ReportMetric(perWatcher, "B/watcher")
			b.ReportMetric(goroutinesPer, "goroutines/watcher")
		})
	}
}

// BenchmarkNotifyManyKeys has 100,000 keys with one watcher each; each
// iteration changes one random key and waits for its watcher. B/key is
// live heap; inuse-B/key is the growth of the heap's in-use spans, the
// allocator's slack included (from the benchmark's first run); stack-B/key
// is the stack of each entry's goroutine, which waits in the source's
// blocking fetch.
func BenchmarkNotifyManyKeys(b *testing.B) {
	const n = 100_000
	src := fakeupstream.New()
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("service/%06d/config", i)
		src.Set(keys[i], "v")
	}
	chans := make([]chan watchcache.UpdateEvent[string], n)
	for i := range chans {
		chans[i] = make(chan watchcache.UpdateEvent[string], 1)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	goroutines := runtime.NumGoroutine()
	heap, inuse, stack := memStats()
	c := newCache(b, watchcache.Options{})
	k := register(b, c, "kv", src, blockingRefresh)
	for i, key := range keys {
		if err := k.Notify(ctx, req(key), key, chans[i]); err != nil {
			b.Fatal(err)
		}
	}
	for _, ch := range chans {
		<-ch
	}
	for src.InFlight() < n { // every entry's blocking query is open
		time.Sleep(time.Millisecond)
	}
	heapAfter, inuseAfter, stackAfter := memStats()
	perKey, stackPerKey := float64(heapAfter-heap)/n, float64(stackAfter-stack)/n
	if _, ok := firstInuse[b.Name()]; !ok {
		firstInuse[b.Name()] = float64(inuseAfter-inuse) / n
	}
	goroutinesPer := float64(runtime.NumGoroutine()-goroutines) / n

	rng := rand.New(rand.NewPCG(1, 2))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		j := rng.IntN(n)
		want := fmt.Sprint("v", i)
		src.Set(keys[j], want)
		if ev := <-chans[j]; ev.Result != want {
			b.Fatalf("got %q, want %q", ev.Result, want)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/change")
	b.ReportMetric(perKey, "B/key")
	b.ReportMetric(stackPerKey, "stack-B/key")
	b.ReportMetric(firstInuse[b.Name()], "inuse-B/key")
	b.ReportMetric(goroutinesPer, "goroutines/key")
}

// BenchmarkNotifyPolling has 1,000 watchers polling one key of a polling
// kind every 100ms. Each iteration is one poll; it reports the upstream
// fetch rate (one poll loop for the entry, not one per watcher) and the
// CPU time the process spends per second.
func BenchmarkNotifyPolling(b *testing.B) {
	src := fakeupstream.New()
	src.Set("k", "v")
	c := newCache(b, watchcache.Options{})
	k := register(b, c, "poll", src, watchcache.KindOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := make(chan watchcache.UpdateEvent[string], 1000)
	for range 1000 {
		if err := k.Notify(ctx, watchcache.Request{Key: "k", MaxAge: 100 * time.Millisecond}, "", ch); err != nil {
			b.Fatal(err)
		}
	}
	for range 1000 {
		<-ch
	}
	polls := src.Report()
	<-polls
	calls, cpu, start := src.Calls("k"), cpuTime(), time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		<-polls
	}
	b.StopTimer()
	elapsed := time.Since(start).Seconds()
	b.ReportMetric(float64(src.Calls("k")-calls)/elapsed, "fetches/s")
	b.ReportMetric((cpuTime()-cpu).Seconds()/elapsed, "CPU-s/s")
}

// cpuTime is the user and system CPU time of the process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
