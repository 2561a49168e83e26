// Package kvstore is a key-value store as the watchcache agent serves it:
// neutral entries (key, value, flags, create and modify index), the three
// reads the agent caches (one key, every key under a prefix, the key names
// under a prefix) as watchcache kinds, writes whose effects the same
// store's reads see at once, identities, and health.
//
// The agent (cmd/watchcache) serves Consul's KV HTTP API from any Store;
// package etcdkv implements one on etcd v3 and package consulkv one on any
// server that speaks Consul's KV HTTP API, another watchcache agent
// included.
//
// # Requests
//
// A read names its cache entry in a watchcache.Request: build them with
// KeyRequest, PrefixRequest and KeysRequest, which spell the range in
// Request.Key so that equal reads share an entry; stores parse them back
// with ParseRequest.
//
// # Errors
//
// Stores wrap ErrPermissionDenied when an identity may not do what it
// asked, ErrAuthFailed when its credentials were refused, and
// ErrUnknownIdentity when a Partition needs its credentials presented again;
// the agent answers all three with 403. ErrClosed is a closed store.
// Fetches return access errors wrapped with watchcache.Fatal, so an entry
// stops refreshing instead of retrying in a loop.
package kvstore
