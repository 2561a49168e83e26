package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/hashicorp/consul/api"
	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/consulkv"
	"github.com/watchcache/watchcache/etcdkv"
	"github.com/watchcache/watchcache/internal/agent"
	"github.com/watchcache/watchcache/internal/devetcd"
	"github.com/watchcache/watchcache/internal/upstream"
)

// Defaults of the agent's flags.
const (
	defaultHTTPAddr        = "127.0.0.1:8500" // Consul's port, on loopback only
	defaultDevEtcdAddr     = "127.0.0.1:2379" // etcd's port, so etcdctl works as is
	defaultDatacenter      = "dc1"
	defaultShutdownTimeout = 30 * time.Second
)

// agentOptions is the agent's configuration from its flags and environment.
type agentOptions struct {
	httpAddr        string
	httpScheme      string // the scheme -http-addr was given with, if any
	tlsCert         string // the agent's HTTPS certificate and key
	tlsKey          string
	tlsClientCA     string // CAs of the client certificates the agent requires
	etcdCA          string // TLS to etcd
	etcdCert        string
	etcdKey         string
	dev             bool
	devEtcdAddr     string
	etcd            []string
	etcdUsername    string
	etcdPassword    string
	tokensFile      string
	tokens          map[string]etcdkv.TokenUser // loaded from tokensFile
	logLevel        slog.Level
	entryFetchRate  float64
	entryFetchBurst int
	maxEntries      int
	releaseAfter    time.Duration // 0: never
	maxIdentities   int
	accessCheck     etcdkv.AccessCheck
	authCheck       time.Duration
	consul          string // address of a Consul-protocol upstream
	consulToken     string
	consulCA        string
	consulCert      string
	consulKey       string
	datacenter      string
	shutdownTimeout time.Duration
}

const agentAbout = `Runs the agent: Consul's KV HTTP API (/v1/kv/), an event stream of
changes (/v1/watch/kv/), /v1/status, health checks (/readyz, /livez) and
/metrics, served from one shared cache in front of a store. Give exactly
one of -dev, -etcd and -consul.

  -dev     starts a single-node etcd inside the agent, with its data in a
           temporary directory that is removed on exit. etcdctl works
           against it on -dev-etcd-addr.
  -etcd    fronts an existing etcd cluster.
  -consul  fronts a server that speaks Consul's KV HTTP API: a Consul
           cluster, or another watchcache agent (agents chain: edge ->
           regional -> etcd). Request tokens are passed along.

The agent stops cleanly on SIGINT or SIGTERM; a second signal cuts the
requests still open, and a third exits at once.`

