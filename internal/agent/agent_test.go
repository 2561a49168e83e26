package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/etcdkv"
	"github.com/watchcache/watchcache/internal/etcdtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitFor bounds every wait of a test on etcd, the agent or a client.
const waitFor = 30 * time.Second

func testLogger() *slog.Logger {
	if os.Getenv("WATCHCACHE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// testAgent is a real agent listening on a loopback port in front of a
// real embedded etcd.
type testAgent struct {
	*Agent
	etcd   *etcdtest.Cluster // nil in front of a memstore
	addr   string            // host:port
	url    string            // http://host:port
	client *http.Client      // for do and sse

	// dial, if set, connects to the agent (in-memory pipes, for tests in
	// a synctest bubble); otherwise clients dial addr.
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// startAgent starts etcd and an agent on it; both stop when the test ends.
func startAgent(t testing.TB, mod ...func(*etcdConfig)) *testAgent {
	t.Helper()
	return startAgentOn(t, etcdtest.Start(t), mod...)
}

// etcdConfig is how the agent's tests connect to etcd: short timers, and
// prompt reconnects after a member restarts.
type etcdConfig struct {
	etcdkv.Config
	Tokens map[string]etcdkv.TokenUser
	Cache  watchcache.Options
}

// startAgentOn starts an agent in front of c; it stops when the test ends.
func startAgentOn(t testing.TB, c *etcdtest.Cluster, mod ...func(*etcdConfig)) *testAgent {
	t.Helper()
	cfg := etcdConfig{Config: etcdkv.Config{
		Endpoints:          c.Endpoints(),
		Logger:             testLogger(),
		ResetCheckInterval: 500 * time.Millisecond,
		RequestTimeout:     2 * time.Second,
		// Reconnect promptly after a member restarts (gRPC's default
		// backoff grows from 1s to minutes).
		ConfigureClient: func(cc *clientv3.Config) {
			cc.DialOptions = append(cc.DialOptions, grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
				MinConnectTimeout: 5 * time.Second,
			}))
		},
	}}
	for _, m := range mod {
		m(&cfg)
	}
	src, err := etcdkv.New(cfg.Config)
	if err != nil {
		t.Fatalf("etcdkv.New: %v", err)
	}
	reg := NewRegistry()
	cfg.Cache.Logger, cfg.Cache.Registerer = testLogger(), reg
	cache, err := watchcache.New(cfg.Cache)
	if err != nil {
		t.Fatal(err)
	}
	kinds, err := src.Register(cache)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cache.Close()
		if err := src.Close(); err != nil {
			t.Errorf("Source.Close: %v", err)
		}
	})
	return serveAgent(t, Config{
		Store:             etcdkv.NewStore(src, kinds, cfg.Tokens),
		Cache:             cache,
		Registry:          reg,
		Logger:            testLogger(),
		HeartbeatInterval: time.Second,
		WriteTimeout:      2 * time.Second,
	}, c)
}

// serveAgent starts an agent with cfg on a loopback port; it stops when
// the test ends (before the store's cleanups, registered earlier, run).
func serveAgent(t testing.TB, cfg Config, c *etcdtest.Cluster) *testAgent {
	t.Helper()
	a, err := New(cfg)
	if err != nil {
		t.Fatalf("agent.New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- a.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		if err := a.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	addr := ln.Addr().String()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections) // runs first: cleanups run last-in first-out
	return &testAgent{Agent: a, etcd: c, addr: addr, url: "http://" + addr, client: &http.Client{Transport: tr}}
}

// consul returns a consul/api client of the agent; mod adjusts its config.
func (ta *testAgent) consul(t testing.TB, mod ...func(*api.Config)) *api.Client {
	t.Helper()
	cfg := api.DefaultConfig()
	cfg.Address = ta.addr
	cfg.Transport = &http.Transport{DialContext: ta.dial}
	for _, m := range mod {
		m(cfg)
	}
	cli, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cfg.Transport.CloseIdleConnections)
	return cli
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	t.Cleanup(cancel)
	return ctx
}
