package kvstore

import (
	"slices"
	"sync"
)

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
// Stores make it with NewKey.
type Key struct {
	// Entry is the key and its value; only Entry.Key is set when the key
	// does not exist.
	Entry  Entry
	Exists bool

	memo *Memo
}

// Prefix is the value of a prefix read: every key under the prefix,
// sorted by key. Stores make it with NewPrefix.
type Prefix struct {
	Entries []Entry

	memo *Memo
}

// KeyList is the value of a key-names read: sorted, distinct names of the
// keys under a prefix, each cut after the first separator that follows the
// prefix. Stores make it with NewKeyList.
type KeyList struct {
	Keys []string

	memo *Memo
}

// NewKey, NewPrefix and NewKeyList make values with a Memo: a store makes
// one per published state, and every reader of it shares its rendering.
func NewKey(e Entry, exists bool) Key  { return Key{Entry: e, Exists: exists, memo: new(Memo)} }
func NewPrefix(entries []Entry) Prefix { return Prefix{Entries: entries, memo: new(Memo)} }
func NewKeyList(keys []string) KeyList { return KeyList{Keys: keys, memo: new(Memo)} }
func (k Key) Memo() *Memo              { return k.memo }
func (p Prefix) Memo() *Memo           { return p.memo }
func (kl KeyList) Memo() *Memo         { return kl.memo }

// Memo is work derived from one value (its HTTP rendering), done once and
// shared by every reader of the value: a change fanned out to 10,000 event
// streams is rendered once, not 10,000 times. A value holds one; copies of
// the value share it. A nil *Memo is valid and shares nothing.
type Memo struct {
	once sync.Once
	kind any
	v    any
}

// Do returns make(), computed once per Memo for the first kind asked;
// another kind is computed every time (a value has one shared rendering).
func (m *Memo) Do(kind any, make func() any) any {
	if m == nil {
		return make()
	}
	m.once.Do(func() { m.kind, m.v = kind, make() })
	if m.kind != kind {
		return make()
	}
	return m.v
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