// parseAgentOptions parses the agent's flags and environment. ok false
// means stop with status code (help printed, or a usage error).
func parseAgentOptions(args []string, stdout, stderr io.Writer, getenv func(string) string) (o agentOptions, code int, ok bool) {
	o = agentOptions{
		httpAddr:        defaultHTTPAddr,
		devEtcdAddr:     defaultDevEtcdAddr,
		logLevel:        slog.LevelInfo,
		datacenter:      defaultDatacenter,
		shutdownTimeout: defaultShutdownTimeout,
		maxIdentities:   etcdkv.DefaultMaxIdentities,
		authCheck:       etcdkv.DefaultAuthCheckInterval,
		releaseAfter:    watchcache.DefaultReleaseAfter,
	}
	c := newCommand("agent", "(-dev | -etcd host:port,...) [options]", agentAbout, stderr)
	fs := c.fs
	fs.Var(listenAddrValue{&o.httpAddr, &o.httpScheme}, "http-addr", "`host:port` (or http:// or https://host:port) of the HTTP API; keep it on\nloopback unless the network is trusted or -tls-cert is given")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "certificate `file` (PEM): serve the API over HTTPS; reloaded when the file changes")
	fs.StringVar(&o.tlsKey, "tls-key", "", "key `file` (PEM) of -tls-cert")
	fs.StringVar(&o.tlsClientCA, "tls-client-ca", "", "CA certificates `file` (PEM): require client certificates signed by one of them; reloaded when the file changes")
	fs.BoolVar(&o.dev, "dev", false, "run a throwaway embedded etcd (development)")
	fs.Var(hostPortValue{&o.devEtcdAddr}, "dev-etcd-addr", "`host:port` of the embedded etcd's clients with -dev")
	fs.Var(listValue{&o.etcd}, "etcd", "comma-separated `endpoints` of an etcd cluster: http://host:2379, https://host:2379")
	fs.StringVar(&o.etcdCA, "etcd-cacert", "", "CA certificate `file` to verify etcd's certificates (default: the system's)")
	fs.StringVar(&o.etcdCert, "etcd-cert", "", "client certificate `file` the agent presents to etcd")
	fs.StringVar(&o.etcdKey, "etcd-key", "", "key `file` of -etcd-cert")
	fs.StringVar(&o.etcdUsername, "etcd-username", "", "the agent's own etcd `user` (empty: anonymous)")
	fs.StringVar(&o.etcdPassword, "etcd-password", "", "the agent's own etcd `password`; prefer the variable")
	fs.StringVar(&o.tokensFile, "tokens", "", "`file` mapping X-Consul-Token values to etcd users:\n{\"tokens\": [{\"token\": ..., \"user\": ..., \"password\": ...}]}")
	fs.Var(levelValue{&o.logLevel}, "log-level", "log `level`: debug, info, warn or error")
	fs.Var(floatValue{&o.entryFetchRate}, "entry-fetch-rate", "etcd fetches per second allowed per cache entry, a `number` (0: no limit)")
	fs.Var(intValue{&o.entryFetchBurst}, "entry-fetch-burst", "`number` of fetches a cache entry may make at once under -entry-fetch-rate (0: 2)")
	fs.Var(intValue{&o.maxEntries}, "max-entries", "most cache `entries`; the least recently used unwatched ones are evicted (0: no bound)")
	fs.Var(offDurationValue{&o.releaseAfter}, "release-after", "`duration` after which a key nobody reads or watches lets its upstream watch go,\nkeeping its value until the next read revalidates it (0: never)")
	fs.Var(intValue{&o.maxIdentities}, "max-identities", "most etcd `identities` (users from basic auth or tokens) held; the least recently\nused are dropped and must authenticate again (0: 1000)")
	fs.Var(accessCheckValue{&o.accessCheck}, "access-check", "when an identity's access is confirmed with etcd: `strict` (every change, so no\nvalue written after a revocation reaches it) or bounded (only after etcd's\nauth store changed: up to -auth-check-interval late)")
	fs.Var(maxDurationValue{&o.authCheck, time.Second}, "auth-check-interval", "how often etcd is asked whether its users, roles or permissions changed,\na `duration` of at most 1s")
	fs.Var(consulAddrValue{&o.consul}, "consul", "`URL` of a Consul-protocol upstream: http://host:8500 or https://host:8501")
	fs.StringVar(&o.consulToken, "consul-token", "", "the agent's own ACL `token` for -consul; prefer the variable")
	fs.StringVar(&o.consulCA, "consul-cacert", "", "CA certificate `file` to verify an HTTPS -consul upstream")
	fs.StringVar(&o.consulCert, "consul-cert", "", "client certificate `file` for an HTTPS -consul upstream")
	fs.StringVar(&o.consulKey, "consul-key", "", "client key `file` for -consul-cert")
	fs.StringVar(&o.datacenter, "datacenter", defaultDatacenter, "`name` of the datacenter the agent answers ?dc= for")
	fs.Var(durationValue{&o.shutdownTimeout}, "shutdown-timeout", "`duration` open requests may take to finish on shutdown")
	c.withEnv("http-addr", "tls-cert", "tls-key", "tls-client-ca", "etcd-cacert", "etcd-cert", "etcd-key",
		"dev", "dev-etcd-addr", "etcd", "etcd-username", "etcd-password", "tokens",
		"log-level", "entry-fetch-rate", "entry-fetch-burst", "max-entries", "release-after", "max-identities", "access-check",
		"auth-check-interval", "consul", "consul-token", "consul-cacert", "consul-cert", "consul-key", "datacenter", "shutdown-timeout")

	if code, ok := c.parse(args, stdout, getenv); !ok {
		return o, code, false
	}
	switch {
	case len(c.args) > 0:
		return o, c.usageErrorf("unexpected argument %q", c.args[0]), false
	case countSet(o.dev, len(o.etcd) > 0, o.consul != "") > 1:
		return o, c.usageErrorf("give one of %s, %s and %s: each names the store the agent fronts", c.source("dev"), c.source("etcd"), c.source("consul")), false
	case !o.dev && len(o.etcd) == 0 && o.consul == "":
		return o, c.usageErrorf("no store: give -dev to run a throwaway embedded etcd, -etcd host:port,... to use an etcd cluster, or -consul http://host:8500 to front a Consul server or another agent"), false
	case o.consul == "" && (o.consulToken != "" || o.consulCA != "" || o.consulCert != "" || o.consulKey != ""):
		return o, c.usageErrorf("-consul-token, -consul-cacert, -consul-cert and -consul-key are for -consul"), false
	case (o.consulCert == "") != (o.consulKey == ""):
		return o, c.usageErrorf("%s and %s go together", c.source("consul-cert"), c.source("consul-key")), false
	case o.consul != "" && o.tokensFile != "":
		return o, c.usageErrorf("%s maps tokens to etcd users; a -consul upstream takes the tokens themselves", c.source("tokens")), false
	case !o.dev && c.isSet("dev-etcd-addr"):
		return o, c.usageErrorf("%s is for -dev", c.source("dev-etcd-addr")), false
	case o.datacenter == "":
		return o, c.usageErrorf("%s is empty", c.source("datacenter")), false
	case (o.tlsCert == "") != (o.tlsKey == ""):
		return o, c.usageErrorf("%s and %s go together", c.source("tls-cert"), c.source("tls-key")), false
	case o.tlsClientCA != "" && o.tlsCert == "":
		return o, c.usageErrorf("%s needs -tls-cert and -tls-key: client certificates are checked over HTTPS", c.source("tls-client-ca")), false
	case o.httpScheme == "https" && o.tlsCert == "":
		return o, c.usageErrorf("%s is https://: give -tls-cert and -tls-key", c.source("http-addr")), false
	case o.httpScheme == "http" && o.tlsCert != "":
		return o, c.usageErrorf("%s is http://, but -tls-cert serves HTTPS: give host:port or https://", c.source("http-addr")), false
	case len(o.etcd) == 0 && (o.etcdCA != "" || o.etcdCert != "" || o.etcdKey != ""):
		return o, c.usageErrorf("-etcd-cacert, -etcd-cert and -etcd-key are for -etcd"), false
	case (o.etcdCert == "") != (o.etcdKey == ""):
		return o, c.usageErrorf("%s and %s go together", c.source("etcd-cert"), c.source("etcd-key")), false
	}
	if len(o.etcd) > 0 {
		if _, err := clientTLS(o.etcdCA, o.etcdCert, o.etcdKey); err != nil {
			return o, c.usageErrorf("etcd TLS: %v", err), false
		}
		tlsGiven := o.etcdCA != "" || o.etcdCert != ""
		if err := etcdkv.ValidateEndpoints(o.etcd, tlsGiven); err != nil {
			return o, c.usageErrorf("%s: %v", c.source("etcd"), strings.TrimPrefix(err.Error(), "etcdkv: ")), false
		}
	}
	if o.tlsCert != "" {
		if _, err := serverTLS(o.tlsCert, o.tlsKey, o.tlsClientCA, slog.New(slog.DiscardHandler)); err != nil {
			return o, c.usageErrorf("HTTPS (-tls-cert, -tls-key, -tls-client-ca): %v", err), false
		}
	}
	if o.tokensFile != "" {
		tokens, err := etcdkv.LoadTokens(o.tokensFile)
		if err != nil {
			return o, c.usageErrorf("%s: %v", c.source("tokens"), err), false
		}
		o.tokens = tokens
	}
	return o, exitOK, true
}

