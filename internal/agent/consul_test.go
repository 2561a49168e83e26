package agent

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/consul/api/watch"

	"github.com/watchcache/watchcache/etcdkv"
	"github.com/watchcache/watchcache/internal/etcdtest"
)

// Blocking queries of consul/api: WaitIndex returns on the next change
// with a higher index; WaitTime ends a query with no change with the same
// index and no error.
func TestConsulBlocking(t *testing.T) {
	ta := startAgent(t)
	kv := ta.consul(t).KV()
	ctx := testCtx(t)
	kv.Put(&api.KVPair{Key: "cfg", Value: []byte("v1")}, nil)
	_, meta, err := kv.Get("cfg", (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}

	got := make(chan *api.KVPair, 1)
	metas := make(chan *api.QueryMeta, 1)
	go func() {
		p, m, err := kv.Get("cfg", (&api.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: time.Minute}).WithContext(ctx))
		if err != nil {
			t.Error(err)
		}
		got <- p
		metas <- m
	}()
	waitBlocked(t, ta, 1)
	kv.Put(&api.KVPair{Key: "cfg", Value: []byte("v2")}, nil)
	if p := <-got; p == nil || string(p.Value) != "v2" {
		t.Fatalf("blocking Get = %+v, want v2", p)
	}
	if m := <-metas; m.LastIndex <= meta.LastIndex {
		t.Fatalf("index after change %d, want > %d", m.LastIndex, meta.LastIndex)
	}

	// No change: the wait ends with the same index.
	_, meta, _ = kv.Get("cfg", nil)
	start := time.Now()
	p, m, err := kv.Get("cfg", (&api.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: 300 * time.Millisecond}).WithContext(ctx))
	if err != nil || string(p.Value) != "v2" || m.LastIndex != meta.LastIndex {
		t.Fatalf("timed-out blocking Get = %+v %+v %v", p, m, err)
	}
	if waited := time.Since(start); waited < 300*time.Millisecond {
		t.Fatalf("blocking Get returned after %v, before its wait", waited)
	}

	// A key that does not exist yet: block on the 404's index until it does.
	_, meta, _ = kv.Get("later", nil)
	go func() {
		p, _, err := kv.Get("later", (&api.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: time.Minute}).WithContext(ctx))
		if err != nil {
			t.Error(err)
		}
		got <- p
	}()
	waitBlocked(t, ta, 1)
	kv.Put(&api.KVPair{Key: "later", Value: []byte("here")}, nil)
	if p := <-got; p == nil || string(p.Value) != "here" {
		t.Fatalf("blocking Get of a created key = %+v", p)
	}
}

