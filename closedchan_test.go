// Closing a channel while another goroutine may send on it is a data race
// by Go's memory model, which is exactly the consumer bug these tests
// reproduce; the race detector would report the bug rather than test the
// cache's answer to it.

//go:build !race

package watchcache_test

import (
	"errors"
	"testing"
	"testing/synctest"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/fakeupstream"
)

// A consumer that closes its Notify channel instead of cancelling the
// context ends its watch, whichever path sends next: the fan-out's
// non-blocking send, a parked channel's queue (blocked in a send when the
// channel is closed), a channel shared by several watches, or the final
// ErrClosed event of Close. The process does not crash, the watch is
// counted, and other watchers carry on.
func TestNotifyClosedChannelEndsWatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := fakeupstream.New()
		src.Set("a", "v0")
		reg := prometheus.NewRegistry()
		c, err := watchcache.New(watchcache.Options{Logger: quiet(), Registerer: reg})
		if err != nil {
			t.Fatal(err)
		}
		k := register(t, c, "kv", src, blockingRefresh)
		notify := func(ch chan watchcache.UpdateEvent[string], id string) {
			t.Helper()
			if err := k.Notify(t.Context(), req("a"), id, ch); err != nil {
				t.Fatal(err)
			}
		}

		direct := make(chan watchcache.UpdateEvent[string], 1)
		notify(direct, "direct")
		recv(t, direct)
		parked := make(chan watchcache.UpdateEvent[string]) // never read: its send blocks
		notify(parked, "parked")
		shared := make(chan watchcache.UpdateEvent[string])
		notify(shared, "shared-1")
		notify(shared, "shared-2")
		notify(shared, "shared-3")
		healthy := make(chan watchcache.UpdateEvent[string], 1)
		notify(healthy, "healthy")
		recv(t, healthy)
		atClose := make(chan watchcache.UpdateEvent[string], 1)
		notify(atClose, "at-close")
		recv(t, atClose)
		synctest.Wait() // parked and shared wait in their queues' sends

		close(parked) // a blocked send panics
		close(shared)
		synctest.Wait()
		close(direct)
		src.Set("a", "v1") // the fan-out's send panics
		if ev := recv(t, healthy); ev.Result != "v1" {
			t.Fatalf("healthy watcher got %+v, want v1", ev)
		}
		synctest.Wait()
		if got := c.Stats().Watchers; got != 2 {
			t.Fatalf("watchers = %d, want 2 (healthy and at-close) once the closed channels' watches ended", got)
		}
		if n := gauge(t, reg, "watchcache_closed_channel_watches_total"); n != 5 {
			t.Fatalf("closed-channel watches counted = %v, want 5", n)
		}
		src.Set("a", "v2")
		if ev := recv(t, healthy); ev.Result != "v2" {
			t.Fatalf("healthy watcher got %+v, want v2", ev)
		}
		recv(t, atClose)

		// Notify on a channel already closed is refused.
		dead := make(chan watchcache.UpdateEvent[string], 1)
		close(dead)
		if err := k.Notify(t.Context(), req("a"), "dead", dead); !errors.Is(err, watchcache.ErrInvalid) {
			t.Fatalf("Notify on a closed channel = %v, want ErrInvalid", err)
		}

		close(atClose) // Close's final ErrClosed event finds it closed
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		if ev := recv(t, healthy); !errors.Is(ev.Err, watchcache.ErrClosed) {
			t.Fatalf("healthy watcher's final event = %+v, want ErrClosed", ev)
		}
	})
}