// runAgent runs the agent until ctx ends, and returns its exit status.
func runAgent(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	o, code, ok := parseAgentOptions(args, stdout, stderr, getenv)
	if !ok {
		return code
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: o.logLevel}))
	if err := serveAgent(ctx, o, stdout, log); err != nil {
		fmt.Fprintf(stderr, "Error! %v\n", err)
		return exitError
	}
	return exitOK
}

// serveAgent starts the agent (and in -dev mode its etcd), serves until ctx
// ends or something fails, and stops everything in reverse order: the
// agent first, with a bounded wait for open requests, then the embedded
// etcd, which the agent needs until its last request is answered.
func serveAgent(ctx context.Context, o agentOptions, stdout io.Writer, log *slog.Logger) (err error) {
	// Listen first: a port in use is the most likely failure, and it is
	// cheaper to find out before etcd starts.
	ln, err := net.Listen("tcp", o.httpAddr)
	if err != nil {
		return fmt.Errorf("HTTP API: %w", err)
	}
	served := false // once Serve has the listener, Shutdown closes it
	defer func() {
		if !served {
			ln.Close()
		}
	}()
	var srvTLS *tls.Config
	scheme := "http"
	if o.tlsCert != "" {
		if srvTLS, err = serverTLS(o.tlsCert, o.tlsKey, o.tlsClientCA, log); err != nil {
			return fmt.Errorf("HTTPS: %w", err)
		}
		scheme = "https"
	} else if !isLoopback(ln.Addr()) {
		log.Warn("the HTTP API is reachable from other machines, without TLS", "addr", ln.Addr().String())
	}

	endpoints := o.etcd
	where := "etcd " + strings.Join(endpoints, ",")
	if o.consul != "" {
		where = "Consul-protocol upstream " + o.consul
	}
	var storeErr <-chan error // the embedded etcd's failures; without -dev nil, which never receives
	if o.dev {
		log.Info("starting the embedded etcd", "addr", o.devEtcdAddr)
		dev, derr := devetcd.Start(o.devEtcdAddr)
		if derr != nil {
			return derr
		}
		// Deferred before the agent exists, so it runs after the agent's
		// Shutdown: the agent needs etcd until its last request is answered.
		defer func() {
			if cerr := dev.Close(); cerr != nil && err == nil {
				err = fmt.Errorf("stopping the embedded etcd: %w", cerr)
			}
			log.Info("embedded etcd stopped")
		}()
		endpoints, storeErr = dev.Endpoints(), dev.Err()
		where = "embedded etcd on " + strings.Join(endpoints, ",") + " (dev: data removed on exit)"
	}
	if ctx.Err() != nil { // interrupted while etcd started, which cannot be cut short
		return nil
	}

	var up *upstream.Upstream
	if o.consul != "" {
		up, err = upstream.OpenConsul(consulkv.Config{
			Address:       o.consul,
			Token:         o.consulToken,
			TLS:           api.TLSConfig{CAFile: o.consulCA, CertFile: o.consulCert, KeyFile: o.consulKey},
			MaxIdentities: o.maxIdentities,
			ReleaseAfter:  o.kindReleaseAfter(),
			Logger:        log,
		}, o.cacheConfig(log))
	} else {
		var etcdTLS *tls.Config
		if etcdTLS, err = clientTLS(o.etcdCA, o.etcdCert, o.etcdKey); err != nil {
			return fmt.Errorf("etcd TLS: %w", err)
		}
		up, err = upstream.OpenEtcd(etcdkv.Config{
			Endpoints:         endpoints,
			TLS:               etcdTLS,
			Username:          o.etcdUsername,
			Password:          o.etcdPassword,
			MaxIdentities:     o.maxIdentities,
			AccessCheck:       o.accessCheck,
			AuthCheckInterval: o.authCheck,
			ReleaseAfter:      o.kindReleaseAfter(),
			Logger:            log,
		}, o.tokens, o.cacheConfig(log))
	}
	if err != nil {
		return err
	}
	defer func() {
		if cerr := up.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("closing the store: %w", cerr)
		}
	}()
	a, err := agent.New(agent.Config{
		Store:      up.Store,
		Cache:      up.Cache,
		Registry:   up.Registry,
		Datacenter: o.datacenter,
		Logger:     log,
	})
	if err != nil {
		return err
	}
	serveErr := make(chan error, 1) // the Serve goroutine sends once
	served = true
	go func() {
		if srvTLS != nil {
			serveErr <- a.ServeTLS(ln, srvTLS)
		} else {
			serveErr <- a.Serve(ln)
		}
	}()
	fmt.Fprintf(stdout, "watchcache agent: HTTP API on %s://%s, %s\n", scheme, ln.Addr(), where)

	var failure error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err := <-serveErr:
		failure = fmt.Errorf("HTTP API: %w", err)
		serveErr = nil
	case err := <-storeErr:
		if err == nil { // embed sends a serving loop's nil error too
			err = errors.New("it stopped serving")
		}
		failure = fmt.Errorf("embedded etcd failed: %w", err)
	}
	hurry := hurryFrom(ctx)
	sctx, cancel := context.WithTimeout(hurry, o.shutdownTimeout)
	defer cancel()
	if err := a.Shutdown(sctx); err != nil {
		// Requests still open are cut: the store and the embedded etcd
		// are closed next, whatever they were doing.
		a.Close()
		switch {
		case hurry.Err() != nil:
			log.Warn("open requests were cut short")
		case failure == nil:
			failure = fmt.Errorf("shutdown: open requests did not finish within -shutdown-timeout %v: %w", o.shutdownTimeout, err)
		}
	}
	if serveErr != nil {
		// Serve returns as soon as Shutdown has closed the listener.
		if err := <-serveErr; !errors.Is(err, http.ErrServerClosed) && failure == nil {
			failure = fmt.Errorf("HTTP API: %w", err)
		}
	}
	log.Info("agent stopped")
	return failure
}

// isLoopback reports whether addr is a loopback address.
func isLoopback(addr net.Addr) bool {
	tcp, ok := addr.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}

// cacheConfig is the cache's share of o.
func (o agentOptions) cacheConfig(log *slog.Logger) upstream.CacheConfig {
	return upstream.CacheConfig{
		EntryFetchRate:  rate.Limit(o.entryFetchRate),
		EntryFetchBurst: o.entryFetchBurst,
		MaxEntries:      o.maxEntries,
		Logger:          log,
	}
}

// countSet counts the true values.
func countSet(bs ...bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}

// kindReleaseAfter is -release-after as the kinds take it: 0 (never) is
// negative there, where 0 means the default.
func (o agentOptions) kindReleaseAfter() time.Duration {
	if o.releaseAfter == 0 {
		return -1
	}
	return o.releaseAfter
}
