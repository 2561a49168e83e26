package watchcache_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/fakeupstream"
)

// Watches sharing one channel that nobody reads for a while are served in
// turn once it is read: each gets exactly one event with its key's latest
// value (the one already in the buffer aside), and nothing stale follows.
func TestNotifySharedChannelGetsLatest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		const n = 100
		for i := range n {
			src.Set(fmt.Sprint("k", i), "v0")
		}
		c := newCache(t, watchcache.Options{})
		k := register(t, c, "kv", src, blockingRefresh)
		ch := make(chan watchcache.UpdateEvent[string], 1)
		for i := range n {
			if err := k.Notify(t.Context(), req(fmt.Sprint("k", i)), fmt.Sprint(i), ch); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()
		for v := 1; v <= 5; v++ {
			for i := range n {
				src.Set(fmt.Sprint("k", i), fmt.Sprint("v", v))
			}
			synctest.Wait()
		}
		first := recv(t, ch) // in the buffer before the changes
		if first.Result != "v0" {
			t.Fatalf("buffered event = %+v, want an initial value", first)
		}
		got := map[string]string{}
		for range n {
			ev := recv(t, ch)
			if prev, dup := got[ev.CorrelationID]; dup {
				t.Fatalf("watch %s got %q after %q: one event per watch expected", ev.CorrelationID, ev.Result, prev)
			}
			got[ev.CorrelationID] = ev.Result
			if ev.Result != "v5" {
				t.Fatalf("watch %s got %q, want the latest, v5", ev.CorrelationID, ev.Result)
			}
		}
		synctest.Wait()
		noEvent(t, ch)
	})
}

// Delivering one change to N watchers parked on unbuffered channels costs
// O(N), not O(N²) (a select case rebuilt for every parked watcher on every
// pass did). Allocations are counted rather than time, which the shared
// machine makes noisy: quadrupling N must not multiply them by much more
// than four (a quadratic deliverer multiplies them by sixteen; scheduling
// moves the count by a little, so the bound is eight).
func TestNotifyParkedDeliveryIsLinear(t *testing.T) {
	allocs := func(n int) uint64 {
		src := fakeupstream.New()
		src.Set("k", "v0")
		c := newCache(t, watchcache.Options{})
		k := register(t, c, "kv", src, blockingRefresh)
		get(t, k, req("k"))
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		chans := make([]chan watchcache.UpdateEvent[string], n)
		for i := range chans {
			chans[i] = make(chan watchcache.UpdateEvent[string])
			if err := k.Notify(ctx, req("k"), fmt.Sprint(i), chans[i]); err != nil {
				t.Fatal(err)
			}
		}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		src.Set("k", "v1")
		var wg sync.WaitGroup
		for i, ch := range chans {
			wg.Go(func() {
				for ev := range ch {
					if ev.Result == "v1" {
						return
					}
					if ev.Result != "v0" {
						t.Errorf("watcher %d got %q", i, ev.Result)
						return
					}
				}
			})
		}
		wg.Wait()
		runtime.ReadMemStats(&after)
		cancel()
		return after.Mallocs - before.Mallocs
	}
	allocs(100) // warm up: goroutine and map structures the runtime keeps
	small, large := allocs(500), allocs(2000)
	t.Logf("allocations: %d for 500 parked watchers, %d for 2000", small, large)
	if large > 8*small {
		t.Fatalf("4x the parked watchers cost %.1fx the allocations (%d vs %d): delivery is not linear",
			float64(large)/float64(small), large, small)
	}
}

