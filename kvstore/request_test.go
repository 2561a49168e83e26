package kvstore

import (
	"fmt"
	"slices"
	"testing"

	"github.com/watchcache/watchcache"
)

// TestKeyNames checks the separator listing against Consul's
// ?keys&separator= semantics.
func TestKeyNames(t *testing.T) {
	for _, tc := range []struct {
		name, prefix, sep string
		keys              []string
		want              []string
	}{
		{"the issue's example", "a/", "/", []string{"a/b", "a/c/d", "a/c/e"}, []string{"a/b", "a/c/"}},
		{"no separator lists every key", "a/", "", []string{"a/b", "a/c/d", "a/c/e"}, []string{"a/b", "a/c/d", "a/c/e"}},
		{"the prefix itself", "a/", "/", []string{"a/", "a/b"}, []string{"a/", "a/b"}},
		{"a prefix without a separator", "a", "/", []string{"a", "a/b/c", "ab", "ab/c"}, []string{"a", "a/", "ab", "ab/"}},
		{"separator inside the prefix is ignored", "/x/", "/", []string{"/x/y", "/x/z/w"}, []string{"/x/y", "/x/z/"}},
		{"empty prefix", "", "/", []string{"/a", "b/c", "b/d", "c"}, []string{"/", "b/", "c"}},
		{"multi-byte separator", "k", "--", []string{"k-a", "ka--b--c", "ka--d", "kb"}, []string{"k-a", "ka--", "kb"}},
		{"overlapping separator", "", "aa", []string{"xaaa", "xaab"}, []string{"xaa"}},
		{"sorting around the separator", "a/", "/", []string{"a/c!x", "a/c/d", "a/c0"}, []string{"a/c!x", "a/c/", "a/c0"}},
		{"nothing", "a/", "/", nil, []string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kvs := make([]Entry, len(tc.keys))
			for i, k := range tc.keys {
				kvs[i] = Entry{Key: k}
			}
			if got := KeyNames(tc.prefix, tc.sep, kvs); !slices.Equal(got, tc.want) {
				t.Fatalf("KeyNames(%q, %q, %q) = %q, want %q", tc.prefix, tc.sep, tc.keys, got, tc.want)
			}
		})
	}
}

// FuzzParseKeys checks that key-names request keys round-trip: any prefix
// and separator come back from the key KeysRequest builds, and any key
// that parses is the canonical spelling of what it parses to.
func FuzzParseKeys(f *testing.F) {
	for _, s := range [][2]string{{"/a/", "/"}, {"", ""}, {"a:b", ":"}, {"*", "1:"}, {"\x00", "\xff"}} {
		f.Add(s[0], s[1], KeysRequest(s[0], s[1], watchcache.Partition{}).Key)
	}
	f.Add("", "", "10:0123456789:x")
	f.Fuzz(func(t *testing.T, prefix, sep, raw string) {
		p, s, err := ParseKeys(KeysRequest(prefix, sep, watchcache.Partition{}).Key)
		if err != nil || p != prefix || s != sep {
			t.Fatalf("KeysRequest(%q, %q) parsed to %q, %q, %v", prefix, sep, p, s, err)
		}
		if p, s, err := ParseKeys(raw); err == nil && KeysRequest(p, s, watchcache.Partition{}).Key != raw {
			t.Fatalf("%q parsed to %q, %q, which is spelled otherwise", raw, p, s)
		}
		if p, err := ParsePrefix(raw); err == nil && PrefixRequest(p, watchcache.Partition{}).Key != raw {
			t.Fatalf("prefix key %q parsed to %q, which is spelled otherwise", raw, p)
		}
	})
}

// ExampleKeysRequest shows the request keys of the etcd-keys kind: the
// separator is length-prefixed, so that any prefix and separator
// round-trip.
func ExampleKeysRequest() {
	fmt.Println(KeysRequest("/config/", "/", watchcache.Partition{}).Key)
	fmt.Println(PrefixRequest("/config/", watchcache.Partition{}).Key)
	// Output:
	// 1:/:/config/
	// /config/*
}
