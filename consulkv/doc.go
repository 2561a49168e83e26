// Package consulkv makes any server that speaks Consul's KV HTTP API with
// blocking queries a source for a watchcache.Cache and a kvstore.Store: a
// Consul cluster, or another watchcache agent, so that agents chain (edge
// agent -> regional agent -> etcd). It talks to the server with
// github.com/hashicorp/consul/api.
//
// # Using it
//
//	src, err := consulkv.New(consulkv.Config{Address: "http://consul.service:8500", Token: ownToken})
//	...
//	defer src.Close()
//	c, err := watchcache.New(watchcache.Options{})
//	...
//	defer c.Close()
//	store, err := src.Register(c) // kinds consul-key, consul-prefix, consul-keys
//	...
//	key, meta, err := store.GetKey(ctx, kvstore.KeyRequest("config/db", p))
//
// # Index
//
// An entry's index is the server's X-Consul-Index. Consul's rules for
// blocking queries hold, through the cache: each background query is
// issued again with the last index; an index lower than before is a reset
// (a snapshot restore, a server rebuilt from scratch) and reaches watchers
// at once; an index of 0 is treated as 1 and counted as a failure for
// backoff; errors (429 rate limiting, 500 "No cluster leader", a connection
// reset) back off, and meanwhile reads serve the last value with a growing
// Age. A query that returns before its wait with the same index is issued
// again (paced, so a server that does that at once cannot make it spin).
//
// # Identities
//
// A token (Consul's ACL token, X-Consul-Token) is the identity: each token
// is its own partition of the cache, and every request made for it carries
// it. HTTP basic auth credentials are passed along too (a watchcache
// agent upstream maps them to its store's users). The server decides what
// each may do: "ACL not found" wraps kvstore.ErrAuthFailed and "Permission
// denied" kvstore.ErrPermissionDenied, both fatal for the entry (its
// refresh stops, and what it cached is withheld). The zero Partition is the
// source's own token (Config.Token).
//
// # Keys
//
// Keys are sent exactly as given: a leading '/', '//', '%', '?', '#' are
// part of the key (consul/api's KV methods would strip a leading slash or
// refuse it; the source escapes the path itself where they would).
//
// # Read-your-writes
//
// After a write the source reads the written key or prefix once,
// consistently, to learn an index at which the write is visible; the
// Store's Get methods then wait for the entry to reach it (up to
// Config.ReadYourWritesWait) or read from the server directly.
package consulkv
