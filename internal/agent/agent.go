// Package agent is the watchcache agent: Consul's KV HTTP API served from a
// watchcache over etcd, so that Consul clients (the consul/api Go client
// and its watch plans, consul-template, curl) work unchanged against etcd,
// many of them sharing one etcd watch per key.
//
// Request flow: the handler parses and validates the request (request.go),
// resolves the caller's identity to an etcd user (identity.go), reads
// through the cache or writes through to etcd (kv.go), or streams changes
// as Server-Sent Events (sse.go).
//
// Lifecycle: New connects to etcd and builds the cache; Serve answers on a
// listener until Shutdown, which stops accepting, ends blocking requests
// early with the current value, closes event streams, waits for handlers,
// and then closes the cache and the etcd source, in that order. Whoever
// started etcd (the -dev mode of cmd/watchcache) stops it after Shutdown.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/time/rate"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/etcdkv"
)

// Limits that keep a misbehaving client from exhausting the agent.
const (
	// MaxValueSize is the largest value a PUT may store, as Consul's
	// default kv_max_value_size.
	MaxValueSize = 512 << 10

	readHeaderTimeout = 10 * time.Second
	maxHeaderBytes    = 64 << 10
	idleTimeout       = 2 * time.Minute
	// writeGrace is how long past its wait a read may take to be written
	// before the connection is cut.
	writeGrace = 30 * time.Second
)

// Config configures an Agent. EtcdEndpoints is required.
type Config struct {
	// Datacenter is the name the agent answers to in ?dc=; default "dc1".
	Datacenter string

	// EtcdEndpoints are the client URLs of the etcd cluster.
	EtcdEndpoints []string
	// EtcdUsername and EtcdPassword are the agent's own etcd identity,
	// used for requests without credentials. Empty means anonymous.
	EtcdUsername, EtcdPassword string

	// Tokens maps X-Consul-Token values to etcd users (see LoadTokens).
	Tokens map[string]Credentials

	// EntryFetchRate and EntryFetchBurst limit each cache entry's etcd
	// fetches (0: no limit); MaxEntries bounds the cache (0: no bound).
	EntryFetchRate  rate.Limit
	EntryFetchBurst int
	MaxEntries      int

	// MaxIdentities bounds the etcd identities held (0: 1,000); AccessCheck
	// says when each identity's access is confirmed with etcd (strict by
	// default) and AuthCheckInterval how often etcd's auth store is asked
	// whether it changed (0: 1s). See etcdkv.Config.
	MaxIdentities     int
	AccessCheck       etcdkv.AccessCheck
	AuthCheckInterval time.Duration

	// WriteTimeout bounds each write to etcd; default 10s.
	WriteTimeout time.Duration

	// HeartbeatInterval is how often an idle event stream gets a comment
	// line, so that proxies keep it open; default 30s.
	HeartbeatInterval time.Duration

	// Etcd adjusts the etcd source's configuration (tests shorten its
	// timers); optional.
	Etcd func(*etcdkv.Config)

	// Logger receives the agent's logs; nil means slog.Default().
	Logger *slog.Logger
}

// Agent serves the HTTP API. Create it with New; the zero value is not
// usable.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	src   *etcdkv.Source
	cache *watchcache.Cache
	kinds *etcdkv.Kinds
	reg   *prometheus.Registry
	srv   *http.Server

	metrics http.Handler // /metrics

	// Every request's context derives from stopCtx, which Shutdown
	// cancels first: blocking requests then answer at once with the
	// current value and event streams end. It is the agent's lifetime, so
	// it is kept here, unlike a caller's context. Writes detach from it
	// (context.WithoutCancel) so that a shutdown never aborts one midway.
	stopCtx    context.Context
	stopCancel context.CancelFunc
	stopOnce   sync.Once

	blocked atomic.Int64 // blocking queries waiting now
}

// New connects to etcd and returns an Agent ready to Serve.
func New(cfg Config) (*Agent, error) {
	if len(cfg.EtcdEndpoints) == 0 {
		return nil, errors.New("agent: no etcd endpoints")
	}
	if cfg.Datacenter == "" {
		cfg.Datacenter = "dc1"
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 10 * time.Second
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = 30 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	ecfg := etcdkv.Config{
		Endpoints:         cfg.EtcdEndpoints,
		Username:          cfg.EtcdUsername,
		Password:          cfg.EtcdPassword,
		MaxIdentities:     cfg.MaxIdentities,
		AccessCheck:       cfg.AccessCheck,
		AuthCheckInterval: cfg.AuthCheckInterval,
		Logger:            log,
	}
	if cfg.Etcd != nil {
		cfg.Etcd(&ecfg)
	}
	src, err := etcdkv.New(ecfg)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	cache, err := watchcache.New(watchcache.Options{
		Logger:          log,
		Registerer:      reg,
		EntryFetchRate:  cfg.EntryFetchRate,
		EntryFetchBurst: cfg.EntryFetchBurst,
		MaxEntries:      cfg.MaxEntries,
	})
	if err != nil {
		src.Close()
		return nil, fmt.Errorf("agent: %w", err)
	}
	kinds, err := src.Register(cache)
	if err != nil {
		cache.Close()
		src.Close()
		return nil, fmt.Errorf("agent: %w", err)
	}
	a := &Agent{cfg: cfg, log: log, src: src, cache: cache, kinds: kinds, reg: reg}
	a.stopCtx, a.stopCancel = context.WithCancel(context.Background())
	a.metrics = promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
	a.srv = &http.Server{
		Handler:           a,
		ReadHeaderTimeout: readHeaderTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		IdleTimeout:       idleTimeout,
		BaseContext:       func(net.Listener) context.Context { return a.stopCtx },
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return a, nil
}

// ServeHTTP routes a request. It is not an http.ServeMux: a mux cleans
// paths and redirects, which would rewrite keys such as "a//b" or "a/../b"
// that etcd (and Consul) store as they are.
func (a *Agent) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch p := r.URL.Path; {
	case p == "/v1/kv" || strings.HasPrefix(p, "/v1/kv/"):
		a.handleKV(w, r)
	case p == "/v1/watch/kv" || strings.HasPrefix(p, "/v1/watch/kv/"):
		a.handleWatch(w, r)
	case p == "/v1/status":
		a.handleStatus(w, r)
	case p == "/metrics":
		a.metrics.ServeHTTP(w, r)
	default:
		a.handleUnsupported(w, r)
	}
}

// Serve answers HTTP requests on ln until Shutdown. It returns
// http.ErrServerClosed after a Shutdown.
func (a *Agent) Serve(ln net.Listener) error {
	a.log.Info("watchcache agent serving", "addr", ln.Addr().String(), "etcd", a.cfg.EtcdEndpoints)
	return a.srv.Serve(ln)
}

// Shutdown stops the agent: it stops accepting connections, answers
// blocking requests at once with the current value, ends event streams,
// waits for every handler (or ctx), and closes the cache and the etcd
// source. It is safe to call more than once.
func (a *Agent) Shutdown(ctx context.Context) error {
	var err error
	a.stopOnce.Do(func() {
		a.stopCancel()
		err = a.srv.Shutdown(ctx)
		a.cache.Close()
		if cerr := a.src.Close(); err == nil {
			err = cerr
		}
	})
	return err
}

// isStopping reports whether Shutdown began.
func (a *Agent) isStopping() bool { return a.stopCtx.Err() != nil }