// waitBlocked waits until n Gets wait in the agent's cache.
func waitBlocked(t testing.TB, ta *testAgent, n int) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for ta.blocked.Load() < int64(n) {
		if time.Now().After(deadline) {
			t.Fatalf("%d requests blocked after %v, want %d", ta.blocked.Load(), waitFor, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Consul's api/watch plans of type key and keyprefix run against the
// agent and receive every change.
func TestConsulWatchPlans(t *testing.T) {
	ta := startAgent(t)
	client := ta.consul(t)
	kv := client.KV()
	kv.Put(&api.KVPair{Key: "svc/a", Value: []byte("1")}, nil)

	type seen struct {
		idx   uint64
		value string
	}
	run := func(params map[string]any, out chan<- seen) *watch.Plan {
		plan, err := watch.Parse(params)
		if err != nil {
			t.Fatal(err)
		}
		plan.HybridHandler = func(v watch.BlockingParamVal, raw any) {
			idx := uint64(v.(watch.WaitIndexVal))
			switch r := raw.(type) {
			case *api.KVPair:
				out <- seen{idx, string(r.Value)}
			case api.KVPairs:
				s := ""
				for _, p := range r {
					s += p.Key + "=" + string(p.Value) + ";"
				}
				out <- seen{idx, s}
			case nil:
				out <- seen{idx, "<nil>"}
			}
		}
		var wg sync.WaitGroup
		wg.Go(func() {
			if err := plan.RunWithClientAndHclog(client, nil); err != nil {
				t.Error(err)
			}
		})
		t.Cleanup(func() { plan.Stop(); wg.Wait() })
		return plan
	}
	keyCh := make(chan seen, 16)
	prefixCh := make(chan seen, 16)
	run(map[string]any{"type": "key", "key": "svc/a"}, keyCh)
	run(map[string]any{"type": "keyprefix", "prefix": "svc/"}, prefixCh)

	expect := func(ch <-chan seen, want string) uint64 {
		t.Helper()
		select {
		case s := <-ch:
			if s.value != want {
				t.Fatalf("watch saw %q, want %q", s.value, want)
			}
			return s.idx
		case <-time.After(waitFor):
			t.Fatalf("watch did not see %q", want)
		}
		return 0
	}
	k1 := expect(keyCh, "1")
	p1 := expect(prefixCh, "svc/a=1;")
	kv.Put(&api.KVPair{Key: "svc/a", Value: []byte("2")}, nil)
	if k2 := expect(keyCh, "2"); k2 <= k1 {
		t.Fatalf("key watch index %d after %d", k2, k1)
	}
	expect(prefixCh, "svc/a=2;")
	kv.Put(&api.KVPair{Key: "svc/b", Value: []byte("3")}, nil)
	if p3 := expect(prefixCh, "svc/a=2;svc/b=3;"); p3 <= p1 {
		t.Fatalf("prefix watch index %d after %d", p3, p1)
	}
	kv.Delete("svc/a", nil)
	expect(keyCh, "<nil>")
	expect(prefixCh, "svc/b=3;")
}

// Identities: basic auth and X-Consul-Token map to etcd users whose roles
// decide what they read; the cache never serves one user's data to another,
// nor to a wrong password.
func TestConsulAuth(t *testing.T) {
	c := etcdtest.Start(t)
	root := c.Client(t)
	root.Put(testCtx(t), "a/x", "alice's")
	root.Put(testCtx(t), "b/x", "bob's")
	c.EnableAuth(t, []etcdtest.User{
		{Name: "alice", Password: "alice-pw", Roles: []etcdtest.Role{{Name: "ra", Prefix: "a/", Perm: etcdtest.PermReadWrite}}},
		{Name: "bob", Password: "bob-pw", Roles: []etcdtest.Role{{Name: "rb", Prefix: "b/", Perm: etcdtest.PermReadWrite}}},
	})
	ta := startAgentOn(t, c, func(cfg *etcdConfig) {
		cfg.Username, cfg.Password = etcdtest.RootUser, etcdtest.RootPassword
		cfg.Tokens = map[string]etcdkv.TokenUser{"bob-token": {User: "bob", Password: "bob-pw"}}
	})
	alice := ta.consul(t, func(c *api.Config) { c.HttpAuth = &api.HttpBasicAuth{Username: "alice", Password: "alice-pw"} }).KV()
	bob := ta.consul(t, func(c *api.Config) { c.Token = "bob-token" }).KV()
	mallory := ta.consul(t, func(c *api.Config) { c.HttpAuth = &api.HttpBasicAuth{Username: "alice", Password: "guess"} }).KV()
	stranger := ta.consul(t, func(c *api.Config) { c.Token = "no-such-token" }).KV()

	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			who, kv, own, other := "alice", alice, "a/x", "b/x"
			if i%2 == 1 {
				who, kv, own, other = "bob", bob, "b/x", "a/x"
			}
			p, _, err := kv.Get(own, nil)
			if err != nil || p == nil || string(p.Value) != who+"'s" {
				t.Errorf("%s reading %s = %+v %v", who, own, p, err)
			}
			p, _, err = kv.Get(other, nil)
			if err == nil || p != nil || !isStatus(err, 403) {
				t.Errorf("%s reading %s = %+v %v, want 403", who, other, p, err)
			}
		})
	}
	wg.Wait()
	for name, kv := range map[string]*api.KV{"wrong password": mallory, "unknown token": stranger} {
		p, _, err := kv.Get("a/x", nil)
		if !isStatus(err, 403) || p != nil {
			t.Fatalf("%s: Get = %+v %v, want 403 and no data", name, p, err)
		}
		if _, err := kv.Put(&api.KVPair{Key: "a/x", Value: []byte("owned")}, nil); !isStatus(err, 403) {
			t.Fatalf("%s: Put = %v, want 403", name, err)
		}
	}
	if _, err := alice.Put(&api.KVPair{Key: "b/x", Value: []byte("x")}, nil); !isStatus(err, 403) {
		t.Fatalf("alice writing /b/x = %v, want 403", err)
	}
	if _, err := alice.Put(&api.KVPair{Key: "a/x", Value: []byte("alice's 2")}, nil); err != nil {
		t.Fatal(err)
	}
	if p, _, _ := alice.Get("a/x", nil); string(p.Value) != "alice's 2" {
		t.Fatalf("alice after her write = %q", p.Value)
	}
}

// isStatus reports whether err is consul/api's error for HTTP status code.
func isStatus(err error, code int) bool {
	var se api.StatusError
	return errors.As(err, &se) && se.Code == code
}
