package etcdkv

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/etcdtest"
)

// On a 3-member cluster, writes made through another member race
// consistent reads: a consistent read never returns a value older than a
// write that was acknowledged before the read began, though it is served
// from the cache once the entry has caught up. The reads go to one member,
// the writes to another. There are enough readers for their access checks
// to overlap (accessChecker).
func TestConsistentReadsSeeAcknowledgedWrites(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t, etcdtest.WithMembers(3))
	writer := c.Client(t, etcdtest.WithEndpoints(c.Endpoint(2)))
	ctx := testCtx(t)
	put(t, writer, "/c/k", "0")
	put(t, writer, "/c/p/x", "0")
	f := newFixture(t, testConfig(c, 1), watchcache.Options{}) // the source talks to member 0

	const writes = 300
	var acked atomic.Int64 // the last value etcd acknowledged
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 1; i <= writes; i++ {
			if _, err := writer.Put(ctx, "/c/k", strconv.Itoa(i)); err != nil {
				t.Error(err)
				return
			}
			if _, err := writer.Put(ctx, "/c/p/x", strconv.Itoa(i)); err != nil {
				t.Error(err)
				return
			}
			acked.Store(int64(i))
		}
	})
	var reads atomic.Int64
	const readers = 2*checkBatchMin + 4
	for r := range readers {
		wg.Go(func() {
			for acked.Load() < writes {
				before := acked.Load()
				var got string
				if r%2 == 0 {
					v, _, err := f.kinds.ReadKey(ctx, KeyRequest("/c/k", self))
					if err != nil {
						t.Error(err)
						return
					}
					got = string(v.Entry.Value)
				} else {
					v, _, err := f.kinds.ReadPrefix(ctx, PrefixRequest("/c/p/", self))
					if err != nil || len(v.Entries) != 1 {
						t.Errorf("ReadPrefix = %+v, %v", v, err)
						return
					}
					got = string(v.Entries[0].Value)
				}
				n, _ := strconv.Atoi(got)
				if int64(n) < before {
					t.Errorf("a consistent read began after write %d was acknowledged and returned %s", before, got)
					return
				}
				reads.Add(1)
			}
		})
	}
	wg.Wait()
	// The reads were served by the cache, not by etcd one by one: the
	// entries exist and follow the writes.
	if _, meta, err := f.kinds.Key.Get(ctx, KeyRequest("/c/k", self)); err != nil || meta.Index == 0 {
		t.Fatalf("the entry behind the consistent reads: %v", err)
	}
	cached, direct := f.src.consistentCached.Load(), f.src.consistentDirect.Load()
	t.Logf("%d consistent reads raced %d writes: %d served from the cache, %d from etcd; %d checks, %d started while another was in flight",
		reads.Load(), writes, cached, direct, f.src.auth.checks.Load(), f.src.auth.overlapped.Load())
	if f.src.auth.overlapped.Load() == 0 {
		t.Errorf("no access check overlapped another with %d readers", readers)
	}
	if direct > cached/10 {
		t.Fatalf("%d of %d consistent reads went to etcd: the cache should serve them", direct, cached+direct)
	}
}

// After a re-read of an entry failed (its watch stream ended and etcd
// failed the reads that followed), the entry keeps the view that consistent
// reads wait on: once it recovers, they are served from the cache again,
// not read from etcd one by one for as long as the entry lives.
func TestConsistentReadAfterFailedReread(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t)
	cli := c.Client(t)
	put(t, cli, "/f/k", "v1")
	src, err := New(testConfig(c, 1))
	if err != nil {
		t.Fatal(err)
	}
	var failReads atomic.Bool
	var failed atomic.Int64
	src.testHookRead = func(sp spec) error {
		if failReads.Load() {
			failed.Add(1)
			return fmt.Errorf("test: etcd failed the read of %s", sp.describe())
		}
		return nil
	}
	f := fixtureFor(t, src)
	ctx := testCtx(t)
	consistent := func(want string) {
		t.Helper()
		cached, direct := src.consistentCached.Load(), src.consistentDirect.Load()
		v, _, err := f.kinds.ReadKey(ctx, KeyRequest("/f/k", self))
		if err != nil || keyOf(v) != want {
			t.Fatalf("ReadKey = %q, %v; want %q", keyOf(v), err, want)
		}
		if src.consistentCached.Load() != cached+1 || src.consistentDirect.Load() != direct {
			t.Fatalf("the consistent read was not served from the cache (%d read from etcd so far)", src.consistentDirect.Load())
		}
	}
	ch := watch(t, f.kinds.Key, KeyRequest("/f/k", self))
	if ev := next(t, ch); keyValue(ev) != "v1" {
		t.Fatalf("first event: %+v", ev)
	}
	consistent("v1")

	// The stream ends: the entry reads its range again, and fails; then
	// the entry's next fetches read it again through new states, and fail.
	failReads.Store(true)
	onlyStream(t, src).fail(errors.New("test: stream lost"))
	until(t, ch, "the failure", func(ev watchcache.UpdateEvent[Key]) bool { return ev.Err != nil })
	eventually(t, "re-reads through new states fail", func() bool { return failed.Load() >= 3 })
	put(t, cli, "/f/k", "v2")
	failReads.Store(false)
	until(t, ch, "the recovery", func(ev watchcache.UpdateEvent[Key]) bool { return ev.Err == nil && keyValue(ev) == "v2" })
	consistent("v2")
}

// When a re-read that failed had seen a lower revision than the state it
// was to replace (the store was restored), the view is forgotten rather
// than handed back: the state's value belongs to the old history, and a
// consistent read must not find it caught up. Otherwise the view goes back
// to the state, showing what the state published.
func TestTakeViewBack(t *testing.T) {
	t.Parallel()
	_, f, _ := start(t)
	sp, _ := parseKeyKey("/tv")
	key := viewKey{self, sp}
	for _, tc := range []struct {
		name     string
		failedAt int64 // the revision the failed read saw
		kept     bool
	}{
		{"failed read ahead", 12, true},
		{"store restored", 5, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := newStateView()
			st := &watchState[Key]{s: f.src, sp: sp, p: self, rev: 10, index: 9, view: v}
			failed := &watchState[Key]{s: f.src, sp: sp, p: self, view: v}
			v.owner = failed
			v.set(tc.failedAt, 11)
			f.src.views.Store(key, v)
			st.takeViewBack(failed)
			got, ok := f.src.views.Load(key)
			switch {
			case ok != tc.kept || (ok && got != v):
				t.Fatalf("view registered: %v, want %v", ok, tc.kept)
			case v.owner != st:
				t.Fatalf("view owner %p, want the state %p", v.owner, st)
			case tc.kept && (v.rev.Load() != 10 || v.index.Load() != 9):
				t.Fatalf("view at revision %d index %d, want the state's 10, 9", v.rev.Load(), v.index.Load())
			}
			f.src.views.Delete(key)
		})
	}
}
