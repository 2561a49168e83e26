package consulkv

import (
	"container/list"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/kvstore"
)

// Defaults for Config.
const (
	DefaultQueryTimeout       = 5 * time.Minute
	DefaultRequestTimeout     = 10 * time.Second
	DefaultReadYourWritesWait = 2 * time.Second
	DefaultMaxIdentities      = 1000
)

// Config configures a Source. Only Address is required.
type Config struct {
	// Address is the server's URL: "http://host:8500" or
	// "https://host:8501".
	Address string

	// Token is the source's own ACL token, used for requests with the zero
	// Partition; empty means anonymous.
	Token string

	// TLS configures HTTPS: CAFile, CertFile and KeyFile as consul/api
	// takes them.
	TLS api.TLSConfig

	// HTTPTransport, if set, is the transport requests go over (a proxy, a
	// dialer of one's own); nil means consul/api's pooled default.
	HTTPTransport *http.Transport

	// QueryTimeout is the wait of each blocking query (Consul caps it at 10
	// minutes); 0 means DefaultQueryTimeout. RequestTimeout bounds other
	// requests; 0 means DefaultRequestTimeout.
	QueryTimeout   time.Duration
	RequestTimeout time.Duration

	// ReadYourWritesWait bounds how long the Store's Get methods wait for
	// an entry to catch up with a write of this source before they read
	// from the server directly; 0 means DefaultReadYourWritesWait.
	ReadYourWritesWait time.Duration

	// MaxIdentities bounds the basic-auth credentials the source keeps to
	// pass along; the least recently used are dropped (their requests then
	// need the credentials again). 0 means DefaultMaxIdentities.
	MaxIdentities int

	// LastGetTTL and ReleaseAfter are passed to the kinds (see
	// watchcache.KindOptions).
	LastGetTTL   time.Duration
	ReleaseAfter time.Duration

	// Logger receives the source's logs; nil means slog.Default().
	Logger *slog.Logger
}

func (cfg Config) withDefaults() (Config, error) {
	u, err := url.Parse(cfg.Address)
	switch {
	case cfg.Address == "":
		return cfg, invalidf("Config.Address is empty")
	case err != nil:
		return cfg, invalidf("Config.Address %q: %v", cfg.Address, err)
	case u.Scheme != "http" && u.Scheme != "https":
		return cfg, invalidf("Config.Address %q: want http://host:port or https://host:port", cfg.Address)
	case u.Host == "" || u.Port() == "" || strings.ContainsAny(cfg.Address, " \t"):
		return cfg, invalidf("Config.Address %q: want http://host:port or https://host:port", cfg.Address)
	case u.Path != "" && u.Path != "/", u.RawQuery != "":
		return cfg, invalidf("Config.Address %q: want no path or query", cfg.Address)
	case cfg.QueryTimeout < 0, cfg.RequestTimeout < 0, cfg.ReadYourWritesWait < 0, cfg.MaxIdentities < 0, cfg.LastGetTTL < 0:
		return cfg, invalidf("negative duration or bound in Config")
	}
	if cfg.QueryTimeout == 0 {
		cfg.QueryTimeout = DefaultQueryTimeout
	}
	cfg.QueryTimeout = min(cfg.QueryTimeout, 10*time.Minute)
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.ReadYourWritesWait == 0 {
		cfg.ReadYourWritesWait = DefaultReadYourWritesWait
	}
	if cfg.MaxIdentities == 0 {
		cfg.MaxIdentities = DefaultMaxIdentities
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return cfg, nil
}

// Source is a Consul KV server as a cache source. Create one with New; the
// zero value is not usable. Its methods are safe for concurrent use.
type Source struct {
	cfg    Config
	log    *slog.Logger
	base   *url.URL
	http   *http.Client
	cli    *api.Client // the source's own; basic-auth identities get theirs
	secret []byte      // keys the hashes of basic-auth passwords in partitions
	writes kvstore.WriteLog

	mu     sync.Mutex // protects the fields below
	basic  map[string]*basicID
	lru    list.List // basic-auth identities, most recently used first
	closed bool
}

// basicID is basic-auth credentials to pass along.
type basicID struct {
	user, password string
	cli            *api.Client
	elem           *list.Element
}

// New returns a Source for the server at cfg.Address. It does not contact
// the server.
func New(cfg Config) (*Source, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	base, _ := url.Parse(cfg.Address)
	tr := cfg.HTTPTransport
	if tr == nil {
		tr = api.DefaultConfig().Transport
		tr.MaxIdleConnsPerHost = 64
	}
	tls := cfg.TLS
	tls.Address = base.Host
	hc, err := api.NewHttpClient(tr, tls)
	if err != nil {
		return nil, fmt.Errorf("consulkv: TLS: %w", err)
	}
	s := &Source{cfg: cfg, log: cfg.Logger, base: base, http: hc, secret: make([]byte, 32), basic: map[string]*basicID{}}
	if _, err := rand.Read(s.secret); err != nil {
		return nil, fmt.Errorf("consulkv: %w", err)
	}
	if s.cli, err = s.newClient(nil); err != nil {
		return nil, err
	}
	return s, nil
}

// newClient makes a consul/api client on the source's HTTP client, passing
// auth along if set.
func (s *Source) newClient(auth *api.HttpBasicAuth) (*api.Client, error) {
	c := api.DefaultNonPooledConfig()
	c.Address, c.Scheme = s.base.Host, s.base.Scheme
	c.HttpClient = s.http
	c.HttpAuth = auth
	cli, err := api.NewClient(c)
	if err != nil {
		return nil, fmt.Errorf("consulkv: %w", err)
	}
	return cli, nil
}

// Close closes the source's idle connections. Requests made after Close
// fail with kvstore.ErrClosed.
func (s *Source) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return kvstore.ErrClosed
	}
	s.closed = true
	s.http.CloseIdleConnections()
	return nil
}

