package etcdkv

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Defaults for Config.
const (
	DefaultDialTimeout        = 5 * time.Second
	DefaultRequestTimeout     = 5 * time.Second
	DefaultIdentityIdleTTL    = 10 * time.Minute
	DefaultLoginTTL           = 30 * time.Second
	DefaultResetCheckInterval = 5 * time.Second
	DefaultReadYourWritesWait = 2 * time.Second
)

// Config configures a Source. Only Endpoints is required.
type Config struct {
	// Endpoints are the etcd client URLs, e.g. "http://127.0.0.1:2379".
	Endpoints []string

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

	// QueryTimeout and LastGetTTL are passed to the kinds Register creates
	// (see watchcache.KindOptions); 0 means the cache's defaults.
	QueryTimeout time.Duration
	LastGetTTL   time.Duration

	// ConfigureClient, if set, adjusts the configuration of every etcd
	// client the source makes (TLS, dial options, a zap logger) after the
	// source filled in endpoints, credentials and timeouts.
	ConfigureClient func(*clientv3.Config)

	// Logger receives the source's logs; nil means slog.Default().
	Logger *slog.Logger
}

func (cfg Config) withDefaults() (Config, error) {
	if len(cfg.Endpoints) == 0 {
		return cfg, invalidf("Config.Endpoints is empty")
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
	} {
		switch {
		case *d.v < 0:
			return cfg, invalidf("negative Config.%s %v", d.name, *d.v)
		case *d.v == 0:
			*d.v = d.def
		}
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
	writes writeLog

	// testHookBeforeWatch, if set (by tests only), runs before an entry's
	// watch is created from revision rev, after the read it follows.
	testHookBeforeWatch func(sp spec, rev int64)

	mu       sync.Mutex // protects the fields below; never held during a request to etcd
	own      *identity  // the source's own identity (Config.Username or anonymous)
	pool     map[string]*identity
	open     map[*identity]struct{} // every identity whose client is open, pooled or retired
	authOff  time.Time              // until then, Login knows etcd's authentication is off
	closed   bool
	stopJan  chan struct{} // closed by Close to stop the janitor
	janitorW sync.WaitGroup
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
		cfg:     cfg,
		log:     cfg.Logger,
		secret:  make([]byte, 32),
		pool:    make(map[string]*identity),
		open:    make(map[*identity]struct{}),
		stopJan: make(chan struct{}),
	}
	if _, err := rand.Read(s.secret); err != nil {
		return nil, fmt.Errorf("etcdkv: %w", err)
	}
	s.writes.init()
	cli, err := s.newClient(cfg.Username, cfg.Password)
	if err != nil {
		return nil, wrapErr("connecting as the source's own identity", err)
	}
	s.own = &identity{user: cfg.Username, cli: cli}
	s.open[s.own] = struct{}{}
	s.janitorW.Add(1)
	go s.janitor()
	return s, nil
}

// newClient makes an etcd client that logs in as user (anonymous if user
// is empty).
func (s *Source) newClient(user, password string) (*clientv3.Client, error) {
	cc := clientv3.Config{
		Endpoints:   s.cfg.Endpoints,
		Username:    user,
		Password:    password,
		DialTimeout: s.cfg.DialTimeout,
		// The client logs retries at warn level on its own; the source
		// reports what matters through slog.
		Logger: zap.NewNop(),
	}
	if s.cfg.ConfigureClient != nil {
		s.cfg.ConfigureClient(&cc)
	}
	return clientv3.New(cc)
}

// Close closes every etcd client of the source and stops its janitor. It
// returns once they are gone. Later calls return ErrClosed; requests made
// after Close fail with ErrClosed.
func (s *Source) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.closed = true
	ids := make([]*identity, 0, len(s.open))
	for id := range s.open {
		ids = append(ids, id)
	}
	clear(s.open)
	clear(s.pool)
	s.mu.Unlock()

	close(s.stopJan)
	s.janitorW.Wait()
	var errs []error
	for _, id := range ids {
		if err := id.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("etcdkv: closing clients: %w", err)
	}
	return nil
}

func (s *Source) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// closeClients closes the clients of ids, outside s.mu.
func (s *Source) closeClients(ids []*identity) {
	for _, id := range ids {
		if err := id.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
			s.log.Warn("etcdkv: closing a client", "user", id.user, "error", err)
		}
	}
}

var _ io.Closer = (*Source)(nil)