// Many watchers with every kind of channel (unbuffered, buffered, shared),
// consumers that stall at random and watches cancelled along the way,
// against a stream of changes: every watch still live gets the last value,
// each watch's indexes only grow, and nothing is left running.
func TestNotifyDeliveryStress(t *testing.T) {
	src := fakeupstream.New()
	src.Set("k", "0")
	c := newCache(t, watchcache.Options{})
	k := register(t, c, "kv", src, blockingRefresh)

	const watchers, changes = 300, 300
	shared := make([]chan watchcache.UpdateEvent[string], 4)
	for i := range shared {
		shared[i] = make(chan watchcache.UpdateEvent[string], 1)
	}
	type watch struct {
		ch     chan watchcache.UpdateEvent[string]
		cancel context.CancelFunc
	}
	ws := make([]watch, watchers)
	for i := range ws {
		var ch chan watchcache.UpdateEvent[string]
		switch i % 3 {
		case 0:
			ch = make(chan watchcache.UpdateEvent[string])
		case 1:
			ch = make(chan watchcache.UpdateEvent[string], 1)
		case 2:
			ch = shared[i%len(shared)]
		}
		ctx, cancel := context.WithCancel(context.Background())
		ws[i] = watch{ch, cancel}
		if err := k.Notify(ctx, req("k"), fmt.Sprint(i), ch); err != nil {
			t.Fatal(err)
		}
	}
	last := fmt.Sprint(changes)
	// One consumer per distinct channel; it tracks every watch it serves.
	consume := func(ch chan watchcache.UpdateEvent[string], ids []int) {
		lastIndex := map[string]uint64{}
		finished := map[string]bool{}
		live := 0
		for _, id := range ids {
			if id%5 != 0 { // every fifth watch is cancelled
				live++
			}
		}
		timeout := time.NewTimer(30 * time.Second)
		defer timeout.Stop()
		for n := 0; len(finished) < live; n++ {
			select {
			case ev := <-ch:
				if ev.Meta.Index <= lastIndex[ev.CorrelationID] {
					t.Errorf("watch %s: index %d after %d", ev.CorrelationID, ev.Meta.Index, lastIndex[ev.CorrelationID])
					return
				}
				lastIndex[ev.CorrelationID] = ev.Meta.Index
				if id, _ := strconv.Atoi(ev.CorrelationID); ev.Result == last && id%5 != 0 {
					finished[ev.CorrelationID] = true
				}
			case <-timeout.C:
				t.Errorf("watches %v: %d of %d live watches got the last value", ids, len(finished), live)
				return
			}
			if n%7 == 0 { // stall now and then
				for range n % 50 {
					runtime.Gosched()
				}
			}
		}
	}
	byChan := map[chan watchcache.UpdateEvent[string]][]int{}
	for i, w := range ws {
		byChan[w.ch] = append(byChan[w.ch], i)
	}
	var wg sync.WaitGroup
	for ch, ids := range byChan {
		wg.Go(func() { consume(ch, ids) })
	}
	for i := 1; i <= changes; i++ {
		src.Set("k", fmt.Sprint(i))
		if i == changes/2 {
			for id := 0; id < watchers; id += 5 {
				ws[id].cancel()
			}
		}
	}
	wg.Wait()
	for _, w := range ws {
		w.cancel()
	}
}

// Close during a stream of changes to watchers on unbuffered and buffered
// channels: each watcher's final ErrClosed event is its last (a queue that
// held a send when Close came sends the final event after it), and its
// indexes never go back.
func TestNotifyCloseIsLastEvent(t *testing.T) {
	const n = 300
	c, err := watchcache.New(watchcache.Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	// A blocking kind whose fetches wait for their context: Prepopulate
	// alone publishes, from several goroutines at once.
	hang := watchcache.FetchFunc[string](func(ctx context.Context, o watchcache.FetchOptions[string], _ watchcache.Request) (watchcache.FetchResult[string], error) {
		if o.LastResult != nil && o.MinIndex == 0 {
			return *o.LastResult, nil
		}
		<-ctx.Done()
		return watchcache.FetchResult[string]{}, ctx.Err()
	})
	k, err := watchcache.Register(c, "kv", asyncIfPush(hang), watchcache.KindOptions{SupportsBlocking: true})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		k.Prepopulate(req(fmt.Sprint(i)), watchcache.FetchResult[string]{Value: "v", Index: 1})
	}
	events := make([][]watchcache.UpdateEvent[string], n)
	stop := make(chan struct{})
	var consumers sync.WaitGroup
	for i := range n {
		ch := make(chan watchcache.UpdateEvent[string], i%2) // unbuffered and capacity 1
		if err := k.Notify(context.Background(), req(fmt.Sprint(i)), fmt.Sprint(i), ch); err != nil {
			t.Fatal(err)
		}
		consumers.Go(func() {
			for {
				select {
				case ev := <-ch:
					events[i] = append(events[i], ev)
				case <-stop:
					for {
						select {
						case ev := <-ch:
							events[i] = append(events[i], ev)
						default:
							return
						}
					}
				}
			}
		})
	}
	var rounds atomic.Int64
	busy := make(chan struct{})
	var publishers sync.WaitGroup
	for p := range 4 {
		publishers.Go(func() {
			for idx := uint64(2); ; idx++ {
				for i := p; i < n; i += 4 {
					if k.Prepopulate(req(fmt.Sprint(i)), watchcache.FetchResult[string]{Value: fmt.Sprint("v", idx), Index: idx}) != nil {
						return // closed
					}
				}
				if rounds.Add(1) == 40 {
					close(busy)
				}
			}
		})
	}
	<-busy // changes are flowing, queues are sending
	c.Close()
	publishers.Wait()
	close(stop)
	consumers.Wait()
	for i, evs := range events {
		var last uint64
		for j, ev := range evs {
			if ev.Meta.Index < last {
				t.Fatalf("watch %d: index went back from %d to %d", i, last, ev.Meta.Index)
			}
			last = ev.Meta.Index
			if errors.Is(ev.Err, watchcache.ErrClosed) && j != len(evs)-1 {
				t.Fatalf("watch %d: %d events after its final ErrClosed event: %+v", i, len(evs)-1-j, evs[j+1:])
			}
		}
	}
}
