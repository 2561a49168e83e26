package etcdkv

import (
	"errors"
	"slices"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/kvstore"
)

// TestRequestKeys checks the spelling of each kind's request keys and
// that malformed ones are refused as invalid.
func TestRequestKeys(t *testing.T) {
	p := watchcache.Partition{Token: "t"}
	if r := KeyRequest("/a", p); r.Key != "/a" || r.Partition != p {
		t.Errorf("KeyRequest = %+v", r)
	}
	if r := PrefixRequest("/a/", p); r.Key != "/a/*" || r.Partition != p {
		t.Errorf("PrefixRequest = %+v", r)
	}
	if r := PrefixRequest("", p); r.Key != "*" {
		t.Errorf("PrefixRequest(\"\") = %+v, want a non-empty key (an empty one bypasses the cache)", r)
	}
	if r := KeysRequest("/a/", "/", p); r.Key != "1:/:/a/" || r.Partition != p {
		t.Errorf("KeysRequest = %+v", r)
	}
	if r := KeysRequest("", "", p); r.Key != "0::" {
		t.Errorf("KeysRequest(\"\", \"\") = %+v", r)
	}
	for _, bad := range []string{"", "/a/", ":", "1:", "1:/", "1://", "01:/:/a/", "+1:/:/a/", "-1:/:", "x:/:", "2:/:/a/", "9999999999:/:"} {
		if sp, err := parseKeysKey(bad); !errors.Is(err, watchcache.ErrInvalid) {
			t.Errorf("parseKeysKey(%q) = %+v, %v; want ErrInvalid", bad, sp, err)
		}
	}
	if _, err := parsePrefixKey("/a/"); !errors.Is(err, watchcache.ErrInvalid) {
		t.Errorf("parsePrefixKey without *: %v", err)
	}
	if _, err := parseKeyKey(""); !errors.Is(err, watchcache.ErrInvalid) {
		t.Errorf("parseKeyKey(\"\"): %v", err)
	}
}

// FuzzKeysRequest checks that keys request keys round-trip: any prefix
// and separator come back from the key KeysRequest builds, and any key
// that parses is the canonical spelling of what it parses to.
func FuzzKeysRequest(f *testing.F) {
	for _, s := range [][2]string{{"/a/", "/"}, {"", ""}, {"a:b", ":"}, {"*", "1:"}, {"\x00", "\xff"}} {
		f.Add(s[0], s[1], KeysRequest(s[0], s[1], watchcache.Partition{}).Key)
	}
	f.Add("", "", "10:0123456789:x")
	f.Fuzz(func(t *testing.T, prefix, sep, raw string) {
		sp, err := parseKeysKey(KeysRequest(prefix, sep, watchcache.Partition{}).Key)
		if err != nil || sp.key != prefix || sp.sep != sep || sp.kind != kindKeys {
			t.Fatalf("KeysRequest(%q, %q) parsed to %+v, %v", prefix, sep, sp, err)
		}
		if sp, err := parseKeysKey(raw); err == nil && sp.requestKey() != raw {
			t.Fatalf("%q parsed to %+v, which is spelled %q", raw, sp, sp.requestKey())
		}
		if sp, err := parsePrefixKey(raw); err == nil && sp.requestKey() != raw {
			t.Fatalf("prefix key %q parsed to %+v, which is spelled %q", raw, sp, sp.requestKey())
		}
	})
}

// TestApplyEvents checks that events are merged into a sorted copy, the
// last event of a key winning, and that the input is never modified.
func TestApplyEvents(t *testing.T) {
	kv := func(k string, rev int64) Entry {
		return Entry{Key: k, Value: []byte(k), CreateIndex: 1, ModifyIndex: uint64(rev)}
	}
	putEv := func(k string, rev int64) *mvccpb.Event {
		return &mvccpb.Event{Type: mvccpb.PUT, Kv: &mvccpb.KeyValue{Key: []byte(k), Value: []byte(k), CreateRevision: 1, ModRevision: rev, Version: 1}}
	}
	delEv := func(k string, rev int64) *mvccpb.Event {
		return &mvccpb.Event{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: []byte(k), ModRevision: rev}}
	}
	cur := []Entry{kv("b", 2), kv("d", 3)}
	orig := slices.Clone(cur)
	got := applyEvents(cur, []*mvccpb.Event{putEv("c", 4), delEv("b", 5), putEv("a", 5), putEv("e", 6), delEv("e", 7), putEv("d", 8)}, false)
	want := []Entry{kv("a", 5), kv("c", 4), kv("d", 8)}
	if !kvstore.SameEntries(got, want) {
		t.Fatalf("applyEvents = %v, want %v", got, want)
	}
	if !kvstore.SameEntries(cur, orig) {
		t.Fatalf("applyEvents modified its input: %v, was %v", cur, orig)
	}
	if got := applyEvents(nil, []*mvccpb.Event{putEv("x", 9)}, true); len(got) != 1 || got[0].Value != nil {
		t.Fatalf("keys-only applyEvents kept the value: %+v", got)
	}
}
