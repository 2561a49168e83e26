package etcdkv

import (
	"strconv"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/watchcache/watchcache"
)

// Request keys. Each kind spells the range it caches in watchcache.Request.Key;
// build requests with KeyRequest, PrefixRequest and KeysRequest rather than by
// hand. None of the spellings is empty, because the cache treats an empty
// key as "bypass the cache", and a bypassed fetch would open an etcd watch
// that nobody closes.
//
//	kind          Request.Key                        example
//	etcd-key      the key                            "/a/x"
//	etcd-prefix   prefix + "*"                       "/a/*", "*" for every key
//	etcd-keys     len(sep) ":" sep ":" prefix        "1:/:/a/", "0::/a/"
//
// The keys spelling is length-prefixed so that any separator and prefix,
// including ones that contain ':' or '*', round-trip; it is canonical (one
// spelling per prefix and separator), so equal requests share an entry.

// KeyRequest returns a request for the etcd-key kind: the single key key,
// read with the identity of p.
func KeyRequest(key string, p watchcache.Partition) watchcache.Request {
	return watchcache.Request{Key: key, Partition: p}
}

// PrefixRequest returns a request for the etcd-prefix kind: every key that
// starts with prefix ("" for every key), read with the identity of p.
func PrefixRequest(prefix string, p watchcache.Partition) watchcache.Request {
	return watchcache.Request{Key: prefix + "*", Partition: p}
}

// KeysRequest returns a request for the etcd-keys kind: the names of the
// keys that start with prefix, each cut after the first sep that follows
// the prefix (no cutting when sep is empty), as Consul's ?keys&separator=.
func KeysRequest(prefix, sep string, p watchcache.Partition) watchcache.Request {
	return watchcache.Request{Key: keysKey(prefix, sep), Partition: p}
}

func keysKey(prefix, sep string) string {
	return strconv.Itoa(len(sep)) + ":" + sep + ":" + prefix
}

// kindID says which kind a spec belongs to.
type kindID uint8

const (
	kindKey kindID = iota
	kindPrefix
	kindKeys
)

// spec is the etcd range an entry caches, parsed from its request key.
type spec struct {
	kind kindID
	key  string // the key (kindKey) or the prefix
	sep  string // kindKeys only
}

func parseKeyKey(k string) (spec, error) {
	if k == "" {
		return spec{}, invalidf("empty key (build requests with KeyRequest)")
	}
	return spec{kind: kindKey, key: k}, nil
}

func parsePrefixKey(k string) (spec, error) {
	prefix, ok := strings.CutSuffix(k, "*")
	if !ok {
		return spec{}, invalidf("prefix request key %q does not end in \"*\" (build requests with PrefixRequest)", k)
	}
	return spec{kind: kindPrefix, key: prefix}, nil
}

func parseKeysKey(k string) (spec, error) {
	bad := func() (spec, error) {
		return spec{}, invalidf("malformed keys request key %q (build requests with KeysRequest)", k)
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
	return spec{kind: kindKeys, key: rest[n+1:], sep: rest[:n]}, nil
}

// requestKey returns the request key that parses to sp.
func (sp spec) requestKey() string {
	switch sp.kind {
	case kindPrefix:
		return sp.key + "*"
	case kindKeys:
		return keysKey(sp.key, sp.sep)
	}
	return sp.key
}

// isRange reports whether sp covers a range of keys rather than one key.
func (sp spec) isRange() bool { return sp.kind != kindKey }

// start and end are the etcd range of sp: end is "" for a single key. The
// empty prefix is every key, which etcd spells ["\x00", "\x00").
func (sp spec) start() string {
	if sp.isRange() && sp.key == "" {
		return "\x00"
	}
	return sp.key
}

func (sp spec) end() string {
	switch {
	case !sp.isRange():
		return ""
	case sp.key == "":
		return "\x00"
	}
	return clientv3.GetPrefixRangeEnd(sp.key)
}

// keysOnly reports whether sp needs no values (the keys kind).
func (sp spec) keysOnly() bool { return sp.kind == kindKeys }

// readOpts are the options of a read of sp's range.
func (sp spec) readOpts() []clientv3.OpOption {
	var opts []clientv3.OpOption
	if sp.isRange() {
		opts = append(opts, clientv3.WithRange(sp.end()))
	}
	if sp.keysOnly() {
		opts = append(opts, clientv3.WithKeysOnly())
	}
	return opts
}

// probeKey is a single key inside sp's range (so the identity may read
// it): a cheap read of it tells the store's current revision.
func (sp spec) probeKey() string { return sp.start() }

// describe names sp in messages.
func (sp spec) describe() string {
	switch sp.kind {
	case kindPrefix:
		return strconv.Quote(sp.key) + " (prefix)"
	case kindKeys:
		return strconv.Quote(sp.key) + " (keys, separator " + strconv.Quote(sp.sep) + ")"
	}
	return strconv.Quote(sp.key)
}
