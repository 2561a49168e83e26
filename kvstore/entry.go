package kvstore

import "slices"

// Entry is one key and its value, as of some index. Values are shared: the
// cache hands the same value to every reader and watcher of an entry, so
// neither a store nor a caller modifies one once it is returned (including
// the bytes of Value).
type Entry struct {
	Key   string
	Value []byte // nil in a KeyList read, which reads names only

	// Flags is the opaque number Consul stores with a key (0 in etcd).
	Flags uint64

	// CreateIndex is the index at which the key was last created,
	// ModifyIndex the index of its last change.
	CreateIndex uint64
	ModifyIndex uint64
}

// Key is the value of a one-key read: the key, which may not exist.
type Key struct {
	// Entry is the key and its value; only Entry.Key is set when the key
	// does not exist.
	Entry  Entry
	Exists bool
}

// Prefix is the value of a prefix read: every key under the prefix,
// sorted by key.
type Prefix struct {
	Entries []Entry
}

// KeyList is the value of a key-names read: sorted, distinct names of the
// keys under a prefix, each cut after the first separator that follows the
// prefix.
type KeyList struct {
	Keys []string
}

// SameEntries reports whether a and b are the same state of a range of one
// store: the same keys, created and modified at the same indexes (a key's
// ModifyIndex determines its value).
func SameEntries(a, b []Entry) bool {
	return slices.EqualFunc(a, b, func(x, y Entry) bool {
		return x.Key == y.Key && x.ModifyIndex == y.ModifyIndex && x.CreateIndex == y.CreateIndex
	})
}

// Empty reports whether v, a Key, Prefix or KeyList, shows no key at all.
func Empty(v any) bool {
	switch v := v.(type) {
	case Key:
		return !v.Exists
	case Prefix:
		return len(v.Entries) == 0
	case KeyList:
		return len(v.Keys) == 0
	}
	return false
}
