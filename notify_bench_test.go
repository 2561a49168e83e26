package watchcache_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"runtime/metrics"
	"strconv"
	"sync"
	"sync/atomic"
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

// firstMem keeps, per benchmark, the memory its first run measured (see
// firstInuse): a later run's baseline may still hold what the previous
// run's cache freed, and the difference comes out too low, even negative.
var firstMem = map[string][3]float64{}

// BenchmarkNotifyFanout measures one upstream change delivered to every
// watcher of one key. Each iteration is one change and ends when every
// watcher has received it. The consumers' channels are allocated before
// the baseline, so B/watcher is what the cache spends per watcher.
func BenchmarkNotifyFanout(b *testing.B) {
	for _, n := range []int{1000, 10_000, 100_000} {
		b.Run(fmt.Sprintf("watchers=%d", n), func(b *testing.B) {
			src, _, k := oneKey(b, "v0")
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
// is the growth of goroutine stacks. With mode=fetch each entry's
// goroutine waits in the source's blocking Fetch; with mode=push the
// source is an AsyncFetcher and a waiting entry has no goroutine.
func BenchmarkNotifyManyKeys(b *testing.B) {
	for _, mode := range []string{"fetch", "push"} {
		b.Run("mode="+mode, func(b *testing.B) { benchmarkNotifyManyKeys(b, mode == "push") })
	}
}

func benchmarkNotifyManyKeys(b *testing.B, push bool) {
	const n = 100_000
	src := fakeupstream.New()
	var f watchcache.Fetcher[string] = src
	if push {
		f = src.Push()
	}
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
	k, err := watchcache.Register(c, "kv", f, blockingRefresh)
	if err != nil {
		b.Fatal(err)
	}
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
	if _, ok := firstMem[b.Name()]; !ok {
		firstMem[b.Name()] = [3]float64{float64(heapAfter-heap) / n, float64(inuseAfter-inuse) / n, float64(stackAfter-stack) / n}
	}
	mem := firstMem[b.Name()]
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
	b.ReportMetric(mem[0], "B/key")
	b.ReportMetric(mem[1], "inuse-B/key")
	b.ReportMetric(mem[2], "stack-B/key")
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

// oneKey returns a source holding key "k" = v, a cache, and a blocking
// refresh kind whose entry for "k" is fetched already.
func oneKey(b *testing.B, v string) (*fakeupstream.Source, *watchcache.Cache, *watchcache.Kind[string]) {
	src := fakeupstream.New()
	src.Set("k", v)
	c := newCache(b, watchcache.Options{})
	k := register(b, c, "kv", src, blockingRefresh)
	get(b, k, req("k"))
	return src, c, k
}

// consumers counts, for a benchmark, the watchers that have received the
// current target value (values are decimal integers). Each consumer reports
// at most once per target, so the benchmark waits for exactly n reports.
type consumers struct {
	target  atomic.Int64
	arrived chan struct{}
}

func newConsumers(n int) *consumers {
	return &consumers{arrived: make(chan struct{}, n)}
}

// saw records that one consumer, which had reported up to *reported,
// received value v.
func (cs *consumers) saw(v string, reported *int64) {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		panic(fmt.Sprintf("value %q: %v", v, err))
	}
	if t := cs.target.Load(); n >= t && *reported < t {
		*reported = t
		cs.arrived <- struct{}{}
	}
}

// changes is the timed part of a benchmark: b.N changes of key "k", each
// until all n consumers have it.
func (cs *consumers) changes(b *testing.B, src *fakeupstream.Source, n int) {
	b.ReportAllocs()
	b.ResetTimer()
	for i := 1; i <= b.N; i++ {
		cs.target.Store(int64(i))
		src.Set("k", strconv.Itoa(i))
		cs.waitAll(n)
	}
	b.StopTimer()
}

// waitAll waits for n reports of the current target.
func (cs *consumers) waitAll(n int) {
	for range n {
		<-cs.arrived
	}
}

// BenchmarkNotifySlowConsumers has 10,000 watchers of one key whose
// consumers do not keep up, the normal case for real consumers:
//
//   - unbuffered-1ms: unbuffered channels, and each consumer spends 1 ms per
//     event, so at each change most consumers are busy and the fan-out's
//     sends would block. An iteration is one change until every watcher has
//     it.
//   - late: channels of capacity 1 not read during 10 changes; an iteration
//     times one consumer that then reads every channel until it has the
//     last change (the first read may be an older event already buffered).
func BenchmarkNotifySlowConsumers(b *testing.B) {
	const n = 10_000
	b.Run(fmt.Sprintf("watchers=%d/unbuffered-1ms", n), func(b *testing.B) {
		src, _, k := oneKey(b, "0")
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		cs := newConsumers(n)
		var wg sync.WaitGroup
		defer wg.Wait()
		defer cancel()
		goroutines := runtime.NumGoroutine()
		for i := range n {
			ch := make(chan watchcache.UpdateEvent[string])
			wg.Go(func() {
				reported := int64(-1)
				for {
					select {
					case ev := <-ch:
						cs.saw(ev.Result, &reported)
						time.Sleep(time.Millisecond)
					case <-ctx.Done():
						return
					}
				}
			})
			if err := k.Notify(ctx, req("k"), strconv.Itoa(i), ch); err != nil {
				b.Fatal(err)
			}
		}
		cs.waitAll(n) // initial values
		cs.changes(b, src, n)
		reportRest(b, k, goroutines+n, n)
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/change")
	})
	b.Run(fmt.Sprintf("watchers=%d/late", n), func(b *testing.B) {
		src, _, k := oneKey(b, "0")
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		goroutines := runtime.NumGoroutine()
		chans := make([]chan watchcache.UpdateEvent[string], n)
		for i := range chans {
			chans[i] = make(chan watchcache.UpdateEvent[string], 1)
			if err := k.Notify(ctx, req("k"), strconv.Itoa(i), chans[i]); err != nil {
				b.Fatal(err)
			}
			<-chans[i]
		}
		version := 0
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			b.StopTimer()
			for range 10 {
				version++
				idx := src.Set("k", strconv.Itoa(version))
				// The entry has published (and fanned out) idx once a
				// Get blocking on the index before it returns.
				if _, _, err := k.Get(ctx, watchcache.Request{Key: "k", MinIndex: idx - 1}); err != nil {
					b.Fatal(err)
				}
			}
			want := strconv.Itoa(version)
			b.StartTimer()
			for _, ch := range chans {
				for ev := range ch {
					if ev.Result == want {
						break
					}
				}
			}
		}
		b.StopTimer()
		reportRest(b, k, goroutines, n)
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/release")
	})
}

// BenchmarkNotifySharedChannel is Consul's proxycfg pattern: N watches with
// distinct correlation IDs share one channel of capacity 1, read by one
// consumer. An iteration is one change until every watch's event for it
// was received.
func BenchmarkNotifySharedChannel(b *testing.B) {
	for _, n := range []int{1000, 8000} {
		b.Run(fmt.Sprintf("watches=%d", n), func(b *testing.B) {
			src, _, k := oneKey(b, "0")
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			defer wg.Wait()
			defer cancel()
			ch := make(chan watchcache.UpdateEvent[string], 1)
			cs := newConsumers(n)
			goroutines := runtime.NumGoroutine()
			wg.Go(func() {
				reported := make([]int64, n)
				for i := range reported {
					reported[i] = -1
				}
				for {
					select {
					case ev := <-ch:
						id, _ := strconv.Atoi(ev.CorrelationID)
						cs.saw(ev.Result, &reported[id])
					case <-ctx.Done():
						return
					}
				}
			})
			for i := range n {
				if err := k.Notify(ctx, req("k"), strconv.Itoa(i), ch); err != nil {
					b.Fatal(err)
				}
			}
			cs.waitAll(n)
			cs.changes(b, src, n)
			reportRest(b, k, goroutines+1, n)
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/change")
		})
	}
}

// BenchmarkNotifySetupUnbuffered starts 10,000 watches on unbuffered
// channels whose consumers start reading only after every Notify returned,
// so every initial send would block. An iteration ends when every watcher
// has its initial value. While they wait, each blocked channel has its
// queue's goroutine: parked-goroutines/watcher and parked-B/watcher (heap
// and stacks) are that cost, which ends when the channels drain.
func BenchmarkNotifySetupUnbuffered(b *testing.B) {
	const n = 10_000
	b.Run(fmt.Sprintf("watchers=%d", n), func(b *testing.B) {
		_, c, k := oneKey(b, "1")
		chans := make([]chan watchcache.UpdateEvent[string], n)
		goroutines := runtime.NumGoroutine()
		var parkedGoroutines, parkedBytes float64
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			ctx, cancel := context.WithCancel(context.Background())
			for i := range chans {
				chans[i] = make(chan watchcache.UpdateEvent[string])
			}
			var heap, stack int64
			if i == 0 {
				b.StopTimer()
				heap, stack = memInUse()
				b.StartTimer()
			}
			for i, ch := range chans {
				if err := k.Notify(ctx, req("k"), strconv.Itoa(i), ch); err != nil {
					b.Fatal(err)
				}
			}
			if i == 0 {
				b.StopTimer()
				heapAfter, stackAfter := memInUse()
				parkedGoroutines = float64(runtime.NumGoroutine()-goroutines) / n
				parkedBytes = float64(heapAfter-heap+stackAfter-stack) / n
				b.StartTimer()
			}
			var wg sync.WaitGroup
			for _, ch := range chans {
				wg.Go(func() { <-ch })
			}
			wg.Wait()
			b.StopTimer()
			cancel()
			waitWatchers(b, c, 0)
			b.StartTimer()
		}
		b.StopTimer()
		reportRest(b, k, goroutines, n)
		b.ReportMetric(parkedGoroutines, "parked-goroutines/watcher")
		b.ReportMetric(parkedBytes, "parked-B/watcher")
	})
}

// reportRest reports the goroutines per watcher left once every watcher
// caught up (base is the count expected without the cache's delivery).
func reportRest(b *testing.B, k *watchcache.Kind[string], base, watchers int) {
	b.Helper()
	// Delivery goroutines end once nothing is parked; give them a moment.
	deadline := time.Now().Add(5 * time.Second)
	extra := runtime.NumGoroutine() - base
	for extra > 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
		extra = runtime.NumGoroutine() - base
	}
	b.ReportMetric(float64(max(extra, 0))/float64(watchers), "goroutines/watcher")
}

// waitWatchers waits until the cache has n watchers.
func waitWatchers(b *testing.B, c *watchcache.Cache, n int) {
	b.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for c.Stats().Watchers != n {
		if time.Now().After(deadline) {
			b.Fatalf("watchers = %d, want %d", c.Stats().Watchers, n)
		}
		time.Sleep(time.Millisecond)
	}
}
