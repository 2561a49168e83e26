// Package upstream builds what the agent serves: a kvstore.Store, the
// watchcache its kinds are registered on, and the Prometheus registry of
// the cache's metrics, for each kind of upstream the agent fronts.
package upstream

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/consulkv"
	"github.com/watchcache/watchcache/etcdkv"
	"github.com/watchcache/watchcache/internal/agent"
	"github.com/watchcache/watchcache/kvstore"
)

// Upstream is a store and the cache in front of it.
type Upstream struct {
	Store    kvstore.Store
	Cache    *watchcache.Cache
	Registry *prometheus.Registry

	closeStore func() error
}

// Close closes the cache, then the store (the cache's entries use it).
func (u *Upstream) Close() error {
	u.Cache.Close()
	return u.closeStore()
}

// CacheConfig is the cache's share of the agent's configuration.
type CacheConfig struct {
	EntryFetchRate  rate.Limit
	EntryFetchBurst int
	MaxEntries      int
	Logger          *slog.Logger
}

// newCache makes the cache and its registry.
func newCache(cc CacheConfig) (*watchcache.Cache, *prometheus.Registry, error) {
	reg := agent.NewRegistry()
	c, err := watchcache.New(watchcache.Options{
		Logger:          cc.Logger,
		Registerer:      reg,
		EntryFetchRate:  cc.EntryFetchRate,
		EntryFetchBurst: cc.EntryFetchBurst,
		MaxEntries:      cc.MaxEntries,
	})
	return c, reg, err
}

// OpenEtcd connects to etcd and builds the cache in front of it. tokens
// maps client tokens to etcd users (etcdkv.LoadTokens).
func OpenEtcd(cfg etcdkv.Config, tokens map[string]etcdkv.TokenUser, cc CacheConfig) (*Upstream, error) {
	src, err := etcdkv.New(cfg)
	if err != nil {
		return nil, err
	}
	cache, reg, err := newCache(cc)
	if err != nil {
		src.Close()
		return nil, err
	}
	kinds, err := src.Register(cache)
	if err == nil {
		err = reg.Register(src.Collector())
	}
	if err != nil {
		cache.Close()
		src.Close()
		return nil, err
	}
	return &Upstream{Store: etcdkv.NewStore(src, kinds, tokens), Cache: cache, Registry: reg, closeStore: src.Close}, nil
}

// OpenConsul builds the cache in front of a server that speaks Consul's
// KV HTTP API (Consul, or another watchcache agent).
func OpenConsul(cfg consulkv.Config, cc CacheConfig) (*Upstream, error) {
	src, err := consulkv.New(cfg)
	if err != nil {
		return nil, err
	}
	cache, reg, err := newCache(cc)
	if err != nil {
		src.Close()
		return nil, err
	}
	store, err := src.Register(cache)
	if err != nil {
		cache.Close()
		src.Close()
		return nil, err
	}
	return &Upstream{Store: store, Cache: cache, Registry: reg, closeStore: src.Close}, nil
}
