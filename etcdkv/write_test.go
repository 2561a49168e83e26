package etcdkv

import (
	"fmt"
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
	if ok, _, err := f.src.DeleteCAS(ctx, self, "/y/missing", 42); !ok || err != nil {
		t.Fatalf("DeleteCAS of a missing key: ok %v, err %v; want true (as Consul)", ok, err)
	}
	if ok, _, err := f.src.DeleteCAS(ctx, self, "/y/k", 0); ok || err != nil {
		t.Fatalf("DeleteCAS 0 of a key that exists: ok %v, err %v; want false (as Consul)", ok, err)
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
