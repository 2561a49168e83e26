package watchcache

import (
	"context"
	"log/slog"
	"testing"
	"testing/synctest"
	"time"
)

// The index rules, in one table: every publish goes through stepIndex.
func TestStepIndex(t *testing.T) {
	for _, tc := range []struct {
		name      string
		prev, got uint64
		want      indexStep
	}{
		{"first value", 0, 5, indexStep{index: 5, changed: true}},
		{"first value with zero index", 0, 0, indexStep{index: 1, changed: true, zero: true}},
		{"higher is a change", 5, 9, indexStep{index: 9, changed: true}},
		{"equal is no change", 9, 9, indexStep{index: 9}},
		{"lower is a reset", 9, 3, indexStep{index: 3, changed: true, reset: true}},
		{"zero after a value resets to 1", 9, 0, indexStep{index: 1, changed: true, reset: true, zero: true}},
		{"zero again is no change", 1, 0, indexStep{index: 1, zero: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := stepIndex(tc.prev, tc.got); got != tc.want {
				t.Fatalf("stepIndex(%d, %d) = %+v, want %+v", tc.prev, tc.got, got, tc.want)
			}
		})
	}
}

// Backoff: free retries, then doubling from 1s to the 1m cap, drawn from
// [d/2, d].
func TestBackoff(t *testing.T) {
	for failures := 0; failures <= 40; failures++ {
		var hi time.Duration
		if failures > freeRetries {
			hi = min(backoffMin<<min(failures-freeRetries-1, 10), backoffMax)
		}
		for range 100 {
			if d := backoff(failures); d < hi/2 || d > hi {
				t.Fatalf("backoff(%d) = %v, want within [%v, %v]", failures, d, hi/2, hi)
			}
		}
	}
}

// satisfies: the rule that lets a Get with a pre-reset index return.
func TestSnapshotSatisfies(t *testing.T) {
	s := &snapshot[string]{hasValue: true, res: FetchResult[string]{Index: 7}, maxIndex: 100}
	for _, tc := range []struct {
		min  uint64
		want bool
	}{{6, true}, {7, false}, {50, true}, {100, true}, {101, false}} {
		if got := s.satisfies(tc.min); got != tc.want {
			t.Errorf("index 7 after max 100: satisfies(%d) = %v, want %v", tc.min, got, tc.want)
		}
	}
	if (&snapshot[string]{res: FetchResult[string]{Index: 9}, maxIndex: 9}).satisfies(1) {
		t.Error("a snapshot without a value satisfied a blocking Get")
	}
}

// Once a watch's context is cancelled and cancel has returned, no call of
// its callback starts, even before the context's AfterFunc has removed the
// watch. The watch is kept out of Cache.watches here, which is the window
// between cancel returning and that AfterFunc running, held open.
func TestNoCallbackAfterCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, err := New(Options{Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// A blocking kind whose background fetch waits for its context:
		// Prepopulate alone publishes.
		fetch := FetchFunc[string](func(ctx context.Context, o FetchOptions[string], _ Request) (FetchResult[string], error) {
			if o.MinIndex == 0 && o.LastResult != nil {
				return *o.LastResult, nil
			}
			<-ctx.Done()
			return FetchResult[string]{}, ctx.Err()
		})
		k, err := Register[string](c, "kv", fetch, KindOptions{SupportsBlocking: true})
		if err != nil {
			t.Fatal(err)
		}
		r := Request{Key: "a"}
		k.Prepopulate(r, FetchResult[string]{Value: "v1", Index: 1})

		c.watches.mu.Lock()
		c.watches.closed = true // the watch is not removed when ctx is cancelled
		c.watches.mu.Unlock()
		ctx, cancel := context.WithCancel(context.Background())
		release := make(chan struct{})
		var calls []string
		err = k.NotifyCallback(ctx, r, "w", func(ev UpdateEvent[string]) {
			calls = append(calls, ev.Result)
			if ev.Result == "v1" {
				<-release
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		synctest.Wait() // the callback runs with v1 and waits
		k.Prepopulate(r, FetchResult[string]{Value: "v2", Index: 2})
		cancel()
		close(release)
		synctest.Wait()
		if len(calls) != 1 {
			t.Fatalf("callback calls = %v: a call started after cancel returned", calls)
		}
	})
}
