package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/watchcache/watchcache/consulkv"
	"github.com/watchcache/watchcache/etcdkv"
	"github.com/watchcache/watchcache/internal/agent"
	"github.com/watchcache/watchcache/internal/etcdtest"
)

func TestMain(m *testing.M) {
	etcdtest.RunChildIfAsked() // the etcd of BenchmarkAgentRead
	goleak.VerifyTestMain(m)
}

// waitFor bounds every wait of a test.
const waitFor = 30 * time.Second

func logger() *slog.Logger {
	if os.Getenv("WATCHCACHE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// node is an agent serving an upstream on a listener.
type node struct {
	agent  *agent.Agent
	up     *Upstream
	url    string
	served chan error
	once   sync.Once
}

// serve starts an agent for up on ln; it stops when the test ends, or
// earlier with stop.
func serve(t testing.TB, up *Upstream, ln net.Listener) *node {
	t.Helper()
	a, err := agent.New(agent.Config{Store: up.Store, Cache: up.Cache, Registry: up.Registry, Logger: logger()})
	if err != nil {
		t.Fatal(err)
	}
	n := &node{agent: a, up: up, url: "http://" + ln.Addr().String(), served: make(chan error, 1)}
	go func() { n.served <- a.Serve(ln) }()
	t.Cleanup(func() { n.stop(t) })
	return n
}

func (n *node) stop(t testing.TB) {
	n.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		if err := n.agent.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-n.served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
		if err := n.up.Close(); err != nil {
			t.Errorf("closing the upstream: %v", err)
		}
	})
}

