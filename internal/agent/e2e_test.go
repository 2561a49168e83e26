package agent

// End-to-end tests: the agent in front of real embedded etcd, with the real
// consul/api client. The HTTP contract itself is tested against an
// in-memory store in contract_test.go.

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/watchcache/watchcache/etcdkv"
	"github.com/watchcache/watchcache/internal/etcdtest"
)

// Keys are taken from the path as they are: no cleaning, no redirects.
func TestHTTPKeysVerbatim(t *testing.T) {
	ta := startAgent(t)
	for _, key := range []string{"a//b", "a/../b", "a/./b", "trailing/"} {
		if resp, body := ta.do(t, "PUT", "/v1/kv/"+key, strings.NewReader(key)); resp.StatusCode != 200 || body != "true" {
			t.Fatalf("PUT %q = %d %q", key, resp.StatusCode, body)
		}
		if resp, body := ta.do(t, "GET", "/v1/kv/"+key+"?raw", nil); resp.StatusCode != 200 || body != key {
			t.Fatalf("GET %q = %d %q", key, resp.StatusCode, body)
		}
		got, err := ta.etcd.Client(t).Get(testCtx(t), key)
		if err != nil || len(got.Kvs) != 1 {
			t.Fatalf("etcd has no key %q: %v", key, err)
		}
	}
}

// /v1/status/leader and /v1/status/peers name etcd's leader and voting
// members by their peer addresses, as Consul names its raft peers, and
// follow a change of leader.
func TestStatusLeaderPeersEtcd(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.WithMembers(3))
	first := c.WaitLeader(t)
	ta := startAgentOn(t, c, func(cfg *etcdConfig) {
		// The leader, to be killed, is the first endpoint the agent has.
		cfg.Endpoints = []string{c.Endpoint(first)}
		for i := range 3 {
			if i != first {
				cfg.Endpoints = append(cfg.Endpoints, c.Endpoint(i))
			}
		}
	})
	status := ta.consul(t).Status()
	var all []string
	for i := range 3 {
		all = append(all, c.PeerAddr(i))
	}
	slices.Sort(all)
	peers, err := status.Peers()
	slices.Sort(peers)
	if err != nil || !slices.Equal(peers, all) {
		t.Fatalf("Peers() = %q, %v; want %q", peers, err, all)
	}
	lead := first
	if leader, err := status.Leader(); err != nil || leader != c.PeerAddr(lead) {
		t.Fatalf("Leader() = %q, %v; want member %d's %q", leader, err, lead, c.PeerAddr(lead))
	}
	killed := c.KillLeader(t)
	lead = c.WaitLeader(t)
	if lead == killed {
		t.Fatalf("member %d still leads after it was killed", lead)
	}
	// The killed member is the agent's first endpoint; an answer must come
	// from a live one that knows the new leader.
	deadline := time.Now().Add(waitFor)
	for {
		leader, err := status.Leader()
		if err == nil && leader == c.PeerAddr(lead) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Leader() after member %d was killed = %q, %v; want member %d's %q", killed, leader, err, lead, c.PeerAddr(lead))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if resp, body := ta.do(t, "GET", "/readyz", nil); resp.StatusCode != 200 {
		t.Fatalf("/readyz with 2 of 3 members = %d %q", resp.StatusCode, body)
	}
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

// The agent in front of etcd serves what consul/api clients do: writes,
// reads with the index, blocking queries woken by a change, a prefix
// listing, an event stream, and a status that reports etcd and its loss.
func TestEtcdEndToEnd(t *testing.T) {
	ta := startAgent(t)
	kv := ta.consul(t).KV()
	ctx := testCtx(t)
	w := (&api.WriteOptions{}).WithContext(ctx)
	if _, err := kv.Put(&api.KVPair{Key: "app/db", Value: []byte("postgres")}, w); err != nil {
		t.Fatal(err)
	}
	p, meta, err := kv.Get("app/db", (&api.QueryOptions{}).WithContext(ctx))
	if err != nil || p == nil || string(p.Value) != "postgres" || meta.LastIndex != p.ModifyIndex {
		t.Fatalf("Get = %+v %+v %v", p, meta, err)
	}
	events := ta.sse(t, ctx, "/v1/watch/kv/app/?recurse")
	if ev := nextEvent(t, events); !strings.Contains(ev.data, base64("postgres")) {
		t.Fatalf("first event = %+v", ev)
	}
	got := make(chan string, 1)
	go func() {
		p, _, err := kv.Get("app/db", (&api.QueryOptions{WaitIndex: meta.LastIndex}).WithContext(ctx))
		if err != nil || p == nil {
			got <- fmt.Sprint(err)
			return
		}
		got <- string(p.Value)
	}()
	waitBlocked(t, ta, 1)
	kv.Put(&api.KVPair{Key: "app/db", Value: []byte("mysql")}, w)
	if v := <-got; v != "mysql" {
		t.Fatalf("blocking Get = %q, want mysql", v)
	}
	if ev := nextEvent(t, events); !strings.Contains(ev.data, base64("mysql")) {
		t.Fatalf("event after the change = %+v", ev)
	}
	if pairs, _, err := kv.List("app/", (&api.QueryOptions{}).WithContext(ctx)); err != nil || len(pairs) != 1 {
		t.Fatalf("List = %+v %v", pairs, err)
	}

	resp, body := ta.do(t, "GET", "/v1/status", nil)
	var st statusReport
	if err := json.Unmarshal([]byte(body), &st); err != nil || resp.StatusCode != 200 {
		t.Fatalf("status = %d %s (%v)", resp.StatusCode, body, err)
	}
	if !st.Upstream.Healthy || st.Upstream.Index == 0 || !strings.HasPrefix(st.Upstream.Store, "etcd ") {
		t.Fatalf("status = %+v", st.Upstream)
	}
	ta.etcd.StopMember(0)
	_, body = ta.do(t, "GET", "/v1/status", nil)
	json.Unmarshal([]byte(body), &st)
	if st.Upstream.Healthy || st.Upstream.Error == "" {
		t.Fatalf("status with etcd down = %+v", st.Upstream)
	}
	if resp, body := ta.do(t, "GET", "/v1/kv/app/db?raw", nil); resp.StatusCode != 200 || body != "mysql" {
		t.Fatalf("plain GET with etcd down = %d %q, want the last value", resp.StatusCode, body)
	}
}
