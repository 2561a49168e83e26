// Package etcdkv makes etcd v3 a source for a watchcache.Cache: keys,
// prefixes and key listings of etcd, cached, shared and kept fresh by one
// etcd watch per cache entry, with the etcd revision as the index.
//
// It is a push source (watchcache.AsyncFetcher): an entry waiting for a
// change costs no goroutine. The watches of one identity share one etcd
// watch stream, read by one goroutine, so the source runs a constant
// number of goroutines however many keys are watched, and a watched key
// costs the client about what etcd's server pays for its watcher.
//
// # Using it
//
//	src, err := etcdkv.New(etcdkv.Config{Endpoints: []string{"http://127.0.0.1:2379"}})
//	...
//	defer src.Close()
//	c, err := watchcache.New(watchcache.Options{})
//	...
//	defer c.Close() // before src.Close: entries hold watches on its clients
//	kinds, err := src.Register(c)
//	...
//	key, meta, err := kinds.GetKey(ctx, etcdkv.KeyRequest("/config/a", watchcache.Partition{}))
//
// Three kinds are registered: KindKey (one key: its value, whether it
// exists, its revisions), KindPrefix (every key under a prefix) and
// KindKeys (key names under a prefix, cut after a separator as Consul's
// ?keys&separator=). Build requests with KeyRequest, PrefixRequest and
// KeysRequest; watch with the kinds' Notify and NotifyCallback; write with
// the Source's Put, CompareAndSwap, Delete, DeletePrefix and DeleteCAS, and
// read with the Kinds' GetKey, GetPrefix and GetKeys to see those writes at
// once.
//
// # Index
//
// An entry's index is an etcd revision, never 0. It rises only when the
// entry's key or range changes (writes elsewhere in etcd wake nobody, since
// the watch covers only the range), and deletions are changes. It is the
// revision of the last change the watch delivered; after a read (the first
// fetch, or a re-read after a compaction) it is the key's ModRevision, or
// for a missing key and for ranges the read's revision, and it stays as it
// was if the read finds nothing changed. The etcd-keys kind changes when
// anything under its prefix changes, values included, as Consul's ?keys
// does.
//
// # Failures
//
//   - Compaction. A watch that fell behind a compaction (it was
//     disconnected, and the revisions it needed were compacted meanwhile)
//     is cancelled by etcd; the entry reads the current state, delivers it
//     if it differs, and watches from the revision after the read.
//   - Resets. A store restored from a backup or rebuilt from scratch has
//     lower revisions than before, and a watch waiting for a revision that
//     is now in the future stays silent. While an entry waits, it checks
//     every Config.ResetCheckInterval that the store's revision did not go
//     backwards (one linearizable read per identity and interval, shared by
//     all its entries); if it did, the entry reads the new state and
//     delivers it with its lower index, which the cache treats as a reset.
//     A reset is noticed only while the new store's revision is below the
//     highest one the entry saw: a store rebuilt and written past that
//     revision within one interval looks like the old one to etcd's API
//     (a restored store keeps its cluster and member IDs).
//   - Connection loss. The same check fails when etcd cannot be reached: the
//     fetch returns an error, the cache backs off, keeps serving the last
//     value with a growing Age and tells watchers once; when etcd is back,
//     the next check succeeds and the entry recovers by itself.
//   - Leader loss. Watch streams require a leader (clientv3.WithRequireLeader):
//     a member cut off from its cluster ends them instead of holding them
//     silently, and each entry on the stream re-reads and watches again,
//     on a new stream. A connection on which nothing comes back is closed
//     by the client's keepalive (30 s of quiet, 10 s to answer a ping),
//     which ends its streams the same way.
//   - Idle keys. An entry nobody reads or watches for Config.ReleaseAfter
//     (watchcache.DefaultReleaseAfter) cancels its etcd watch and keeps
//     its value, which the next read revalidates.
//   - Unanswered creates. A watch create that etcd does not answer within
//     Config.RequestTimeout fails its entry's fetch (the cache retries). If
//     creates behind it were waiting their turn (see etcd's gRPC proxy
//     below), its stream drains: it takes no more watches, the creates go
//     on another stream, and its live watches carry on until they end.
//   - etcd's gRPC proxy. Behind `etcd grpc-proxy`, which numbers watches
//     itself and answers creates out of order, a stream creates one watch
//     at a time, and an entry refuses any event for a key outside its
//     range. The proxy drops progress requests, so consistent reads of an
//     entry that has not caught up read etcd directly.
//
// # Metrics
//
// Source.Collector exports the source's metrics (watch streams and
// watches, access checks, identities, auth changes, consistent reads by
// where they were served) to a Prometheus registry.
//
// # Identities
//
// A request's Partition names the etcd user it is made as, and the password
// that user was verified with. Login verifies a user's password with etcd
// and returns that Partition; after a password change, a Login with the new
// password returns another, and the old one and its entries are refused
// (ErrUnknownIdentity, or ErrAuthFailed if etcd rejected the old password
// first), so a session opened with the old password ends even if the user
// logs in again with the new one. Every
// identity's requests share the source's one connection to etcd, each
// carrying its user's token (etcd authenticates requests, not
// connections), so an identity costs its credentials and token; a token
// that etcd invalidated (any change to users or roles does) is renewed
// once and the request tried again. At most Config.MaxIdentities are held,
// least recently used dropped first, and idle ones are dropped after
// Config.IdentityIdleTTL; a dropped identity needs a Login again, while
// cache entries that use it keep it. The zero Partition is the source's
// own identity (Config.Username, or anonymous). Permission errors and
// rejected credentials wrap ErrPermissionDenied and ErrAuthFailed, and stop
// the background refresh of the entry (watchcache.Fatal).
//
// # Access after revocation
//
// etcd checks a watch's permission only when the watch is created, so the
// source confirms access itself before a value reaches an identity.
// With Config.AccessCheck AccessCheckStrict (the default) every change from
// a watch is confirmed by a count-only linearizable read of the entry's key
// or range made as the identity, after the change was seen: no value
// written after a revocation returned is delivered, by Get, blocking Get
// or Notify; the entry gets a fatal ErrPermissionDenied or ErrAuthFailed
// instead. Checks of one identity's entries that changed together share
// one read-only transaction. Every Config.AuthCheckInterval (at most 1 s)
// the source asks etcd whether its auth store changed; when it did, every
// entry confirms access again, and one whose access is gone publishes the
// denial (until then a Get may return a value written before the
// revocation). AccessCheckBounded confirms only then, saving a read per
// change: writes made up to AuthCheckInterval after a revocation (twice
// that if etcd does not answer the next poll) may still be delivered.
//
// # Read-your-writes
//
// Writes through the Source are remembered for a minute with their
// revision. GetKey, GetPrefix and GetKeys compare the entry's index with
// the writes to its range: if the entry has not caught up, they wait for it
// (normally milliseconds) up to Config.ReadYourWritesWait and then read
// from etcd directly with the caller's identity.
package etcdkv
