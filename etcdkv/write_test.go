package etcdkv

import (
	"fmt"
	"slices"
	"strconv"
	"testing"
)

// TestReadYourWrites checks that a read through the cache right after a
// write of this process returns the write or something newer, for every
// kind of write, while the entries are watched (so their values come from
// watches that may lag the write).
func TestReadYourWrites(t *testing.T) {
	t.Parallel()
	_, f, _ := start(t)
	ctx := testCtx(t)
	watch(t, f.kinds.Key, KeyRequest("/y/k", self))
	watch(t, f.kinds.Prefix, PrefixRequest("/y/", self))

	for i := range 100 {
		val := strconv.Itoa(i)
		rev, err := f.src.Put(ctx, self, "/y/k", []byte(val))
		if err != nil {
			t.Fatal(err)
		}
		v, meta, err := f.kinds.GetKey(ctx, KeyRequest("/y/k", self))
		if err != nil || string(v.Entry.Value) != val || meta.Index < uint64(rev) {
			t.Fatalf("put %d then GetKey: %q at %d, %v; want %q at %d or later", i, v.Entry.Value, meta.Index, err, val, rev)
		}
		p, meta, err := f.kinds.GetPrefix(ctx, PrefixRequest("/y/", self))
		if err != nil || len(p.Entries) != 1 || string(p.Entries[0].Value) != val || meta.Index < uint64(rev) {
			t.Fatalf("put %d then GetPrefix: %+v at %d, %v", i, p.Entries, meta.Index, err)
		}
	}

	// Compare-and-swap.
	cur, _, err := f.kinds.GetKey(ctx, KeyRequest("/y/k", self))
	if err != nil {
		t.Fatal(err)
	}
	if ok, _, err := f.src.CompareAndSwap(ctx, self, "/y/k", []byte("stale"), int64(cur.Entry.ModifyIndex)-1); ok || err != nil {
		t.Fatalf("CAS with an old revision: ok %v, err %v; want false", ok, err)
	}
	if ok, _, err := f.src.CompareAndSwap(ctx, self, "/y/k", []byte("exists"), 0); ok || err != nil {
		t.Fatalf("CAS 0 on an existing key: ok %v, err %v; want false", ok, err)
	}
	ok, rev, err := f.src.CompareAndSwap(ctx, self, "/y/k", []byte("cas"), int64(cur.Entry.ModifyIndex))
	if !ok || err != nil {
		t.Fatalf("CAS with the current revision: ok %v, err %v", ok, err)
	}
	if v, meta, err := f.kinds.GetKey(ctx, KeyRequest("/y/k", self)); err != nil || string(v.Entry.Value) != "cas" || meta.Index < uint64(rev) {
		t.Fatalf("CAS then GetKey: %q at %d, %v", v.Entry.Value, meta.Index, err)
	}
	if ok, _, err := f.src.CompareAndSwap(ctx, self, "/y/new", []byte("created"), 0); !ok || err != nil {
		t.Fatalf("CAS 0 on a missing key: ok %v, err %v; want true", ok, err)
	}
	if v, _, err := f.kinds.GetKey(ctx, KeyRequest("/y/new", self)); err != nil || string(v.Entry.Value) != "created" {
		t.Fatalf("CAS 0 then GetKey: %+v, %v", v, err)
	}

	// Deletes.
	if _, err := f.src.Delete(ctx, self, "/y/new"); err != nil {
		t.Fatal(err)
	}
	if v, _, err := f.kinds.GetKey(ctx, KeyRequest("/y/new", self)); err != nil || v.Exists {
		t.Fatalf("Delete then GetKey: %+v, %v; want missing", v, err)
	}
	cur, _, _ = f.kinds.GetKey(ctx, KeyRequest("/y/k", self))
	if ok, _, err := f.src.DeleteCAS(ctx, self, "/y/k", 0); ok || err != nil {
		t.Fatalf("DeleteCAS 0: ok %v, err %v; want false (as Consul)", ok, err)
	}
	if ok, _, err := f.src.DeleteCAS(ctx, self, "/y/k", int64(cur.Entry.ModifyIndex)+1); ok || err != nil {
		t.Fatalf("DeleteCAS with a wrong revision: ok %v, err %v; want false", ok, err)
	}
	if ok, _, err := f.src.DeleteCAS(ctx, self, "/y/k", int64(cur.Entry.ModifyIndex)); !ok || err != nil {
		t.Fatalf("DeleteCAS with the current revision: ok %v, err %v", ok, err)
	}
	if v, _, err := f.kinds.GetKey(ctx, KeyRequest("/y/k", self)); err != nil || v.Exists {
		t.Fatalf("DeleteCAS then GetKey: %+v, %v; want missing", v, err)
	}

	// Prefixes and key lists.
	for i := range 20 {
		key := fmt.Sprintf("/y/d%02d/x", i)
		if _, err := f.src.Put(ctx, self, key, []byte("x")); err != nil {
			t.Fatal(err)
		}
		ks, _, err := f.kinds.GetKeys(ctx, KeysRequest("/y/", "/", self))
		if err != nil || len(ks.Keys) != i+1 || ks.Keys[i] != fmt.Sprintf("/y/d%02d/", i) {
			t.Fatalf("put %s then GetKeys: %v, %v", key, ks.Keys, err)
		}
	}
	if _, err := f.src.DeletePrefix(ctx, self, "/y/"); err != nil {
		t.Fatal(err)
	}
	if p, _, err := f.kinds.GetPrefix(ctx, PrefixRequest("/y/", self)); err != nil || len(p.Entries) != 0 {
		t.Fatalf("DeletePrefix then GetPrefix: %v, %v; want none", prefixKeys(p), err)
	}
	if ks, _, err := f.kinds.GetKeys(ctx, KeysRequest("/y/", "/", self)); err != nil || len(ks.Keys) != 0 {
		t.Fatalf("DeletePrefix then GetKeys: %v, %v; want none", ks.Keys, err)
	}
}

