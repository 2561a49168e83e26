package etcdkv

import (
	"container/list"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/watchcache/watchcache/kvstore"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// Defaults for Config.
const (
	DefaultDialTimeout        = 5 * time.Second
	DefaultRequestTimeout     = 5 * time.Second
	DefaultIdentityIdleTTL    = 10 * time.Minute
	DefaultLoginTTL           = 30 * time.Second
	DefaultResetCheckInterval = 5 * time.Second
	DefaultReadYourWritesWait = 2 * time.Second
	DefaultMaxIdentities      = 1000
	DefaultAuthCheckInterval  = time.Second
)

// The client's keepalive (see New): a ping after keepaliveTime without
// traffic, and the connection closed if its answer takes keepaliveTimeout.
// etcd refuses pings more often than every 5 s by default.
const (
	keepaliveTime    = 30 * time.Second
	keepaliveTimeout = 10 * time.Second
)

// AccessCheck says when the source confirms, with etcd, that an identity
// may still read what its cache entries hold. etcd checks a watch's
// permission only when the watch is created: after a revocation the watch
// keeps streaming, so the source checks for itself.
type AccessCheck int

const (
	// AccessCheckStrict confirms every change before it is delivered: a
	// count-only linearizable read by the entry's identity of the entry's
	// key or range, started after the change was seen (one request per
	// identity covers every entry of it that changed meanwhile). No value
	// written after a revocation returned reaches the identity, by any
	// path. Every entry confirms access again whenever etcd's auth store
	// changed (AuthCheckInterval); until it publishes a denial, a Get may
	// return a value written before the revocation.
	AccessCheckStrict AccessCheck = iota

	// AccessCheckBounded confirms access only after etcd's auth store
	// changed, which the source learns every AuthCheckInterval: values
	// written up to that long after a revocation (twice that if etcd does
	// not answer the next poll; later, every change is confirmed) may
	// still reach the identity. It saves one read per change and identity.
	AccessCheckBounded
)

// Config configures a Source. Only Endpoints is required.
type Config struct {
	// Endpoints are the etcd client URLs, e.g. "http://127.0.0.1:2379" or
	// "https://etcd-0.example:2379" (see ValidateEndpoints).
	Endpoints []string

	// TLS, if set, is the client side of TLS to etcd: the CA that signed
	// the servers' certificates (RootCAs; nil means the system's) and the
	// client certificate etcd may require (Certificates). Endpoints must
	// then be https:// (or host:port). An https:// endpoint without TLS
	// uses the system's CAs and no client certificate.
	TLS *tls.Config

	// Username and Password are the source's own identity, used for
	// requests with the zero Partition. Empty means anonymous, which works
	// only while etcd's authentication is off.
	Username, Password string

	// DialTimeout bounds connecting and logging in when a client is made;
	// 0 means DefaultDialTimeout.
	DialTimeout time.Duration

	// RequestTimeout bounds each read the source makes for the cache (and
	// each login check); 0 means DefaultRequestTimeout. Writes are bounded
	// by their caller's context only.
	RequestTimeout time.Duration

	// IdentityIdleTTL is how long the client of an identity from Login
	// stays open unused (no Login, request or watch); 0 means
	// DefaultIdentityIdleTTL.
	IdentityIdleTTL time.Duration

	// LoginTTL is how long Login trusts a password it checked with etcd:
	// within it, a Login with the same password is answered from memory;
	// after it, the password is checked again, so a password changed in
	// etcd stops working here too. 0 means DefaultLoginTTL; a negative value
	// checks every Login with etcd.
	LoginTTL time.Duration

	// ResetCheckInterval is how often an entry waiting for a change checks
	// that etcd is reachable and that its revision did not go backwards (a
	// store restored from a backup or rebuilt from scratch, where a watch
	// would wait silently for a revision that is now in the future). One
	// cheap read per identity and interval serves every entry. 0 means
	// DefaultResetCheckInterval.
	ResetCheckInterval time.Duration

	// ReadYourWritesWait bounds how long the Kinds' Get methods wait for an
	// entry to catch up with a write this source made before they read
	// from etcd directly; 0 means DefaultReadYourWritesWait.
	ReadYourWritesWait time.Duration

	// ConsistentWait bounds how long a consistent read (the Kinds' Read
	// methods) waits for its entry to catch up with the store's revision
	// before it reads etcd directly; 0 means DefaultConsistentWait.
	ConsistentWait time.Duration

	// MaxIdentities bounds the identities (users logged in with Login)
	// the source holds: beyond it the least recently used one is dropped,
	// and its Partition needs a Login again (cache entries that use it keep
	// it). 0 means DefaultMaxIdentities. Identities share the source's one
	// connection to etcd, so each costs its credentials and token.
	MaxIdentities int

	// AccessCheck says when access is confirmed; the zero value is
	// AccessCheckStrict.
	AccessCheck AccessCheck

	// AuthCheckInterval is how often the source asks etcd whether its auth
	// store changed (users, roles, permissions, enabling auth); after a
	// change every identity's access is confirmed again before a cached
	// value is returned. 0 means DefaultAuthCheckInterval; at most 1s.
	AuthCheckInterval time.Duration

	// QueryTimeout and LastGetTTL are passed to the kinds Register creates
	// (see watchcache.KindOptions); 0 means the cache's defaults.
	QueryTimeout time.Duration
	LastGetTTL   time.Duration

	// ReleaseAfter is how long an entry nobody reads or watches keeps its
	// etcd watch (see watchcache.KindOptions): 0 means the cache's
	// default, negative never.
	ReleaseAfter time.Duration

	// ConfigureClient, if set, adjusts the configuration of the source's
	// etcd client (TLS, dial options, keepalive, a zap logger) after the
	// source filled in endpoints and timeouts (keepalive pings every 30 s,
	// answered within 10 s). It must not set credentials (Username,
	// Password, Token): the client carries every identity's requests, each
	// with its own token, and client credentials would make all of them
	// that user's. Set Username and Password above instead.
	ConfigureClient func(*clientv3.Config)

	// Logger receives the source's logs; nil means slog.Default().
	Logger *slog.Logger
}

func (cfg Config) withDefaults() (Config, error) {
	if len(cfg.Endpoints) == 0 {
		return cfg, invalidf("Config.Endpoints is empty")
	}
	if err := ValidateEndpoints(cfg.Endpoints, cfg.TLS != nil); err != nil {
		return cfg, err
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"DialTimeout", &cfg.DialTimeout, DefaultDialTimeout},
		{"RequestTimeout", &cfg.RequestTimeout, DefaultRequestTimeout},
		{"IdentityIdleTTL", &cfg.IdentityIdleTTL, DefaultIdentityIdleTTL},
		{"ResetCheckInterval", &cfg.ResetCheckInterval, DefaultResetCheckInterval},
		{"ReadYourWritesWait", &cfg.ReadYourWritesWait, DefaultReadYourWritesWait},
		{"AuthCheckInterval", &cfg.AuthCheckInterval, DefaultAuthCheckInterval},
		{"ConsistentWait", &cfg.ConsistentWait, DefaultConsistentWait},
	} {
		switch {
		case *d.v < 0:
			return cfg, invalidf("negative Config.%s %v", d.name, *d.v)
		case *d.v == 0:
			*d.v = d.def
		}
	}
	switch {
	case cfg.AuthCheckInterval > time.Second:
		return cfg, invalidf("Config.AuthCheckInterval %v is over the 1s bound on how long a revocation may go unnoticed", cfg.AuthCheckInterval)
	case cfg.MaxIdentities < 0:
		return cfg, invalidf("negative Config.MaxIdentities %d", cfg.MaxIdentities)
	case cfg.MaxIdentities == 0:
		cfg.MaxIdentities = DefaultMaxIdentities
	case cfg.AccessCheck != AccessCheckStrict && cfg.AccessCheck != AccessCheckBounded:
		return cfg, invalidf("unknown Config.AccessCheck %d", cfg.AccessCheck)
	}
	if cfg.QueryTimeout < 0 || cfg.LastGetTTL < 0 {
		return cfg, invalidf("negative Config.QueryTimeout or Config.LastGetTTL")
	}
	if cfg.LoginTTL == 0 {
		cfg.LoginTTL = DefaultLoginTTL
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return cfg, nil
}

// Source makes etcd v3 a source for a watchcache.Cache: it registers the
// kinds (Register), verifies identities (Login), writes (Put,
// CompareAndSwap, Delete, DeletePrefix, DeleteCAS) and owns the etcd
// clients all of these use. Create one with New; the zero value is not
// usable. Its methods are safe for concurrent use.
//
// Close the cache before the source: the cache's entries hold etcd watches
// on the source's clients.
type Source struct {
	cfg    Config
	log    *slog.Logger
	secret []byte // keys the password hashes of the identity pool
	writes kvstore.WriteLog
	views  sync.Map // viewKey -> *stateView of each entry (consistent.go)

	// consistentCached and consistentDirect count consistent reads served
	// from the cache and from etcd; drained the watch streams that drained
	// (headTimedOut). See Collector.
	consistentCached, consistentDirect, drained atomic.Int64

	// testHookBeforeWatch, if set (by tests only), runs before an entry's
	// watch is created from revision rev, after the read it follows.
	testHookBeforeWatch func(sp spec, rev int64)
	// testHookAfterWatch, if set (by tests only), runs once an entry's
	// watch was created.
	testHookAfterWatch func(sp spec)
	// testHookRead, if set (by tests only), runs before a range is read;
	// an error it returns fails the read.
	testHookRead func(sp spec) error
	// testHookAfterCheck, if set (by tests only), runs when etcd answered
	// an access check, before the requests it served hear of it.
	testHookAfterCheck func()

	// conn is the one etcd client every identity's requests go over, each
	// with its identity's token (token.go). It has no credentials itself.
	conn *clientv3.Client

	auth authState // what the source knows of etcd's auth store (access.go)

	muxMu    sync.Mutex // protects muxes, opening and draining; taken before a watchMux's mu
	muxes    map[muxKey]*watchMux
	opening  map[muxKey]chan struct{} // streams being opened (muxFor); closed when done
	draining map[*watchMux]struct{}   // streams open that take no new watches (headTimedOut)
	waits    waitList                 // fetches waiting for a change (wait.go)
	work     workQueue                // reads and checks of fetches (work.go)
	outage   outage                   // the last read etcd did not answer (work.go)

	mu      sync.Mutex // protects the fields below; never held during a request to etcd
	own     *identity  // the source's own identity (Config.Username or anonymous)
	pool    map[string]*identity
	lru     list.List // pooled identities, most recently used first
	closed  bool
	stopJan chan struct{}   // closed by Close to stop the janitor and the auth watcher
	stopCtx context.Context // cancelled by Close: ends the background work's requests
	stopBg  context.CancelFunc
	bg      sync.WaitGroup // the source's goroutines; Close waits for them
}

// New connects to etcd with the source's own identity and returns the
// Source. It fails if the configuration is invalid or the own credentials
// are rejected; an anonymous source does not wait for etcd to be reachable.
func New(cfg Config) (*Source, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Source{
		cfg:      cfg,
		log:      cfg.Logger,
		secret:   make([]byte, 32),
		pool:     make(map[string]*identity),
		stopJan:  make(chan struct{}),
		muxes:    make(map[muxKey]*watchMux),
		draining: make(map[*watchMux]struct{}),
		opening:  make(map[muxKey]chan struct{}),
	}
	s.work.init(s)
	if _, err := rand.Read(s.secret); err != nil {
		return nil, fmt.Errorf("etcdkv: %w", err)
	}
	s.auth.init()
	s.stopCtx, s.stopBg = context.WithCancel(context.Background())
	cc := clientv3.Config{
		Endpoints:   cfg.Endpoints,
		TLS:         cfg.TLS,
		DialTimeout: cfg.DialTimeout,
		// A connection on which nothing comes back (a member gone without
		// closing it, a path that drops everything) is closed after
		// keepaliveTime+keepaliveTimeout, which ends its watch streams:
		// otherwise a watch on it would look idle for good. Kubernetes'
		// etcd client uses the same values.
		DialKeepAliveTime:    keepaliveTime,
		DialKeepAliveTimeout: keepaliveTimeout,
		// The client logs retries at warn level on its own; the source
		// reports what matters through slog.
		Logger: zap.NewNop(),
	}
	if cfg.ConfigureClient != nil {
		cfg.ConfigureClient(&cc)
		if cc.Username != "" || cc.Password != "" || cc.Token != "" {
			return nil, invalidf("Config.ConfigureClient set client credentials; set Config.Username and Password instead (every identity shares the client)")
		}
		s.cfg.TLS = cc.TLS // what diagnose must connect with
	}
	// After ConfigureClient, which may replace DialOptions: without it an
	// identity whose token etcd invalidated would fail instead of renewing.
	cc.DialOptions = append(cc.DialOptions, grpc.WithChainUnaryInterceptor(renewInterceptor))
	if s.conn, err = clientv3.New(cc); err != nil {
		return nil, wrapErr("connecting", err)
	}
	s.own = &identity{s: s, user: cfg.Username, password: cfg.Password}
	if cfg.Username != "" {
		// Refused credentials are a configuration error; an etcd that does
		// not answer yet is not: the first request that needs the token
		// gets one (renewInterceptor), and Health says why etcd does not
		// answer meanwhile.
		err := s.own.renew(context.Background(), "")
		if errors.Is(err, ErrAuthFailed) {
			s.conn.Close()
			return nil, fmt.Errorf("etcdkv: the source's own identity %q: %w", cfg.Username, err)
		}
		if err != nil {
			s.log.Warn("etcd does not answer yet; the source's own identity will log in when it does", "user", cfg.Username, "err", err)
		}
	}
	s.goBackground(s.janitor)
	s.goBackground(s.watchAuth)
	s.goBackground(s.tickWaits)
	return s, nil
}

// Close closes the source's etcd client and stops its background work. It
// returns once they are gone. Later calls return ErrClosed; requests made
// after Close fail with ErrClosed.
func (s *Source) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.closed = true
	clear(s.pool)
	s.lru.Init()
	s.mu.Unlock()

	close(s.stopJan)
	s.stopBg()
	s.bg.Wait()
	if err := s.conn.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("etcdkv: closing the client: %w", err)
	}
	return nil
}

// goBackground runs f on a goroutine that Close waits for, unless the
// source is closed. It reports whether it started f.
func (s *Source) goBackground(f func()) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		f()
	}()
	return true
}

func (s *Source) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

var _ io.Closer = (*Source)(nil)
