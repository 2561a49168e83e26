package etcdkv

import (
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/etcdtest"
	"github.com/watchcache/watchcache/internal/tlstest"
)

// Endpoints are checked before anything connects: a bad one is an
// ErrInvalid that names it, and so are lists that mix TLS and plain
// endpoints, which the etcd client would silently connect to alike.
func TestValidateEndpoints(t *testing.T) {
	for _, tc := range []struct {
		eps  []string
		tls  bool
		want string // "" for valid
	}{
		{[]string{"http://127.0.0.1:2379", "http://[::1]:2379", "etcd-0.example:2379"}, false, ""},
		{[]string{"https://etcd-0:2379", "https://etcd-1:2379/"}, false, ""},
		{[]string{"https://etcd-0:2379", "etcd-1:2379"}, true, ""},
		{[]string{"unix:///run/etcd.sock"}, false, ""},
		{[]string{"unix:/run/etcd.sock", "unix:etcd.sock"}, false, ""},
		{[]string{"unixs:/run/etcd.sock"}, true, ""},
		{[]string{"unix:"}, false, "no socket path"},
		{nil, false, "no endpoints"},
		{[]string{""}, false, "empty"},
		{[]string{"http://a:2379 http://b:2379"}, false, "contains a space"},
		{[]string{"a:2379\tb:2379"}, false, "contains a space"},
		{[]string{"ftp://a:2379"}, false, `scheme "ftp"`},
		{[]string{"http://a"}, false, "not host:port"},
		{[]string{"a"}, false, "not host:port"},
		{[]string{"http://:2379"}, false, "no host"},
		{[]string{"http://a:0"}, false, `port "0"`},
		{[]string{"http://a:70000"}, false, `port "70000"`},
		{[]string{"http://a:port"}, false, `invalid port ":port"`},
		{[]string{"http://a:2379/v3"}, false, "only a scheme and host:port"},
		{[]string{"http://u:p@a:2379"}, false, "only a scheme and host:port"},
		{[]string{"unix://"}, false, "no socket path"},
		{[]string{"https://a:2379", "http://b:2379"}, false, "one uses TLS and the other does not"},
		{[]string{"a:2379", "https://b:2379"}, false, "one uses TLS and the other does not"},
		{[]string{"http://a:2379"}, true, "plain http, but TLS is configured"},
	} {
		err := ValidateEndpoints(tc.eps, tc.tls)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("ValidateEndpoints(%q, tls %v) = %v, want nil", tc.eps, tc.tls, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, watchcache.ErrInvalid)):
			t.Errorf("ValidateEndpoints(%q, tls %v) = %v, want an ErrInvalid saying %q", tc.eps, tc.tls, err, tc.want)
		}
	}
	if _, err := New(Config{Endpoints: []string{"http://a:2379, http://b:2379"}}); !errors.Is(err, watchcache.ErrInvalid) {
		t.Errorf("New with a space in an endpoint: %v, want ErrInvalid", err)
	}
}

// closedAddr returns a loopback host:port nothing listens on.
func closedAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// An etcd that does not answer fails Health with the real cause, endpoint
// by endpoint, not the client's "context deadline exceeded"; New succeeds
// meanwhile, own credentials or not.
func TestHealthSaysWhy(t *testing.T) {
	for _, tc := range []struct {
		name string
		eps  []string
		want []string
	}{
		{"refused", []string{"http://" + closedAddr(t)}, []string{"connection refused"}},
		{"no such host", []string{"http://no-such-host.invalid:2379"}, []string{"no-such-host.invalid", "no such host"}},
		{"each endpoint", []string{"http://" + closedAddr(t), "http://no-such-host.invalid:2379"}, []string{"connection refused", "no such host"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, err := New(Config{Endpoints: tc.eps, Username: "agent", Password: "pw",
				DialTimeout: 2 * time.Second, RequestTimeout: time.Second, Logger: logger()})
			if err != nil {
				t.Fatalf("New with an unreachable etcd: %v", err)
			}
			defer src.Close()
			_, err = src.Health(testCtx(t))
			if err == nil {
				t.Fatal("Health of an unreachable etcd succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Health error does not say %q: %v", w, err)
				}
			}
		})
	}
}

