package main

import (
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/watchcache/watchcache/etcdkv"
	"github.com/watchcache/watchcache/internal/tlstest"
)

// defaultsWith returns the agent's default options changed by mod.
func defaultsWith(mod func(*agentOptions)) agentOptions {
	o := agentOptions{
		httpAddr:        "127.0.0.1:8500",
		devEtcdAddr:     "127.0.0.1:2379",
		logLevel:        slog.LevelInfo,
		datacenter:      "dc1",
		shutdownTimeout: 30 * time.Second,
		maxIdentities:   1000,
		authCheck:       time.Second,
		releaseAfter:    10 * time.Minute,
	}
	mod(&o)
	return o
}

// The agent's options come from flags, then from WATCHCACHE_* variables
// for the flags the command line left alone; defaults are safe (loopback,
// Consul's and etcd's usual ports).
func TestAgentOptions(t *testing.T) {
	tokensFile := filepath.Join(t.TempDir(), "tokens.json")
	if err := os.WriteFile(tokensFile, []byte(`{"tokens": [{"token": "t1", "user": "alice", "password": "pw"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want agentOptions
	}{
		{"dev defaults", []string{"-dev"}, nil, defaultsWith(func(o *agentOptions) { o.dev = true })},
		{"etcd", []string{"-etcd", " http://10.0.0.1:2379, 10.0.0.2:2379 ,,"}, nil, defaultsWith(func(o *agentOptions) {
			o.etcd = []string{"http://10.0.0.1:2379", "10.0.0.2:2379"}
		})},
		{"every flag", []string{"-dev", "-http-addr", "0.0.0.0:9500", "-dev-etcd-addr", "127.0.0.1:12379",
			"-etcd-username", "agent", "-etcd-password", "pw", "-tokens", tokensFile, "-log-level", "DEBUG",
			"-entry-fetch-rate", "2.5", "-entry-fetch-burst", "4", "-max-entries", "1000", "-datacenter", "eu1",
			"-shutdown-timeout", "5s", "-max-identities", "50", "-access-check", "bounded", "-auth-check-interval", "250ms", "-release-after", "0"}, nil,
			defaultsWith(func(o *agentOptions) {
				o.dev, o.httpAddr, o.devEtcdAddr = true, "0.0.0.0:9500", "127.0.0.1:12379"
				o.etcdUsername, o.etcdPassword = "agent", "pw"
				o.tokensFile, o.tokens = tokensFile, map[string]etcdkv.TokenUser{"t1": {User: "alice", Password: "pw"}}
				o.logLevel, o.entryFetchRate, o.entryFetchBurst, o.maxEntries = slog.LevelDebug, 2.5, 4, 1000
				o.datacenter, o.shutdownTimeout = "eu1", 5*time.Second
				o.maxIdentities, o.accessCheck, o.authCheck = 50, etcdkv.AccessCheckBounded, 250*time.Millisecond
				o.releaseAfter = 0
			})},
		{"every variable", nil, map[string]string{
			"WATCHCACHE_ETCD": "a:2379,b:2379", "WATCHCACHE_HTTP_ADDR": "127.0.0.1:9500",
			"WATCHCACHE_ETCD_USERNAME": "agent", "WATCHCACHE_ETCD_PASSWORD": "pw", "WATCHCACHE_TOKENS": tokensFile,
			"WATCHCACHE_LOG_LEVEL": "warn", "WATCHCACHE_ENTRY_FETCH_RATE": "10", "WATCHCACHE_ENTRY_FETCH_BURST": "3",
			"WATCHCACHE_MAX_ENTRIES": "7", "WATCHCACHE_DATACENTER": "us2", "WATCHCACHE_SHUTDOWN_TIMEOUT": "1m",
			"WATCHCACHE_RELEASE_AFTER": "1h",
		}, defaultsWith(func(o *agentOptions) {
			o.releaseAfter = time.Hour
			o.etcd, o.httpAddr = []string{"a:2379", "b:2379"}, "127.0.0.1:9500"
			o.etcdUsername, o.etcdPassword = "agent", "pw"
			o.tokensFile, o.tokens = tokensFile, map[string]etcdkv.TokenUser{"t1": {User: "alice", Password: "pw"}}
			o.logLevel, o.entryFetchRate, o.entryFetchBurst, o.maxEntries = slog.LevelWarn, 10, 3, 7
			o.datacenter, o.shutdownTimeout = "us2", time.Minute
		})},
		{"http address as a URL, as the clients take it", []string{"-dev"}, map[string]string{"WATCHCACHE_HTTP_ADDR": "http://127.0.0.1:9500"},
			defaultsWith(func(o *agentOptions) { o.dev, o.httpAddr, o.httpScheme = true, "127.0.0.1:9500", "http" })},
		{"dev from the environment", nil, map[string]string{"WATCHCACHE_DEV": "true", "WATCHCACHE_DEV_ETCD_ADDR": "127.0.0.1:3379"},
			defaultsWith(func(o *agentOptions) { o.dev, o.devEtcdAddr = true, "127.0.0.1:3379" })},
		{"flags win over variables", []string{"-dev", "-http-addr", "127.0.0.1:1", "-log-level", "error", "-entry-fetch-rate", "0"},
			map[string]string{"WATCHCACHE_HTTP_ADDR": "127.0.0.1:2", "WATCHCACHE_LOG_LEVEL": "debug", "WATCHCACHE_ENTRY_FETCH_RATE": "-5"},
			defaultsWith(func(o *agentOptions) { o.dev, o.httpAddr, o.logLevel = true, "127.0.0.1:1", slog.LevelError })},
		{"a flag wins over a bad variable", []string{"-etcd", "x:1", "-dev=false"}, map[string]string{"WATCHCACHE_DEV": "maybe"},
			defaultsWith(func(o *agentOptions) { o.etcd = []string{"x:1"} })},
		{"empty variables are unset", []string{"-dev"}, map[string]string{"WATCHCACHE_LOG_LEVEL": "", "WATCHCACHE_ETCD": ""},
			defaultsWith(func(o *agentOptions) { o.dev = true })},
		{"false dev from the environment with -etcd", []string{"-etcd", "x:1"}, map[string]string{"WATCHCACHE_DEV": "false"},
			defaultsWith(func(o *agentOptions) { o.etcd = []string{"x:1"} })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr strings.Builder
			got, code, ok := parseAgentOptions(tc.args, io.Discard, &stderr, env(tc.env))
			if !ok {
				t.Fatalf("parse: status %d: %s", code, stderr.String())
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("options\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// A bad flag, variable or combination stops the agent before it starts
// anything, with status 2 and a message that names the culprit.
func TestAgentOptionErrors(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	badTokens := filepath.Join(t.TempDir(), "tokens.json")
	if err := os.WriteFile(badTokens, []byte(`{"tokens": [{"token": "t1"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want []string // in stderr
	}{
		{"no store", nil, nil, []string{"no store: give -dev", "-etcd host:port", "-consul http://host:8500"}},
		{"dev and etcd", []string{"-dev", "-etcd", "x:1"}, nil, []string{"give one of -dev, -etcd and -consul"}},
		{"dev from env and etcd", []string{"-etcd", "x:1"}, map[string]string{"WATCHCACHE_DEV": "1"}, []string{"give one of WATCHCACHE_DEV, -etcd and -consul"}},
		{"negative rate", []string{"-dev", "-entry-fetch-rate", "-1"}, nil, []string{`invalid value "-1" for flag -entry-fetch-rate: must not be negative`}},
		{"rate not a number", []string{"-dev", "-entry-fetch-rate", "fast"}, nil, []string{"-entry-fetch-rate", "not a number"}},
		{"rate NaN", []string{"-dev", "-entry-fetch-rate", "NaN"}, nil, []string{"-entry-fetch-rate", "not a number"}},
		{"rate infinite", []string{"-dev", "-entry-fetch-rate", "+Inf"}, nil, []string{"-entry-fetch-rate", "not a number"}},
		{"burst not an integer", []string{"-dev", "-entry-fetch-burst", "1.5"}, nil, []string{"-entry-fetch-burst", "not an integer"}},
		{"negative max entries", []string{"-dev", "-max-entries", "-3"}, nil, []string{"-max-entries", "must not be negative"}},
		{"unknown access check", []string{"-dev", "-access-check", "lax"}, nil, []string{"-access-check", "want strict or bounded"}},
		{"auth check interval over 1s", []string{"-dev", "-auth-check-interval", "5s"}, nil, []string{"-auth-check-interval", "must be at most 1s"}},
		{"bad log level", []string{"-dev", "-log-level", "loud"}, nil, []string{"-log-level", "debug, info, warn or error"}},
		{"duration without unit", []string{"-dev", "-shutdown-timeout", "10"}, nil, []string{"-shutdown-timeout", "not a duration"}},
		{"zero duration", []string{"-dev", "-shutdown-timeout", "0s"}, nil, []string{"-shutdown-timeout", "must be positive"}},
		{"negative release-after", []string{"-dev", "-release-after", "-5m"}, nil, []string{"-release-after", "must be positive, or 0 for never"}},
		{"http addr without port", []string{"-dev", "-http-addr", "localhost"}, nil, []string{"-http-addr", "not host:port"}},
		{"http port out of range", []string{"-dev", "-http-addr", "127.0.0.1:99999"}, nil, []string{"-http-addr", `port "99999"`}},
		{"https address without a certificate", []string{"-dev", "-http-addr", "https://127.0.0.1:8501"}, nil, []string{"-http-addr is https://: give -tls-cert and -tls-key"}},
		{"http address with a certificate", []string{"-dev", "-http-addr", "http://127.0.0.1:8501", "-tls-cert", "c.pem", "-tls-key", "k.pem"}, nil, []string{"-http-addr is http://, but -tls-cert serves HTTPS"}},
		{"certificate without key", []string{"-dev", "-tls-cert", "c.pem"}, nil, []string{"-tls-cert and -tls-key go together"}},
		{"client CA without certificate", []string{"-dev", "-tls-client-ca", "ca.pem"}, nil, []string{"-tls-client-ca needs -tls-cert"}},
		{"missing certificate file", []string{"-dev", "-tls-cert", "/nonexistent/c.pem", "-tls-key", "/nonexistent/k.pem"}, nil, []string{"HTTPS", "/nonexistent/c.pem", "no such file"}},
		{"etcd TLS without etcd", []string{"-dev", "-etcd-cacert", "ca.pem"}, nil, []string{"-etcd-cacert, -etcd-cert and -etcd-key are for -etcd"}},
		{"etcd cert without key", []string{"-etcd", "https://x:2379", "-etcd-cert", "c.pem"}, nil, []string{"-etcd-cert and -etcd-key go together"}},
		{"missing etcd CA file", []string{"-etcd", "https://x:2379", "-etcd-cacert", "/nonexistent/ca.pem"}, nil, []string{"etcd TLS", "/nonexistent/ca.pem"}},
		{"not a CA file", []string{"-etcd", "https://x:2379", "-etcd-cacert", badTokens}, nil, []string{"etcd TLS", "no PEM certificate"}},
		{"etcd endpoints separated by a space", []string{"-etcd", "http://a:2379 http://b:2379"}, nil, []string{"-etcd", `endpoint "http://a:2379 http://b:2379": contains a space`}},
		{"etcd endpoint without a port", []string{"-etcd", "http://a"}, nil, []string{"-etcd", `endpoint "http://a": not host:port`}},
		{"etcd endpoint scheme", []string{"-etcd", "tcp://a:2379"}, nil, []string{"-etcd", `scheme "tcp"`}},
		{"plain etcd with TLS", []string{"-etcd", "http://a:2379", "-etcd-cacert", ca.CertFile}, nil, []string{"-etcd", "plain http, but TLS is configured"}},
		{"URL without port", []string{"-dev", "-http-addr", "http://localhost"}, nil, []string{"-http-addr", "not host:port"}},
		{"bad dev etcd addr", []string{"-dev", "-dev-etcd-addr", "2379"}, nil, []string{"-dev-etcd-addr", "not host:port"}},
		{"empty etcd list", []string{"-etcd", " , "}, nil, []string{"-etcd", "empty list"}},
		{"unknown flag", []string{"-dev", "-zookeeper", "x"}, nil, []string{"flag provided but not defined: -zookeeper"}},
		{"dev and consul", []string{"-dev", "-consul", "http://c:8500"}, nil, []string{"give one of -dev, -etcd and -consul"}},
		{"etcd and consul", []string{"-etcd", "x:1", "-consul", "http://c:8500"}, nil, []string{"give one of -dev, -etcd and -consul"}},
		{"consul without a scheme", []string{"-consul", "c:8500"}, nil, []string{"-consul", "want http://host:port"}},
		{"consul without a port", []string{"-consul", "http://c"}, nil, []string{"-consul", "want http://host:port"}},
		{"consul with a path", []string{"-consul", "http://c:8500/v1"}, nil, []string{"-consul", "without a path"}},
		{"consul token without consul", []string{"-dev", "-consul-token", "t"}, nil, []string{"are for -consul"}},
		{"consul cert without key", []string{"-consul", "https://c:8501", "-consul-cert", "c.pem"}, nil, []string{"-consul-cert and -consul-key go together"}},
		{"tokens file with consul", []string{"-consul", "http://c:8500", "-tokens", "tokens.json"}, nil, []string{"-tokens maps tokens to etcd users"}},
		{"argument", []string{"-dev", "now"}, nil, []string{`unexpected argument "now"`}},
		{"dev etcd addr without dev", []string{"-etcd", "x:1", "-dev-etcd-addr", "127.0.0.1:1"}, nil, []string{"-dev-etcd-addr is for -dev"}},
		{"empty datacenter", []string{"-dev", "-datacenter", ""}, nil, []string{"-datacenter is empty"}},
		{"missing tokens file", []string{"-dev", "-tokens", "/nonexistent/tokens.json"}, nil, []string{"-tokens", "no such file"}},
		{"bad tokens file", []string{"-dev", "-tokens", badTokens}, nil, []string{"-tokens", "token without a user"}},
		{"negative rate variable", []string{"-dev"}, map[string]string{"WATCHCACHE_ENTRY_FETCH_RATE": "-2"},
			[]string{`invalid value "-2" for WATCHCACHE_ENTRY_FETCH_RATE (-entry-fetch-rate): must not be negative`}},
		{"bad bool variable", nil, map[string]string{"WATCHCACHE_DEV": "yes"}, []string{`invalid value "yes" for WATCHCACHE_DEV (-dev)`}},
		{"bad level variable", []string{"-dev"}, map[string]string{"WATCHCACHE_LOG_LEVEL": "verbose"}, []string{"WATCHCACHE_LOG_LEVEL", "debug, info, warn or error"}},
		{"bad duration variable", []string{"-dev"}, map[string]string{"WATCHCACHE_SHUTDOWN_TIMEOUT": "forever"}, []string{"WATCHCACHE_SHUTDOWN_TIMEOUT", "not a duration"}},
		{"bad number variable", []string{"-dev"}, map[string]string{"WATCHCACHE_MAX_ENTRIES": "many"}, []string{"WATCHCACHE_MAX_ENTRIES", "not an integer"}},
		{"bad address variable", []string{"-dev"}, map[string]string{"WATCHCACHE_HTTP_ADDR": "8500"}, []string{"WATCHCACHE_HTTP_ADDR", "not host:port"}},
		{"tokens variable", []string{"-dev"}, map[string]string{"WATCHCACHE_TOKENS": "/nonexistent"}, []string{"WATCHCACHE_TOKENS:", "no such file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCmd(t, env(tc.env), append([]string{"agent"}, tc.args...)...)
			if code != exitUsage || stdout != "" {
				t.Fatalf("status %d, stdout %q, stderr:\n%s\nwant status %d and no output", code, stdout, stderr, exitUsage)
			}
			for _, want := range tc.want {
				if !strings.Contains(stderr, want) {
					t.Errorf("stderr does not say %q:\n%s", want, stderr)
				}
			}
			if !strings.Contains(stderr, "Run 'watchcache agent -h' for usage.") {
				t.Errorf("stderr does not point to -h:\n%s", stderr)
			}
		})
	}
}

// An HTTP port in use is reported before etcd starts, with status 1.
func TestAgentHTTPPortInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	code, _, stderr := runCmd(t, env(nil), "agent", "-dev", "-http-addr", l.Addr().String(), "-dev-etcd-addr", freeAddr(t))
	if code != exitError || !strings.Contains(stderr, "Error! HTTP API: listen tcp "+l.Addr().String()) {
		t.Fatalf("status %d, stderr:\n%s\nwant 1 and the listen error", code, stderr)
	}
}

// An etcd client port in use fails the dev agent with status 1, and what
// it started (the HTTP listener, etcd's temporary directory) is released.
func TestAgentDevEtcdPortInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	httpAddr := freeAddr(t)
	code, stdout, stderr := runCmd(t, env(nil), "agent", "-dev", "-http-addr", httpAddr, "-dev-etcd-addr", l.Addr().String(), "-log-level", "error")
	if code != exitError || !strings.Contains(stderr, "Error! devetcd: starting etcd on "+l.Addr().String()) || stdout != "" {
		t.Fatalf("status %d, stdout %q, stderr:\n%s\nwant 1 and etcd's error", code, stdout, stderr)
	}
	if l2, err := net.Listen("tcp", httpAddr); err != nil {
		t.Errorf("the HTTP port is still taken: %v", err)
	} else {
		l2.Close()
	}
}
