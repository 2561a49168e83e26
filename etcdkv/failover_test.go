package etcdkv

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/etcdtest"
)

// TestCompactionPastWatch checks the case where the revisions a watch
// needs were compacted before it could read them (as after a long
// disconnection): the entry reads the current state, delivers the write it
// missed, and follows later writes, with no error and no loop. The hook
// writes and compacts between the entry's read and the creation of its
// watch, which makes the case deterministic.
func TestCompactionPastWatch(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t)
	src, err := New(testConfig(c, 1))
	if err != nil {
		t.Fatal(err)
	}
	cli := c.Client(t)
	put(t, cli, "/c/k", "v1")
	put(t, cli, "/c/p/a", "v1")

	var (
		mu      sync.Mutex
		watches = map[string][]int64{} // request key -> revisions watches started from
		missed  = map[string]int64{}   // request key -> revision of the write it missed
	)
	src.testHookBeforeWatch = func(sp spec, from int64) {
		mu.Lock()
		defer mu.Unlock()
		k := sp.requestKey()
		watches[k] = append(watches[k], from)
		if len(watches[k]) > 1 {
			return
		}
		// The entry read at from-1. Change its range at from and from+1,
		// then compact past both: its watch from `from` is already
		// compacted when it is created.
		// (On the entry's goroutine: errors are reported, not fatal.)
		target := "/c/k"
		if sp.isRange() {
			target = "/c/p/b"
		}
		ctx := testCtx(t)
		_, err1 := cli.Put(ctx, target, "missed")
		resp, err2 := cli.Put(ctx, target, "v2")
		if err := errors.Join(err1, err2); err != nil {
			t.Errorf("hook: put: %v", err)
			return
		}
		missed[k] = resp.Header.Revision
		if _, err := cli.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
			t.Errorf("hook: compact: %v", err)
		}
	}
	f := fixtureFor(t, src)

	keyCh := watch(t, f.kinds.Key, KeyRequest("/c/k", self))
	prefixCh := watch(t, f.kinds.Prefix, PrefixRequest("/c/p/", self))

	if ev := next(t, keyCh); ev.Err != nil || keyValue(ev) != "v1" {
		t.Fatalf("first key event: %v %s, want v1", ev.Err, keyValue(ev))
	}
	ev := next(t, keyCh)
	mu.Lock()
	want := missed["/c/k"]
	mu.Unlock()
	if ev.Err != nil || keyValue(ev) != "v2" || ev.Meta.Index != uint64(want) {
		t.Fatalf("key event after the compaction: err %v, %s at %d; want v2 at %d", ev.Err, keyValue(ev), ev.Meta.Index, want)
	}
	pev := next(t, prefixCh)
	if pev.Err != nil {
		t.Fatalf("first prefix event: %v", pev.Err)
	}
	pev = until(t, prefixCh, "both keys", func(ev watchcache.UpdateEvent[Prefix]) bool { return len(ev.Result.Entries) == 2 })
	if pev.Err != nil || string(pev.Result.Entries[1].Value) != "v2" {
		t.Fatalf("prefix event after the compaction: %v %+v", pev.Err, pev.Result.Entries)
	}

	// The new watches work.
	rev := put(t, cli, "/c/k", "v3")
	if ev := next(t, keyCh); ev.Err != nil || keyValue(ev) != "v3" || ev.Meta.Index != uint64(rev) {
		t.Fatalf("key event after a later put: %v %s at %d, want v3 at %d", ev.Err, keyValue(ev), ev.Meta.Index, rev)
	}
	rev = put(t, cli, "/c/p/c", "v3")
	if ev := next(t, prefixCh); ev.Err != nil || len(ev.Result.Entries) != 3 || ev.Meta.Index != uint64(rev) {
		t.Fatalf("prefix event after a later put: %v, %d keys at %d; want 3 at %d", ev.Err, len(ev.Result.Entries), ev.Meta.Index, rev)
	}

	// One re-read and one new watch per entry: no loop.
	mu.Lock()
	defer mu.Unlock()
	for k, revs := range watches {
		if len(revs) != 2 || revs[1] <= missed[k] {
			t.Errorf("%s: watches started from %v; want two, the second after the missed write at %d", k, revs, missed[k])
		}
	}
}