// The source talks TLS to an etcd that requires client certificates, given
// the CA and a client certificate; each thing missing or wrong is named by
// Health.
func TestTLS(t *testing.T) {
	ca := tlstest.NewCA(t, "etcd-ca")
	srv := ca.Server("etcd")
	client := ca.Client("agent")
	other := tlstest.NewCA(t, "other-ca")
	c := etcdtest.Start(t, etcdtest.WithClientTLS(transport.TLSInfo{
		CertFile: srv.CertFile, KeyFile: srv.KeyFile, TrustedCAFile: ca.CertFile, ClientCertAuth: true,
	}, ca.ClientConfig(&client)))
	ep := c.Endpoint(0)
	if !strings.HasPrefix(ep, "https://") {
		t.Fatalf("endpoint %q", ep)
	}
	cfg := testConfig(c, 1)
	cfg.TLS = ca.ClientConfig(&client)
	f := newFixture(t, cfg, watchcache.Options{})
	if _, err := f.src.Put(testCtx(t), watchcache.Partition{}, "tls/k", []byte("v")); err != nil {
		t.Fatalf("Put over TLS: %v", err)
	}
	if k, _ := getKey(t, f, KeyRequest("tls/k", self)); string(k.Entry.Value) != "v" {
		t.Fatalf("Get over TLS = %+v", k)
	}
	if _, err := f.src.Health(testCtx(t)); err != nil {
		t.Fatalf("Health over TLS: %v", err)
	}

	for _, tc := range []struct {
		name string
		eps  []string
		cfg  func(*Config)
		want string
	}{
		{"plain http to a TLS server", []string{strings.Replace(ep, "https://", "http://", 1)}, nil, "does it serve TLS? use https://"},
		{"no client certificate", []string{ep}, func(cfg *Config) { cfg.TLS = ca.ClientConfig(nil) }, "certificate required"},
		{"server CA not trusted", []string{ep}, func(cfg *Config) { cfg.TLS = other.ClientConfig(&client) }, "certificate signed by unknown authority"},
		{"system CAs", []string{ep}, nil, "certificate signed by unknown authority"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Endpoints: tc.eps, DialTimeout: 2 * time.Second, RequestTimeout: time.Second, Logger: logger()}
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			src, err := New(cfg)
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			defer src.Close()
			if _, err := src.Health(testCtx(t)); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Health = %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

// The source's own credentials: refused ones fail New; an etcd that does
// not answer yet does not, and the source logs in once it answers. Without
// them, Health says that etcd's auth wants them.
func TestOwnIdentityWhenEtcdComesBack(t *testing.T) {
	c := etcdtest.Start(t)
	c.EnableAuth(t, []etcdtest.User{{Name: "agent", Password: "agent-pw",
		Roles: []etcdtest.Role{{Name: "all", Prefix: "", Perm: etcdtest.PermReadWrite}}}})
	cfg := testConfig(c, 1)
	anon := newFixture(t, cfg, watchcache.Options{})
	if _, err := anon.src.Health(testCtx(t)); err == nil || !strings.Contains(err.Error(), "give the source its own") {
		t.Fatalf("Health of an anonymous source with auth on = %v, want advice to give it a user", err)
	}
	cfg.Username, cfg.Password = "agent", "wrong"
	if src, err := New(cfg); !errors.Is(err, ErrAuthFailed) {
		if err == nil {
			src.Close()
		}
		t.Fatalf("New with a wrong password: %v, want ErrAuthFailed", err)
	}

	c.StopMember(0)
	cfg.Password = "agent-pw"
	f := newFixture(t, cfg, watchcache.Options{})
	if _, err := f.src.Health(testCtx(t)); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("Health with etcd stopped = %v, want connection refused", err)
	}
	c.RestartMember(t, 0)
	if _, err := f.src.Put(testCtx(t), self, "k", []byte("v")); err != nil {
		t.Fatalf("Put as the own identity after etcd came back: %v", err)
	}
	if _, err := f.src.Health(testCtx(t)); err != nil {
		t.Fatalf("Health after etcd came back: %v", err)
	}
	// The diagnosis asks anonymously; a member that refuses that (auth is
	// on) still answers, so it must not be reported as down.
	if err := f.src.diagnose(testCtx(t)); err != nil {
		t.Fatalf("diagnose of a reachable etcd with auth on: %v", err)
	}
}

// No endpoint list makes validation panic, and a list it accepts has no
// spaces, only known schemes, and a port wherever a host is given.
func FuzzValidateEndpoints(f *testing.F) {
	f.Add("http://127.0.0.1:2379,https://[::1]:2379", false)
	f.Add("a:1", true)
	f.Add("unix:///x", false)
	f.Add("http://a:2379 http://b:2379", false)
	f.Add("http://%zz:1", false)
	f.Fuzz(func(t *testing.T, list string, tlsConfigured bool) {
		eps := strings.Split(list, ",")
		if ValidateEndpoints(eps, tlsConfigured) != nil {
			return
		}
		for _, ep := range eps {
			p, err := parseEndpoint(ep)
			if err != nil || strings.ContainsAny(ep, " \t\n") {
				t.Fatalf("accepted %q: %+v, %v", ep, p, err)
			}
			if p.scheme != "unix" && p.scheme != "unixs" {
				if _, port, err := net.SplitHostPort(p.addr); err != nil || port == "" {
					t.Fatalf("accepted %q without host:port (%q)", ep, p.addr)
				}
			}
		}
	})
}