// Partition prefixes: a token, or basic-auth credentials (the user and a
// keyed hash of the password; the password itself stays in the source).
const (
	tokenPrefix = "consul-token:"
	basicPrefix = "consul-basic:"
)

// identify returns the Partition of credentials.
func (s *Source) identify(c kvstore.Credentials) (watchcache.Partition, error) {
	switch {
	case c.Token != "" && (c.User != "" || c.Password != ""):
		return watchcache.Partition{}, invalidf("both basic auth and a token were given")
	case c.Token != "":
		return watchcache.Partition{Token: tokenPrefix + c.Token}, nil
	case c.User == "" && c.Password == "":
		return watchcache.Partition{}, nil
	}
	m := hmac.New(sha256.New, s.secret)
	m.Write([]byte(c.User))
	m.Write([]byte{0})
	m.Write([]byte(c.Password))
	id := basicPrefix + c.User + ":" + hex.EncodeToString(m.Sum(nil)[:16])
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return watchcache.Partition{}, kvstore.ErrClosed
	}
	if b := s.basic[id]; b != nil {
		s.lru.MoveToFront(b.elem)
		return watchcache.Partition{Token: id}, nil
	}
	cli, err := s.newClient(&api.HttpBasicAuth{Username: c.User, Password: c.Password})
	if err != nil {
		return watchcache.Partition{}, err
	}
	b := &basicID{user: c.User, password: c.Password, cli: cli}
	b.elem = s.lru.PushFront(id)
	s.basic[id] = b
	for s.lru.Len() > s.cfg.MaxIdentities {
		old := s.lru.Back()
		delete(s.basic, old.Value.(string))
		s.lru.Remove(old)
	}
	return watchcache.Partition{Token: id}, nil
}

// ident is how requests for one Partition are made: with a consul/api
// client (its own for basic auth) and a token.
type ident struct {
	cli            *api.Client
	token          string
	user, password string // basic auth, if any
}

// client returns how to make requests for a Partition.
func (s *Source) client(p watchcache.Partition) (ident, error) {
	if p.Datacenter != "" {
		return ident{}, invalidf("partition datacenter %q: the source serves its server's datacenter", p.Datacenter)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return ident{}, kvstore.ErrClosed
	case p.Token == "":
		return ident{cli: s.cli, token: s.cfg.Token}, nil
	case strings.HasPrefix(p.Token, tokenPrefix):
		return ident{cli: s.cli, token: strings.TrimPrefix(p.Token, tokenPrefix)}, nil
	}
	b := s.basic[p.Token]
	if b == nil {
		return ident{}, fmt.Errorf("consulkv: %w", kvstore.ErrUnknownIdentity)
	}
	s.lru.MoveToFront(b.elem)
	return ident{cli: b.cli, user: b.user, password: b.password}, nil
}

// invalidf returns an error wrapping watchcache.ErrInvalid.
func invalidf(format string, args ...any) error {
	return fmt.Errorf("consulkv: %s: %w", fmt.Sprintf(format, args...), watchcache.ErrInvalid)
}

// classify describes err, from the server or from reaching it, for op:
// access errors wrap kvstore's sentinels and, with fatal, watchcache.Fatal.
func classify(op string, err error, fatal bool) error {
	if err == nil {
		return nil
	}
	var se api.StatusError
	if !errors.As(err, &se) {
		return fmt.Errorf("consulkv: %s: %w", op, err)
	}
	body := strings.TrimSpace(se.Body)
	var out error
	switch {
	case se.Code == http.StatusForbidden && strings.Contains(body, "ACL not found"):
		out = fmt.Errorf("consulkv: %s: %s: %w", op, body, kvstore.ErrAuthFailed)
	case se.Code == http.StatusForbidden, se.Code == http.StatusUnauthorized:
		out = fmt.Errorf("consulkv: %s: %s: %w", op, body, kvstore.ErrPermissionDenied)
	case se.Code == http.StatusBadRequest:
		out = fmt.Errorf("consulkv: %s: the server refused the request (400 %s): %w", op, body, watchcache.ErrInvalid)
	default:
		return fmt.Errorf("consulkv: %s: the server answered %d: %s", op, se.Code, body)
	}
	if fatal {
		return watchcache.Fatal(out)
	}
	return out
}
