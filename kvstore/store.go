package kvstore

import (
	"context"
	"errors"
	"time"

	"github.com/watchcache/watchcache"
)

var (
	// ErrPermissionDenied is wrapped by errors of requests that the
	// identity may not make.
	ErrPermissionDenied = errors.New("permission denied")

	// ErrAuthFailed is wrapped by errors about credentials: a wrong
	// password, an unknown user or token, credentials that the store no
	// longer accepts.
	ErrAuthFailed = errors.New("authentication failed")

	// ErrUnknownIdentity is wrapped by errors for a Partition whose
	// credentials the store no longer holds (it was idle, or others
	// displaced it): they must be presented again.
	ErrUnknownIdentity = errors.New("unknown identity; present the credentials again")

	// ErrClosed is returned by a closed Store.
	ErrClosed = errors.New("store closed")
)

// Credentials are what a client presented: HTTP basic auth (User and
// Password) or a token (Consul's X-Consul-Token). The zero value is no
// credentials: the store's own identity.
type Credentials struct {
	User, Password string
	Token          string
}

// Kinds are a store's cache kinds for the three reads; their Notify
// follows a read. Get values through the Store's Get methods, which also
// see the store's own writes.
type Kinds struct {
	Key    *watchcache.Kind[Key]
	Prefix *watchcache.Kind[Prefix]
	Keys   *watchcache.Kind[KeyList]
}

// Health is what a store knows of its upstream.
type Health struct {
	Reachable   bool          // the upstream answered
	Leader      bool          // it knows a leader (a cluster that can commit)
	LastContact time.Duration // how stale its answers may be; 0 when current
	Index       uint64        // its current index, as far as known
	Endpoint    string        // the member or server that answered

	// LeaderAddr and Peers are what Consul's /v1/status/leader and
	// /v1/status/peers answer: the address ("host:port") its cluster's
	// members reach the leader at, "" when there is none, and every
	// voting member's.
	LeaderAddr string
	Peers      []string
}

// Store is a key-value store as the agent serves it. Its methods are safe
// for concurrent use.
//
// Reads through the cache (GetKey, GetPrefix, GetKeys) see every write the
// same Store acknowledged (read-your-writes). Direct reads (ReadKey,
// ReadPrefix, ReadKeys) ask the upstream, consistently, bypassing the cache.
// Indexes are the store's: never 0 for a value, rising with every change,
// lower only after the store was reset.
type Store interface {
	// Kinds returns the cache kinds the store registered.
	Kinds() *Kinds

	GetKey(ctx context.Context, req watchcache.Request) (Key, watchcache.ResultMeta, error)
	GetPrefix(ctx context.Context, req watchcache.Request) (Prefix, watchcache.ResultMeta, error)
	GetKeys(ctx context.Context, req watchcache.Request) (KeyList, watchcache.ResultMeta, error)

	ReadKey(ctx context.Context, req watchcache.Request) (Key, watchcache.ResultMeta, error)
	ReadPrefix(ctx context.Context, req watchcache.Request) (Prefix, watchcache.ResultMeta, error)
	ReadKeys(ctx context.Context, req watchcache.Request) (KeyList, watchcache.ResultMeta, error)

	// Put sets key to value. CompareAndSwap does if the key's ModifyIndex
	// is index (0: only if the key does not exist) and reports whether it
	// did. Delete removes key, DeletePrefix every key under prefix, and
	// DeleteCAS key if its ModifyIndex is index.
	Put(ctx context.Context, p watchcache.Partition, key string, value []byte) error
	CompareAndSwap(ctx context.Context, p watchcache.Partition, key string, value []byte, index uint64) (bool, error)
	Delete(ctx context.Context, p watchcache.Partition, key string) error
	DeletePrefix(ctx context.Context, p watchcache.Partition, prefix string) error
	DeleteCAS(ctx context.Context, p watchcache.Partition, key string, index uint64) (bool, error)

	// Identify verifies credentials and returns the Partition that
	// requests made with them carry; the zero Credentials are the store's
	// own identity. Refused credentials wrap ErrAuthFailed.
	Identify(ctx context.Context, c Credentials) (watchcache.Partition, error)

	// Who names a Partition for logs: a user name, or a digest of a
	// token, never a secret.
	Who(p watchcache.Partition) string

	// Health asks the upstream how it is.
	Health(ctx context.Context) (Health, error)

	// Describe names the upstream for logs and status pages.
	Describe() string
}