// fixtureFor is newFixture for a Source the test made.
func fixtureFor(t testing.TB, src *Source) *fixture {
	t.Helper()
	t.Cleanup(func() { src.Close() })
	c, err := watchcache.New(watchcache.Options{Logger: logger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	kinds, err := src.Register(c)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{src: src, cache: c, kinds: kinds}
}

// TestConnectionLoss stops the only member and brings it back: plain Gets
// keep serving the last value with a growing Age, a watcher is told once
// that the entry fails, then that it recovered, and writes flow again,
// without restarting anything.
func TestConnectionLoss(t *testing.T) {
	t.Parallel()
	c, f, cli := start(t)
	rev := put(t, cli, "/l/k", "before")
	ch := watch(t, f.kinds.Key, KeyRequest("/l/k", self))
	if ev := next(t, ch); ev.Err != nil || ev.Meta.Index != uint64(rev) {
		t.Fatalf("first event: %+v", ev)
	}

	c.StopMember(0)
	failure := next(t, ch)
	if failure.Err == nil || keyValue(failure) != "before" || failure.Meta.Index != uint64(rev) {
		t.Fatalf("event after the member stopped: err %v, %s at %d; want an error with the last value", failure.Err, keyValue(failure), failure.Meta.Index)
	}
	t.Logf("error event: %v", failure.Err)

	// Plain Gets serve the last value, no error, Age growing.
	v1, m1 := getKey(t, f, KeyRequest("/l/k", self))
	eventually(t, "Age grows", func() bool {
		_, m2 := getKey(t, f, KeyRequest("/l/k", self))
		return m2.Age > m1.Age
	})
	if string(v1.Entry.Value) != "before" || m1.Age <= 0 || !m1.Hit {
		t.Fatalf("Get during the outage: %+v %+v; want the last value, a hit with an Age", v1, m1)
	}

	c.RestartMember(t, 0)
	recovery := next(t, ch)
	if recovery.Err != nil || keyValue(recovery) != "before" || recovery.Meta.Index != uint64(rev) {
		t.Fatalf("event after the member came back: err %v, %s at %d; want the recovery", recovery.Err, keyValue(recovery), recovery.Meta.Index)
	}
	if _, m := getKey(t, f, KeyRequest("/l/k", self)); m.Age != 0 {
		t.Fatalf("Age after recovery = %v, want 0", m.Age)
	}
	rev = put(t, cli, "/l/k", "after")
	if ev := next(t, ch); ev.Err != nil || keyValue(ev) != "after" || ev.Meta.Index != uint64(rev) {
		t.Fatalf("event after a write once recovered: %v %s at %d; want after at %d", ev.Err, keyValue(ev), ev.Meta.Index, rev)
	}
}

// TestWipeReset rebuilds the store from scratch under watched entries: the
// entries notice that etcd's revision went backwards (their watches,
// waiting for a now-future revision, would stay silent), deliver the new
// state with its lower index at once, and follow the new store.
func TestWipeReset(t *testing.T) {
	t.Parallel()
	c, f, cli := start(t)
	for i := range 20 {
		put(t, cli, "/r/p/"+strconv.Itoa(i), "old")
	}
	rev := put(t, cli, "/r/k", "old")

	keyCh := watch(t, f.kinds.Key, KeyRequest("/r/k", self))
	prefixCh := watch(t, f.kinds.Prefix, PrefixRequest("/r/p/", self))
	if ev := next(t, keyCh); ev.Meta.Index != uint64(rev) {
		t.Fatalf("first key event at %d, want %d", ev.Meta.Index, rev)
	}
	if ev := next(t, prefixCh); len(ev.Result.Entries) != 20 {
		t.Fatalf("first prefix event: %d keys, want 20", len(ev.Result.Entries))
	}

	oldRev := rev
	c.Wipe(t)
	newRev := put(t, cli, "/r/k", "new")
	if newRev >= rev {
		t.Fatalf("revision after Wipe %d, not below %d", newRev, rev)
	}
	ev := until(t, keyCh, "the new value", func(ev watchcache.UpdateEvent[Key]) bool { return ev.Err == nil && keyValue(ev) == "new" })
	if ev.Meta.Index != uint64(newRev) {
		t.Fatalf("key after Wipe at index %d, want %d", ev.Meta.Index, newRev)
	}
	pev := until(t, prefixCh, "an empty prefix", func(ev watchcache.UpdateEvent[Prefix]) bool { return ev.Err == nil && len(ev.Result.Entries) == 0 })
	if pev.Meta.Index >= uint64(rev) {
		t.Fatalf("prefix after Wipe at index %d, want below %d", pev.Meta.Index, rev)
	}

	// The entries follow the new store.
	rev = put(t, cli, "/r/k", "newer")
	until(t, keyCh, "newer", func(ev watchcache.UpdateEvent[Key]) bool {
		return ev.Err == nil && keyValue(ev) == "newer" && ev.Meta.Index == uint64(rev)
	})
	rev = put(t, cli, "/r/p/x", "new")
	until(t, prefixCh, "the new key", func(ev watchcache.UpdateEvent[Prefix]) bool {
		return ev.Err == nil && len(ev.Result.Entries) == 1 && ev.Meta.Index == uint64(rev)
	})
	// A Get with the index from before the reset returns at once.
	r := KeyRequest("/r/k", self)
	r.MinIndex = uint64(oldRev)
	r.Timeout = waitFor
	start := time.Now()
	if v, _, err := f.kinds.Key.Get(testCtx(t), r); err != nil || string(v.Entry.Value) != "newer" || time.Since(start) > 5*time.Second {
		t.Fatalf("blocking Get with an index from before the reset: %+v, %v after %v", v, err, time.Since(start))
	}
}

// TestLeaderFailover runs 100 watchers on a key of a 3-member cluster,
// kills the leader while writes go on, and checks that every watcher gets
// the final value and that its indexes never go backwards.
func TestLeaderFailover(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t, etcdtest.WithMembers(3))
	f := newFixture(t, testConfig(c, 3), watchcache.Options{})
	cli := c.Client(t)
	put(t, cli, "/f/k", "0")

	const watchers = 100
	type log struct {
		events []watchcache.UpdateEvent[Key]
		final  chan struct{}
	}
	var finalValue = "final"
	logs := make([]*log, watchers)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := range logs {
		l := &log{final: make(chan struct{})}
		logs[i] = l
		// NotifyCallback runs one call at a time per watcher: l needs no lock.
		err := f.kinds.Key.NotifyCallback(ctx, KeyRequest("/f/k", self), strconv.Itoa(i), func(ev watchcache.UpdateEvent[Key]) {
			l.events = append(l.events, ev)
			if ev.Err == nil && keyValue(ev) == finalValue {
				close(l.final)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
	}

	// Writes, retried through the election, before and after the kill.
	write := func(i int) {
		t.Helper()
		for {
			wctx, wcancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := cli.Put(wctx, "/f/k", strconv.Itoa(i))
			wcancel()
			if err == nil {
				return
			}
			if testCtx(t).Err() != nil {
				t.Fatalf("put %d: %v", i, err)
			}
		}
	}
	for i := 1; i <= 10; i++ {
		write(i)
	}
	killed := c.KillLeader(t)
	t.Logf("killed leader %d", killed)
	for i := 11; i <= 30; i++ {
		write(i)
	}
	wctx, wcancel := context.WithTimeout(context.Background(), waitFor)
	defer wcancel()
	var finalRev int64
	for {
		resp, err := cli.Put(wctx, "/f/k", finalValue)
		if err == nil {
			finalRev = resp.Header.Revision
			break
		}
		if wctx.Err() != nil {
			t.Fatalf("final put: %v", err)
		}
	}

	deadline := time.NewTimer(waitFor)
	defer deadline.Stop()
	for i, l := range logs {
		select {
		case <-l.final:
		case <-deadline.C:
			t.Fatalf("watcher %d did not get the final value", i)
		}
	}
	cancel()
	errs := 0
	for i, l := range logs {
		var last uint64
		lastValue := ""
		for _, ev := range l.events {
			if ev.Meta.Index < last {
				t.Fatalf("watcher %d: index went from %d to %d: %s", i, last, ev.Meta.Index, describe(l.events))
			}
			if ev.Err != nil {
				errs++
				continue // carries the last index (or none, if it withholds the value)
			}
			if v := keyValue(ev); v != lastValue {
				if ev.Meta.Index <= last && last != 0 {
					t.Fatalf("watcher %d: new value %q without a new index (%d): %s", i, v, last, describe(l.events))
				}
				lastValue = v
			}
			last = ev.Meta.Index
		}
		if last != uint64(finalRev) {
			t.Fatalf("watcher %d: last index %d, want the final put's %d", i, last, finalRev)
		}
	}
	t.Logf("%d watchers, %d error events (leader loss may show as one per watcher)", watchers, errs)
}

func describe(evs []watchcache.UpdateEvent[Key]) string {
	s := ""
	for _, ev := range evs {
		s += fmt.Sprintf("[%d %s %v] ", ev.Meta.Index, keyValue(ev), ev.Err)
	}
	return s
}
