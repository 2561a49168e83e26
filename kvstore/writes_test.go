package kvstore

import (
	"fmt"
	"strconv"
	"testing"
)

// TestWriteLogPending checks which recorded writes an entry must reflect,
// and when a result does.
func TestWriteLogPending(t *testing.T) {
	type write struct {
		key         string
		prefix, del bool
		rev         uint64
	}
	type rng struct {
		key     string
		isRange bool
	}
	key := func(k string) rng { return rng{k, false} }
	prefix := func(p string) rng { return rng{p, true} }
	for _, tc := range []struct {
		name   string
		writes []write
		sp     rng
		want   Need
	}{
		{"nothing written", nil, key("/a"), Need{}},
		{"put of the key", []write{{key: "/a", rev: 5}}, key("/a"), Need{Must: 5}},
		{"put of another key", []write{{key: "/ab", rev: 5}}, key("/a"), Need{}},
		{"latest write of a key wins", []write{{key: "/a", rev: 5}, {key: "/a", del: true, rev: 7}}, key("/a"), Need{Cover: 7}},
		{"put under the prefix", []write{{key: "/p/x", rev: 5}, {key: "/q/x", rev: 9}}, prefix("/p/"), Need{Must: 5}},
		{"delete under the prefix", []write{{key: "/p/x", del: true, rev: 5}}, prefix("/p/"), Need{Must: 5}},
		{"prefix delete containing the key", []write{{key: "/p/", prefix: true, del: true, rev: 6}}, key("/p/x"), Need{Cover: 6}},
		{"prefix delete containing the prefix", []write{{key: "/p/", prefix: true, del: true, rev: 6}}, prefix("/p/x/"), Need{Cover: 6}},
		{"the same prefix deleted", []write{{key: "/p/", prefix: true, del: true, rev: 6}}, prefix("/p/"), Need{Cover: 6}},
		{"prefix delete inside the prefix", []write{{key: "/p/x/", prefix: true, del: true, rev: 6}}, prefix("/p/"), Need{Must: 6}},
		{"unrelated prefix delete", []write{{key: "/q/", prefix: true, del: true, rev: 6}}, prefix("/p/"), Need{}},
		{"everything deleted", []write{{key: "", prefix: true, del: true, rev: 6}}, key("/a"), Need{Cover: 6}},
		{"every key read", []write{{key: "/a", rev: 3}, {key: "/b", rev: 4}}, prefix(""), Need{Must: 4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var l WriteLog
			for _, w := range tc.writes {
				l.Record(w.key, w.prefix, w.del, w.rev)
			}
			if got := l.Pending(tc.sp.key, tc.sp.isRange); got != tc.want {
				t.Fatalf("Pending(%+v) = %+v, want %+v", tc.sp, got, tc.want)
			}
		})
	}

	n := Need{Must: 5, Cover: 8}
	for _, tc := range []struct {
		index uint64
		empty bool
		want  bool
	}{
		{4, false, false}, {4, true, false}, // before a write that changed the entry
		{5, false, false}, {5, true, true}, // the delete left nothing, and nothing is what it shows
		{8, false, true}, {9, false, true},
	} {
		if got := n.SatisfiedBy(tc.index, tc.empty); got != tc.want {
			t.Errorf("%+v.SatisfiedBy(%d, empty %v) = %v, want %v", n, tc.index, tc.empty, got, tc.want)
		}
	}
}

// TestWriteLogBounded checks that the log keeps at most writeLogMax
// writes, forgets those older than its window at the next read or write,
// frees its memory once none is left, and that reads then take the fast
// path again.
func TestWriteLogBounded(t *testing.T) {
	var l WriteLog
	for i := range writeLogMax + 10 {
		l.Record("/k/"+strconv.Itoa(i), false, false, uint64(i+1))
	}
	if n := len(l.order) - l.head; l.keys.Len() != writeLogMax || n != writeLogMax {
		t.Fatalf("%d keys, %d in order; want %d", l.keys.Len(), n, writeLogMax)
	}
	if got := l.Pending("/k/0", false); got != (Need{}) {
		t.Fatalf("the oldest write is still pending: %+v", got)
	}
	if got := l.Pending("/k/"+strconv.Itoa(writeLogMax+9), false); got.Must != writeLogMax+10 {
		t.Fatalf("the newest write is not pending: %+v", got)
	}
	if l.Satisfied(1, false, "/k/"+strconv.Itoa(writeLogMax+9), false) {
		t.Fatal("a read older than a remembered write of its key is satisfied")
	}
	// Writes older than the window are dropped by the next read, with no
	// write needed.
	for i := l.head; i < len(l.order); i++ {
		l.order[i].at = l.order[i].at.Add(-2 * writeLogWindow)
	}
	if !l.Satisfied(1, false, "/k/"+strconv.Itoa(writeLogMax+9), false) {
		t.Fatal("a write older than the window is still pending")
	}
	if l.keys != nil || l.order != nil || l.maxIndex.Load() != 0 {
		t.Fatalf("after the window the log still holds %v keys, %d records, max index %d", l.keys, len(l.order), l.maxIndex.Load())
	}
}

// Reads of a prefix find the writes under it among many others by a range
// of the B-tree, and the empty prefix sees every write.
func TestWriteLogPrefixRange(t *testing.T) {
	var l WriteLog
	for i := range 1000 {
		l.Record(fmt.Sprintf("/w/%04d", i), false, false, uint64(i+1))
	}
	l.Record("/p/a", false, false, 2000)
	l.Record("/q", false, false, 2001)
	for _, tc := range []struct {
		prefix string
		want   uint64
	}{{"/p/", 2000}, {"/w/00", 100}, {"/x/", 0}, {"", 2001}, {"/\xff", 0}} {
		if got := l.Pending(tc.prefix, true); got.Must != tc.want {
			t.Errorf("Pending(%q, prefix) = %+v, want Must %d", tc.prefix, got, tc.want)
		}
	}
}

// BenchmarkWriteLogRead measures the read-side check of a prefix read
// while nothing is pending (the fast path) and after 65,536 writes to
// other keys (a B-tree range with no match).
func BenchmarkWriteLogRead(b *testing.B) {
	b.Run("nothing-pending", func(b *testing.B) {
		var l WriteLog
		l.Record("/w/0", false, false, 5)
		b.ReportAllocs()
		for b.Loop() {
			if !l.Satisfied(10, false, "/p/", true) {
				b.Fatal("not satisfied")
			}
		}
	})
	b.Run("after-writes=65536", func(b *testing.B) {
		var l WriteLog
		for i := range 65536 {
			l.Record(fmt.Sprintf("/w/%06d", i), false, false, uint64(i+100))
		}
		b.ReportAllocs()
		for b.Loop() {
			if !l.Satisfied(10, false, "/p/", true) {
				b.Fatal("not satisfied")
			}
		}
	})
}
