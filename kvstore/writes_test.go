package kvstore

import (
	"slices"
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

// TestWriteLogBounded checks that the log forgets old writes and keeps at
// most writeLogMax of them.
func TestWriteLogBounded(t *testing.T) {
	var l WriteLog
	for i := range writeLogMax + 10 {
		l.Record("/k/"+strconv.Itoa(i), false, false, uint64(i+1))
	}
	if len(l.keys) != writeLogMax || len(l.order) != writeLogMax {
		t.Fatalf("%d keys, %d in order; want %d", len(l.keys), len(l.order), writeLogMax)
	}
	if got := l.Pending("/k/0", false); got != (Need{}) {
		t.Fatalf("the oldest write is still pending: %+v", got)
	}
	if got := l.Pending("/k/"+strconv.Itoa(writeLogMax+9), false); got.Must != writeLogMax+10 {
		t.Fatalf("the newest write is not pending: %+v", got)
	}
	// Writes older than the window are dropped at the next write.
	for k, r := range l.keys {
		r.at = r.at.Add(-2 * writeLogWindow)
		l.keys[k] = r
	}
	for i := range l.order {
		l.order[i].at = l.order[i].at.Add(-2 * writeLogWindow)
	}
	l.Record("/fresh", false, false, 1<<40)
	if len(l.keys) != 1 || !slices.ContainsFunc(l.order, func(r writeRec) bool { return r.key == "/fresh" }) {
		t.Fatalf("after the window: %d keys, %d in order; want only /fresh", len(l.keys), len(l.order))
	}
}
