package etcdkv

import (
	"strconv"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/kvstore"
)

// Requests are kvstore's (kvstore.KeyRequest, PrefixRequest and
// KeysRequest): the etcd-key, etcd-prefix and etcd-keys kinds read the
// ranges they spell.
var (
	KeyRequest    = kvstore.KeyRequest
	PrefixRequest = kvstore.PrefixRequest
	KeysRequest   = kvstore.KeysRequest
)

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
	key, err := kvstore.ParseKey(k)
	return spec{kind: kindKey, key: key}, err
}

func parsePrefixKey(k string) (spec, error) {
	prefix, err := kvstore.ParsePrefix(k)
	return spec{kind: kindPrefix, key: prefix}, err
}

func parseKeysKey(k string) (spec, error) {
	prefix, sep, err := kvstore.ParseKeys(k)
	return spec{kind: kindKeys, key: prefix, sep: sep}, err
}

// requestKey returns the request key that parses to sp.
func (sp spec) requestKey() string {
	switch sp.kind {
	case kindPrefix:
		return sp.key + "*"
	case kindKeys:
		return kvstore.KeysRequest(sp.key, sp.sep, watchcache.Partition{}).Key
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

// contains reports whether key is in sp's range.
func (sp spec) contains(key string) bool {
	if !sp.isRange() {
		return key == sp.key
	}
	return strings.HasPrefix(key, sp.key)
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
