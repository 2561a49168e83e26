package etcdkv

import (
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Values are shared: the cache hands the same value to every reader and
// watcher of an entry. They are never modified once returned, and callers
// must not modify them either (including the bytes of Value and the
// elements of slices).

// KeyValue is one etcd key and its value, as of some revision.
type KeyValue struct {
	Key   string
	Value []byte // nil in the etcd-keys kind, which reads keys only

	// CreateRevision is the revision of the last creation of the key,
	// ModRevision that of its last modification, Version the number of
	// modifications since it was created (1 after the creation), Lease the
	// lease attached to it (0 for none).
	CreateRevision int64
	ModRevision    int64
	Version        int64
	Lease          int64
}

// Key is the value of the etcd-key kind: one key, which may not exist.
type Key struct {
	// KV is the key and its value. When the key does not exist, only
	// KV.Key is set.
	KV     KeyValue
	Exists bool
}

// Prefix is the value of the etcd-prefix kind: every key under a prefix,
// sorted by key.
type Prefix struct {
	KVs []KeyValue
}

// KeyList is the value of the etcd-keys kind: sorted, distinct key names
// under a prefix, cut after the first separator that follows the prefix.
type KeyList struct {
	Keys []string
}

func fromPB(kv *mvccpb.KeyValue, keysOnly bool) KeyValue {
	out := KeyValue{
		Key:            string(kv.Key),
		CreateRevision: kv.CreateRevision,
		ModRevision:    kv.ModRevision,
		Version:        kv.Version,
		Lease:          kv.Lease,
	}
	if !keysOnly {
		// The protobuf message is not reused by the client, so its bytes
		// can be shared rather than copied.
		out.Value = kv.Value
	}
	return out
}

// sameKVs reports whether a and b are the same state of a range of one
// store: the same keys at the same revisions (a key's ModRevision
// determines its value).
func sameKVs(a, b []KeyValue) bool {
	return slices.EqualFunc(a, b, func(x, y KeyValue) bool {
		return x.Key == y.Key && x.ModRevision == y.ModRevision && x.CreateRevision == y.CreateRevision &&
			x.Version == y.Version && x.Lease == y.Lease
	})
}

// applyEvents returns cur, sorted by key, with the events of one watch
// response applied. It never modifies cur: published values share it.
func applyEvents(cur []KeyValue, evs []*clientv3.Event, keysOnly bool) []KeyValue {
	// The last event of a key wins: events arrive in revision order.
	type change struct {
		kv  KeyValue
		del bool
	}
	changes := make(map[string]change, len(evs))
	for _, ev := range evs {
		if ev.Kv == nil {
			continue
		}
		k := string(ev.Kv.Key)
		if ev.Type == clientv3.EventTypeDelete {
			changes[k] = change{kv: KeyValue{Key: k}, del: true}
		} else {
			changes[k] = change{kv: fromPB(ev.Kv, keysOnly)}
		}
	}
	keys := make([]string, 0, len(changes))
	for k := range changes {
		keys = append(keys, k)
	}
	slices.Sort(keys)

	// Merge two sorted sequences: cur and the changed keys.
	out := make([]KeyValue, 0, len(cur)+len(keys))
	i := 0
	for _, k := range keys {
		for i < len(cur) && cur[i].Key < k {
			out = append(out, cur[i])
			i++
		}
		if i < len(cur) && cur[i].Key == k {
			i++ // replaced or deleted
		}
		if c := changes[k]; !c.del {
			out = append(out, c.kv)
		}
	}
	return append(out, cur[i:]...)
}

// keyNames returns the names of the keys of kvs (sorted, all under
// prefix), each cut after the first sep that follows prefix, without
// duplicates, as Consul's ?keys&separator=: prefix "a/" and separator "/"
// over a/b, a/c/d and a/c/e give a/b and a/c/. An empty sep cuts nothing.
//
// The result is sorted and adjacent duplicates are the only duplicates:
// a cut name T is a prefix of its key, every key between two keys that
// start with T starts with T too, and the first sep after the prefix of
// such a key ends where T ends, so it is cut to T as well.
func keyNames(prefix, sep string, kvs []KeyValue) []string {
	names := make([]string, 0, len(kvs))
	for _, kv := range kvs {
		name := kv.Key
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

// deriveKey, derivePrefix and deriveKeys turn the keys of an entry's range
// into the value of its kind.
func deriveKey(sp spec, kvs []KeyValue) Key {
	if len(kvs) == 0 {
		return Key{KV: KeyValue{Key: sp.key}}
	}
	return Key{KV: kvs[0], Exists: true}
}

func derivePrefix(_ spec, kvs []KeyValue) Prefix { return Prefix{KVs: kvs} }

func deriveKeys(sp spec, kvs []KeyValue) KeyList {
	return KeyList{Keys: keyNames(sp.key, sp.sep, kvs)}
}

// isEmpty reports whether v shows no key at all.
func isEmpty(v any) bool {
	switch v := v.(type) {
	case Key:
		return !v.Exists
	case Prefix:
		return len(v.KVs) == 0
	case KeyList:
		return len(v.Keys) == 0
	}
	return false
}