// TestWriteLogPending checks which recorded writes an entry must reflect,
// and when a result does.
func TestWriteLogPending(t *testing.T) {
	type write struct {
		key         string
		prefix, del bool
		rev         int64
	}
	key := func(k string) spec { return spec{kind: kindKey, key: k} }
	prefix := func(p string) spec { return spec{kind: kindPrefix, key: p} }
	for _, tc := range []struct {
		name   string
		writes []write
		sp     spec
		want   need
	}{
		{"nothing written", nil, key("/a"), need{}},
		{"put of the key", []write{{key: "/a", rev: 5}}, key("/a"), need{must: 5}},
		{"put of another key", []write{{key: "/ab", rev: 5}}, key("/a"), need{}},
		{"latest write of a key wins", []write{{key: "/a", rev: 5}, {key: "/a", del: true, rev: 7}}, key("/a"), need{cover: 7}},
		{"put under the prefix", []write{{key: "/p/x", rev: 5}, {key: "/q/x", rev: 9}}, prefix("/p/"), need{must: 5}},
		{"delete under the prefix", []write{{key: "/p/x", del: true, rev: 5}}, prefix("/p/"), need{must: 5}},
		{"prefix delete containing the key", []write{{key: "/p/", prefix: true, del: true, rev: 6}}, key("/p/x"), need{cover: 6}},
		{"prefix delete containing the prefix", []write{{key: "/p/", prefix: true, del: true, rev: 6}}, prefix("/p/x/"), need{cover: 6}},
		{"the same prefix deleted", []write{{key: "/p/", prefix: true, del: true, rev: 6}}, prefix("/p/"), need{cover: 6}},
		{"prefix delete inside the prefix", []write{{key: "/p/x/", prefix: true, del: true, rev: 6}}, prefix("/p/"), need{must: 6}},
		{"unrelated prefix delete", []write{{key: "/q/", prefix: true, del: true, rev: 6}}, prefix("/p/"), need{}},
		{"everything deleted", []write{{key: "", prefix: true, del: true, rev: 6}}, key("/a"), need{cover: 6}},
		{"every key read", []write{{key: "/a", rev: 3}, {key: "/b", rev: 4}}, prefix(""), need{must: 4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var l writeLog
			l.init()
			for _, w := range tc.writes {
				l.record(w.key, w.prefix, w.del, w.rev)
			}
			if got := l.pending(tc.sp); got != tc.want {
				t.Fatalf("pending(%+v) = %+v, want %+v", tc.sp, got, tc.want)
			}
		})
	}

	n := need{must: 5, cover: 8}
	for _, tc := range []struct {
		index uint64
		empty bool
		want  bool
	}{
		{4, false, false}, {4, true, false}, // before a write that changed the entry
		{5, false, false}, {5, true, true}, // the delete left nothing, and nothing is what it shows
		{8, false, true}, {9, false, true},
	} {
		if got := n.satisfiedBy(tc.index, tc.empty); got != tc.want {
			t.Errorf("%+v.satisfiedBy(%d, empty %v) = %v, want %v", n, tc.index, tc.empty, got, tc.want)
		}
	}
}

// TestWriteLogBounded checks that the log forgets old writes and keeps at
// most writeLogMax of them.
func TestWriteLogBounded(t *testing.T) {
	var l writeLog
	l.init()
	for i := range writeLogMax + 10 {
		l.record("/k/"+strconv.Itoa(i), false, false, int64(i+1))
	}
	if len(l.keys) != writeLogMax || len(l.order) != writeLogMax {
		t.Fatalf("%d keys, %d in order; want %d", len(l.keys), len(l.order), writeLogMax)
	}
	if got := l.pending(spec{kind: kindKey, key: "/k/0"}); got != (need{}) {
		t.Fatalf("the oldest write is still pending: %+v", got)
	}
	if got := l.pending(spec{kind: kindKey, key: "/k/" + strconv.Itoa(writeLogMax+9)}); got.must != writeLogMax+10 {
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
	l.record("/fresh", false, false, 1<<40)
	if len(l.keys) != 1 || !slices.ContainsFunc(l.order, func(r writeRec) bool { return r.key == "/fresh" }) {
		t.Fatalf("after the window: %d keys, %d in order; want only /fresh", len(l.keys), len(l.order))
	}
}
