package kvstore

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/watchcache/watchcache"
)

// Request keys. Each read spells the range it caches in
// watchcache.Request.Key; build requests with KeyRequest, PrefixRequest and
// KeysRequest rather than by hand. None of the spellings is empty, because
// the cache treats an empty key as "bypass the cache".
//
//	read      Request.Key                        example
//	key       the key                            "/a/x"
//	prefix    prefix + "*"                       "/a/*", "*" for every key
//	keys      len(sep) ":" sep ":" prefix        "1:/:/a/", "0::/a/"
//
// The keys spelling is length-prefixed so that any separator and prefix,
// including ones that contain ':' or '*', round-trip; it is canonical (one
// spelling per prefix and separator), so equal requests share an entry.

// KeyRequest returns a request for the one-key read of key, made as p.
func KeyRequest(key string, p watchcache.Partition) watchcache.Request {
	return watchcache.Request{Key: key, Partition: p}
}

// PrefixRequest returns a request for every key that starts with prefix
// ("" for every key), read as p.
func PrefixRequest(prefix string, p watchcache.Partition) watchcache.Request {
	return watchcache.Request{Key: prefix + "*", Partition: p}
}

// KeysRequest returns a request for the names of the keys that start with
// prefix, each cut after the first sep that follows the prefix (no cutting
// when sep is empty), as Consul's ?keys&separator=, read as p.
func KeysRequest(prefix, sep string, p watchcache.Partition) watchcache.Request {
	return watchcache.Request{Key: keysKey(prefix, sep), Partition: p}
}

func keysKey(prefix, sep string) string {
	return strconv.Itoa(len(sep)) + ":" + sep + ":" + prefix
}

// ParseKey returns the key of a one-key request key.
func ParseKey(k string) (string, error) {
	if k == "" {
		return "", invalidf("empty key (build requests with KeyRequest)")
	}
	return k, nil
}

// ParsePrefix returns the prefix of a prefix request key.
func ParsePrefix(k string) (string, error) {
	prefix, ok := strings.CutSuffix(k, "*")
	if !ok {
		return "", invalidf("prefix request key %q does not end in \"*\" (build requests with PrefixRequest)", k)
	}
	return prefix, nil
}

// ParseKeys returns the prefix and separator of a key-names request key.
func ParseKeys(k string) (prefix, sep string, err error) {
	bad := func() (string, string, error) {
		return "", "", invalidf("malformed keys request key %q (build requests with KeysRequest)", k)
	}
	digits, rest, ok := strings.Cut(k, ":")
	// Canonical lengths only: no sign, no leading zeros, so that one
	// prefix and separator have exactly one spelling.
	if !ok || digits == "" || len(digits) > 9 || (len(digits) > 1 && digits[0] == '0') {
		return bad()
	}
	n := 0
	for _, c := range []byte(digits) {
		if c < '0' || c > '9' {
			return bad()
		}
		n = n*10 + int(c-'0')
	}
	if n+1 > len(rest) || rest[n] != ':' {
		return bad()
	}
	return rest[n+1:], rest[:n], nil
}

// KeyNames returns the names of the given keys (sorted), each cut after the
// first sep that follows prefix, without duplicates, as Consul's
// ?keys&separator=: prefix "a/" and separator "/" over a/b, a/c/d and a/c/e
// give a/b and a/c/. An empty sep cuts nothing.
//
// The result is sorted and adjacent duplicates are the only duplicates: a
// cut name T is a prefix of its key, every key between two keys that start
// with T starts with T too, and the first sep after the prefix of such a
// key ends where T ends, so it is cut to T as well.
func KeyNames(prefix, sep string, entries []Entry) []string {
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		name := e.Key
		if sep != "" && strings.HasPrefix(name, prefix) {
			if i := strings.Index(name[len(prefix):], sep); i >= 0 {
				name = name[:len(prefix)+i+len(sep)]
			}
		}
		if n := len(names); n > 0 && names[n-1] == name {
			continue
		}
		names = append(names, name)
	}
	return names
}

// invalidf returns an error wrapping watchcache.ErrInvalid.
func invalidf(format string, args ...any) error {
	return fmt.Errorf("kvstore: %s: %w", fmt.Sprintf(format, args...), watchcache.ErrInvalid)
}
