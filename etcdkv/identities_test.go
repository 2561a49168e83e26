package etcdkv

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	"runtime"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/etcdtest"
)

// TestManyIdentitiesBounded has many users each log in and read a key of
// their own, five times as many as MaxIdentities and MaxEntries allow: the
// source holds at most the bound of identities, all over one connection,
// and the process's goroutines and live heap (embedded etcd included) stay
// under a ceiling set by the bound, not by the users who came and went.
//
// By default 1,000 users and a bound of 200 (400 and 80 with the race
// detector): etcd rebuilds its permission
// cache of every user on each UserAdd, so making 5,000 users takes it
// minutes. WATCHCACHE_IDENTITIES=5000 runs the figures the README states
// (5,000 users, bound 1,000).
func TestManyIdentitiesBounded(t *testing.T) {
	// Not parallel: the live heap it measures is the process's, and a
	// test running beside it (a cluster starting) would count in it.
	users := 1000
	if raceEnabled {
		users = 400
	}
	if n, err := strconv.Atoi(os.Getenv("WATCHCACHE_IDENTITIES")); err == nil && n > 0 {
		users = n
	}
	bound := users / 5
	c := etcdtest.Start(t)
	cli := c.Client(t)
	for i := 0; i < users; i += 100 {
		put(t, cli, fmt.Sprintf("/u/%d", i), "v")
	}
	// Users are added before auth is on (once it is, every change to users
	// invalidates every token, and each addition would cost a login more),
	// 16 at a time.
	// etcd's cost per added user grows with the users it has.
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitFor+time.Duration(users*users)*6*time.Microsecond)
	defer cancel()
	if _, err := cli.RoleAdd(ctx, "reader"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.RoleGrantPermission(ctx, "reader", "/u/", clientv3.GetPrefixRangeEnd("/u/"), clientv3.PermissionType(clientv3.PermRead)); err != nil {
		t.Fatal(err)
	}
	parallel(t, users, func(i int) error {
		name := fmt.Sprint("user-", i)
		if _, err := cli.UserAdd(ctx, name, name+"-pw"); err != nil {
			return err
		}
		_, err := cli.UserGrantRole(ctx, name, "reader")
		return err
	})
	c.EnableAuth(t, nil)

	cfg := testConfig(c, 1)
	cfg.MaxIdentities = bound
	f := newFixture(t, cfg, watchcache.Options{MaxEntries: bound})
	goroutines, heap := runtime.NumGoroutine(), liveHeap()
	var peakIdentities atomic.Int64
	parallel(t, users, func(i int) error {
		name := fmt.Sprint("user-", i)
		p, err := f.src.Login(ctx, name, name+"-pw")
		if err != nil {
			return err
		}
		if _, _, err := f.kinds.GetKey(ctx, KeyRequest(fmt.Sprintf("/u/%d", i), p)); err != nil {
			return err
		}
		f.src.mu.Lock()
		n := int64(len(f.src.pool))
		f.src.mu.Unlock()
		for old := peakIdentities.Load(); n > old && !peakIdentities.CompareAndSwap(old, n); old = peakIdentities.Load() {
		}
		return nil
	})
	perUser := func(d int64) float64 { return float64(d) / float64(users) }
	grew, heapGrew := runtime.NumGoroutine()-goroutines, liveHeap()-heap
	t.Logf("after %d users: %d identities held (peak %d), %d entries, +%d goroutines, +%.1f MiB live heap (%.0f B per user)",
		users, len(f.src.pool), peakIdentities.Load(), f.cache.Stats().Entries, grew, float64(heapGrew)/(1<<20), perUser(heapGrew))
	if n := peakIdentities.Load(); n > int64(bound)+16 { // 16: logins in flight pin theirs
		t.Errorf("identities held peaked at %d, want about %d", n, bound)
	}
	if n := f.cache.Stats().Entries; n > bound {
		t.Errorf("entries = %d, want at most %d", n, bound)
	}
	// Each live entry holds one etcd watch; the watches of one identity
	// share a gRPC stream, which costs about four goroutines on each side
	// of the connection (the client's and the embedded server's). Users
	// without live entries cost none.
	if grew > 10*bound {
		t.Errorf("goroutines grew by %d for %d live entries, want under %d", grew, bound, 10*bound)
	}
	if ceiling := int64(bound)*48<<10 + 4<<20; heapGrew > ceiling {
		t.Errorf("live heap grew by %d MiB, want under %d MiB (48 KiB per live entry, 4 MiB at most of fixed costs)", heapGrew>>20, ceiling>>20)
	}
}

// parallel runs f(0..n-1) on 16 goroutines and fails the test on the
// first error.
func parallel(t *testing.T, n int, f func(i int) error) {
	t.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 16)
	for range 16 {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
				if err := f(int(i)); err != nil {
					errc <- fmt.Errorf("item %d: %w", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
}

// liveHeap is the live heap after a GC.
func liveHeap() int64 {
	runtime.GC()
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	return int64(s[0].Value.Uint64())
}