func listen(t testing.TB, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// etcdNode is an agent in front of c (the bottom of a chain).
func etcdNode(t testing.TB, c *etcdtest.Cluster) *node {
	t.Helper()
	return etcdNodeAt(t, c.Endpoints())
}

// etcdNodeAt is an agent in front of the etcd at endpoints.
func etcdNodeAt(t testing.TB, endpoints []string) *node {
	t.Helper()
	up, err := OpenEtcd(etcdkv.Config{Endpoints: endpoints, Logger: logger()}, nil, CacheConfig{Logger: logger()})
	if err != nil {
		t.Fatal(err)
	}
	return serve(t, up, listen(t, "127.0.0.1:0"))
}

// consulNode is an agent in front of the agent at upstreamURL, on ln.
func consulNode(t testing.TB, upstreamURL string, ln net.Listener) *node {
	t.Helper()
	up, err := OpenConsul(consulkv.Config{Address: upstreamURL, QueryTimeout: time.Minute, Logger: logger()}, CacheConfig{Logger: logger()})
	if err != nil {
		t.Fatal(err)
	}
	return serve(t, up, ln)
}

// blockingQueries returns the blocking queries waiting in the agent at url
// (its /v1/status).
func blockingQueries(t testing.TB, url string) int64 {
	t.Helper()
	return blockingQueriesVia(t, http.DefaultClient, url)
}

// blockingQueriesVia is blockingQueries through hc.
func blockingQueriesVia(t testing.TB, hc *http.Client, url string) int64 {
	t.Helper()
	resp, err := hc.Get(url + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct {
		Blocking int64 `json:"blocking_queries"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st.Blocking
}

// etcdWatches reads the embedded etcd's own gauge of the watchers it
// holds: the agents are etcd's only watchers in this process.
func etcdWatches(t testing.TB) int {
	t.Helper()
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "etcd_debugging_mvcc_watcher_total" {
			return int(mf.GetMetric()[0].GetGauge().GetValue())
		}
	}
	t.Fatal("etcd_debugging_mvcc_watcher_total not found")
	return 0
}

// eventually polls cond, which offers no notification, until it holds.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v", what, waitFor)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Three agents in a chain, edge -> regional -> an agent on etcd: 1,000
// blocking clients on the edge cost one blocking query from edge to
// regional, one from regional to the bottom and one etcd watch; a change
// at the bottom reaches every edge client; a write at the edge reaches
// etcd and is read back at the edge at once; and the regional agent
// restarted on a fresh store is a reset at the edge, whose clients follow
// the new state.
func TestChainedAgents(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	if _, err := cli.Put(context.Background(), "cfg", "v1"); err != nil {
		t.Fatal(err)
	}
	bottom := etcdNode(t, c)
	regionalLn := listen(t, "127.0.0.1:0")
	regionalAddr := regionalLn.Addr().String()
	regional := consulNode(t, bottom.url, regionalLn)
	edge := consulNode(t, regional.url, listen(t, "127.0.0.1:0"))

	tr := &http.Transport{MaxIdleConnsPerHost: 2000}
	defer tr.CloseIdleConnections()
	cfg := api.DefaultConfig()
	cfg.Address, cfg.Transport = strings.TrimPrefix(edge.url, "http://"), tr
	edgeClient, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	kv := edgeClient.KV()
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitFor)
	defer cancel()
	// Health checks at the edge see the store's leader and members,
	// passed along by each agent of the chain.
	if leader, err := edgeClient.Status().Leader(); err != nil || leader != c.PeerAddr(0) {
		t.Fatalf("Leader() at the edge = %q, %v; want etcd's %q", leader, err, c.PeerAddr(0))
	}
	if peers, err := edgeClient.Status().Peers(); err != nil || len(peers) != 1 || peers[0] != c.PeerAddr(0) {
		t.Fatalf("Peers() at the edge = %q, %v; want [%q]", peers, err, c.PeerAddr(0))
	}
	p, meta, err := kv.Get("cfg", (&api.QueryOptions{}).WithContext(ctx))
	if err != nil || p == nil || string(p.Value) != "v1" {
		t.Fatalf("Get at the edge = %+v, %v", p, err)
	}

	const clients = 1000
	answers := make(chan string, clients)
	for range clients {
		go func() {
			p, _, err := kv.Get("cfg", (&api.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: time.Minute}).WithContext(ctx))
			switch {
			case err != nil:
				answers <- err.Error()
			case p == nil:
				answers <- "<missing>"
			default:
				answers <- string(p.Value)
			}
		}()
	}
	eventually(t, "1,000 clients blocked at the edge", func() bool { return blockingQueries(t, edge.url) == clients })
	if n := blockingQueries(t, regional.url); n != 1 {
		t.Fatalf("blocking queries at the regional agent = %d, want 1 (the edge's)", n)
	}
	if n := blockingQueries(t, bottom.url); n != 1 {
		t.Fatalf("blocking queries at the bottom agent = %d, want 1 (the regional's)", n)
	}
	if n := etcdWatches(t); n != 1 {
		t.Fatalf("etcd watches = %d, want 1 (the bottom agent's)", n)
	}
	if _, err := cli.Put(ctx, "cfg", "v2"); err != nil {
		t.Fatal(err)
	}
	for range clients {
		if v := <-answers; v != "v2" {
			t.Fatalf("an edge client got %q, want v2", v)
		}
	}

	// A write at the edge reaches etcd and is read back at the edge at once.
	if _, err := kv.Put(&api.KVPair{Key: "from-edge", Value: []byte("w")}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		t.Fatal(err)
	}
	if got, err := cli.Get(ctx, "from-edge"); err != nil || len(got.Kvs) != 1 || string(got.Kvs[0].Value) != "w" {
		t.Fatalf("etcd after a write at the edge: %+v, %v", got, err)
	}
	if p, _, err := kv.Get("from-edge", (&api.QueryOptions{}).WithContext(ctx)); err != nil || p == nil || string(p.Value) != "w" {
		t.Fatalf("read back at the edge = %+v, %v", p, err)
	}

	// The regional agent restarts in front of a fresh store: lower indexes.
	_, meta, _ = kv.Get("cfg", (&api.QueryOptions{}).WithContext(ctx))
	reset := make(chan string, 1)
	go func() {
		// As consul/api's watch plans do: a failed blocking query is
		// retried with the same index (the edge answers 503 while the
		// regional agent is down).
		for {
			p, _, err := kv.Get("cfg", (&api.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: time.Minute}).WithContext(ctx))
			switch {
			case err != nil && ctx.Err() == nil:
				time.Sleep(100 * time.Millisecond)
				continue
			case err != nil:
				reset <- err.Error()
			case p == nil:
				reset <- "<missing>"
			default:
				reset <- string(p.Value)
			}
			return
		}
	}()
	eventually(t, "a client blocked at the edge", func() bool { return blockingQueries(t, edge.url) == 1 })
	regional.stop(t)
	fresh := etcdtest.Start(t)
	if _, err := fresh.Client(t).Put(ctx, "cfg", "fresh"); err != nil {
		t.Fatal(err)
	}
	freshBottom := etcdNode(t, fresh)
	consulNode(t, freshBottom.url, listen(t, regionalAddr))
	if v := <-reset; v != "fresh" {
		t.Fatalf("edge client across the reset got %q, want the fresh store's value", v)
	}
	if p, m, err := kv.Get("cfg", (&api.QueryOptions{}).WithContext(ctx)); err != nil || string(p.Value) != "fresh" || m.LastIndex >= meta.LastIndex {
		t.Fatalf("after the reset the edge serves %+v at %d (before: %d)", p, m.LastIndex, meta.LastIndex)
	}
}
