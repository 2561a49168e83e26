package etcdkv

import (
	"slices"

	"github.com/watchcache/watchcache/kvstore"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// The kinds' values are kvstore's: Key, Prefix and KeyList, whose entries
// carry etcd's revisions as their indexes (CreateIndex is the key's
// CreateRevision, ModifyIndex its ModRevision) and Flags 0. Values are
// shared: the cache hands the same value to every reader and watcher of an
// entry. They are never modified once returned, and callers must not
// modify them either (including the bytes of Value and the elements of
// slices).
type (
	Key     = kvstore.Key
	Prefix  = kvstore.Prefix
	KeyList = kvstore.KeyList
	Entry   = kvstore.Entry
)

func fromPB(kv *mvccpb.KeyValue, keysOnly bool) Entry {
	out := Entry{
		Key:         string(kv.Key),
		CreateIndex: uint64(kv.CreateRevision),
		ModifyIndex: uint64(kv.ModRevision),
	}
	if !keysOnly {
		// The protobuf message is not reused by the client, so its bytes
		// can be shared rather than copied.
		out.Value = kv.Value
	}
	return out
}

// applyEvents returns cur, sorted by key, with the events of one watch
// response applied. It never modifies cur: published values share it.
func applyEvents(cur []Entry, evs []*mvccpb.Event, keysOnly bool) []Entry {
	// The last event of a key wins: events arrive in revision order.
	type change struct {
		kv  Entry
		del bool
	}
	changes := make(map[string]change, len(evs))
	for _, ev := range evs {
		if ev.Kv == nil {
			continue
		}
		k := string(ev.Kv.Key)
		if ev.Type == mvccpb.DELETE {
			changes[k] = change{kv: Entry{Key: k}, del: true}
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
	out := make([]Entry, 0, len(cur)+len(keys))
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

// deriveKey, derivePrefix and deriveKeys turn the keys of an entry's range
// into the value of its kind.
func deriveKey(sp spec, kvs []Entry) Key {
	if len(kvs) == 0 {
		return kvstore.NewKey(Entry{Key: sp.key}, false)
	}
	return kvstore.NewKey(kvs[0], true)
}

func derivePrefix(_ spec, kvs []Entry) Prefix { return kvstore.NewPrefix(kvs) }

func deriveKeys(sp spec, kvs []Entry) KeyList {
	return kvstore.NewKeyList(kvstore.KeyNames(sp.key, sp.sep, kvs))
}
