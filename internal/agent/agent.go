// Package agent is the watchcache agent: Consul's KV HTTP API served from a
// watchcache over any kvstore.Store (etcd, a Consul server, another agent),
// so that Consul clients (the consul/api Go client and its watch plans,
// consul-template, curl) work unchanged, many of them sharing one upstream
// query per key.
//
// The agent knows KV entries, indexes, identities and health, never the
// store behind them: cmd/watchcache builds the store and the cache and
// hands both to New.
//
// Request flow: the handler parses and validates the request (request.go),
// resolves the caller's credentials to the store's identity (identity.go),
// reads through the cache or writes through to the store (kv.go), or
// streams changes as Server-Sent Events (sse.go).
//
// Lifecycle: Serve answers on a listener until Shutdown, which stops
// accepting, ends blocking requests early with the current value, closes
// event streams and waits for handlers. Whoever made the cache and the
// store closes them after Shutdown, the cache first.
package agent

import (
	"context"
	"crypto/tls"
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

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/kvstore"
)

// Limits that keep a misbehaving client from exhausting the agent.
const (
	// MaxValueSize is the largest value a PUT may store, as Consul's
	// default kv_max_value_size.
	MaxValueSize = 512 << 10

	readHeaderTimeout = 10 * time.Second
	// bodyReadTimeout bounds the read of a PUT's body: a client that
	// trickles it must not hold a handler (and a shutdown) indefinitely.
	bodyReadTimeout = 30 * time.Second
	maxHeaderBytes  = 64 << 10
	idleTimeout     = 2 * time.Minute
	// writeGrace is how long past its wait a read may take to be written
	// before the connection is cut.
	writeGrace = 30 * time.Second
)

// Config configures an Agent. Store and Cache are required.
type Config struct {
	// Store is what the agent serves; its kinds are registered on Cache.
	Store kvstore.Store
	Cache *watchcache.Cache

	// Registry is served on /metrics; the cache's metrics should be
	// registered on it. nil means a registry of the Go and process
	// collectors only.
	Registry *prometheus.Registry

	// Datacenter is the name the agent answers to in ?dc=; default "dc1".
	Datacenter string

	// WriteTimeout bounds each write to the store; default 10s.
	WriteTimeout time.Duration

	// HeartbeatInterval is how often an idle event stream gets a comment
	// line, so that proxies keep it open; default 30s.
	HeartbeatInterval time.Duration

	// EventWriteTimeout bounds the write of each event of a stream: a
	// client that takes longer is dropped; default 10s.
	EventWriteTimeout time.Duration

	// Logger receives the agent's logs; nil means slog.Default().
	Logger *slog.Logger
}

// Agent serves the HTTP API. Create it with New; the zero value is not
// usable.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	store kvstore.Store
	kinds *kvstore.Kinds
	cache *watchcache.Cache
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
	stopErr    error // what the first Shutdown returned

	probeOnce sync.Once     // the first Serve starts probeStore
	probed    chan struct{} // closed when probeStore returns

	blocked        atomic.Int64 // blocking queries waiting now
	droppedStreams prometheus.Counter
}

// NewRegistry returns a Prometheus registry with the Go runtime and
// process collectors, for Config.Registry.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// New returns an Agent that serves cfg.Store, ready to Serve.
func New(cfg Config) (*Agent, error) {
	if cfg.Store == nil || cfg.Cache == nil {
		return nil, errors.New("agent: Config.Store and Config.Cache are required")
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
	if cfg.EventWriteTimeout <= 0 {
		cfg.EventWriteTimeout = 10 * time.Second
	}
	if cfg.Registry == nil {
		cfg.Registry = NewRegistry()
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	a := &Agent{cfg: cfg, log: log, store: cfg.Store, kinds: cfg.Store.Kinds(), cache: cfg.Cache,
		droppedStreams: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "watchcache_agent_event_streams_dropped_total",
			Help: "Event streams dropped because their client did not take an event within the write timeout.",
		})}
	if err := cfg.Registry.Register(a.droppedStreams); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a.stopCtx, a.stopCancel = context.WithCancel(context.Background())
	a.probed = make(chan struct{})
	a.metrics = promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{Registry: cfg.Registry})
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
	a.serveLogged(w, r, a.route)
}

func (a *Agent) route(w http.ResponseWriter, r *http.Request) {
	switch p := r.URL.Path; {
	case p == "/v1/kv" || strings.HasPrefix(p, "/v1/kv/"):
		a.handleKV(w, r)
	case p == "/v1/watch/kv" || strings.HasPrefix(p, "/v1/watch/kv/"):
		a.handleWatch(w, r)
	case p == "/v1/status":
		a.handleStatus(w, r)
	case p == "/v1/status/leader", p == "/v1/status/peers":
		a.handleLeader(w, r)
	case p == "/readyz":
		a.handleReady(w, r)
	case p == "/livez":
		a.handleLive(w, r)
	case p == "/metrics":
		a.metrics.ServeHTTP(w, r)
	default:
		a.handleUnsupported(w, r)
	}
}

// Serve answers HTTP requests on ln until Shutdown. It returns
// http.ErrServerClosed after a Shutdown.
func (a *Agent) Serve(ln net.Listener) error {
	a.log.Info("watchcache agent serving", "addr", ln.Addr().String(), "upstream", a.store.Describe())
	a.startProbe()
	return a.srv.Serve(ln)
}

// ServeTLS is Serve over TLS with cfg (which sets the certificate, and
// client certificates if they are required); HTTP/2 is offered.
func (a *Agent) ServeTLS(ln net.Listener, cfg *tls.Config) error {
	a.srv.TLSConfig = cfg.Clone()
	a.log.Info("watchcache agent serving HTTPS", "addr", ln.Addr().String(), "upstream", a.store.Describe(),
		"client_certificates", cfg.ClientAuth == tls.RequireAndVerifyClientCert)
	a.startProbe()
	return a.srv.ServeTLS(ln, "", "")
}

// Shutdown stops the agent: it stops accepting connections, answers
// blocking requests at once with the current value, ends event streams,
// and waits for every handler (or ctx). It is safe to call more than once.
func (a *Agent) Shutdown(ctx context.Context) error {
	a.stopOnce.Do(func() {
		a.stopCancel()
		err := a.srv.Shutdown(ctx)
		if perr := a.waitProbe(ctx); err == nil {
			err = perr
		}
		a.stopErr = err
	})
	return a.stopErr
}

// waitProbe waits for probeStore to return (at once if it never started),
// or for ctx. stopCtx must be cancelled.
func (a *Agent) waitProbe(ctx context.Context) error {
	a.probeOnce.Do(func() { close(a.probed) }) // never started
	select {
	case <-a.probed:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// startProbe starts probeStore, once.
func (a *Agent) startProbe() {
	a.probeOnce.Do(func() { go a.probeStore() })
}

// Close closes every connection at once, cutting the requests still open.
// Use it after a Shutdown that did not finish in time.
func (a *Agent) Close() error {
	a.stopCancel()
	err := a.srv.Close()
	a.waitProbe(context.Background()) // it returns promptly once stopCtx is done
	return err
}

// isStopping reports whether Shutdown began.
func (a *Agent) isStopping() bool { return a.stopCtx.Err() != nil }
