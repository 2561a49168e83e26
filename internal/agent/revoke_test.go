package agent

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/watchcache/watchcache/etcdkv"
	"github.com/watchcache/watchcache/internal/etcdtest"
)

// A user loses read access to one of two prefixes while it follows both
// through the agent: by blocking query (consul/api), by event stream and
// by plain GET. No value written after the revocation returned reaches it
// on the revoked prefix, each path ends in 403 (or an error event), and
// the prefix it keeps is still followed. (etcdkv's tests cover every kind
// of revocation; this one covers the agent's paths.)
func TestRevokedAccessEndsAtOnce(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	cli.Put(testCtx(t), "a/k", "before")
	cli.Put(testCtx(t), "b/k", "before")
	c.EnableAuth(t, []etcdtest.User{{Name: "u", Password: "u-pw", Roles: []etcdtest.Role{
		{Name: "ra", Prefix: "a/", Perm: etcdtest.PermRead},
		{Name: "rb", Prefix: "b/", Perm: etcdtest.PermRead},
	}}})
	root := c.Client(t, etcdtest.WithCredentials(etcdtest.RootUser, etcdtest.RootPassword))
	ta := startAgentOn(t, c, func(cfg *etcdConfig) {
		cfg.Tokens = map[string]etcdkv.TokenUser{"u-token": {User: "u", Password: "u-pw"}}
	})
	kv := ta.consul(t, func(c *api.Config) { c.Token = "u-token" }).KV()

	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	var (
		mu      sync.Mutex
		leaks   []string
		refused = map[string]bool{}
		latest  = map[string]string{}
		changed = make(chan struct{}, 1)
	)
	saw := func(path, key, value string, denied bool) {
		mu.Lock()
		defer mu.Unlock()
		select {
		case changed <- struct{}{}:
		default:
		}
		switch {
		case denied:
			refused[path+" "+key] = true
		case strings.HasPrefix(value, "after") && key == "b/k":
			leaks = append(leaks, path+": "+value)
		case value != "":
			latest[path+" "+key] = value
		}
	}
	var wg sync.WaitGroup
	for _, key := range []string{"a/k", "b/k"} {
		wg.Go(func() { // blocking queries
			var index uint64
			for ctx.Err() == nil {
				p, meta, err := kv.Get(key, (&api.QueryOptions{WaitIndex: index, WaitTime: time.Second}).WithContext(ctx))
				switch {
				case isStatus(err, 403):
					saw("blocking", key, "", true)
					return
				case err != nil:
					continue
				case p != nil:
					saw("blocking", key, string(p.Value), false)
				}
				index = meta.LastIndex
			}
		})
		wg.Go(func() { // plain GETs
			tick := time.NewTicker(2 * time.Millisecond)
			defer tick.Stop()
			for ctx.Err() == nil {
				p, _, err := kv.Get(key, (&api.QueryOptions{}).WithContext(ctx))
				switch {
				case isStatus(err, 403):
					saw("get", key, "", true)
					return
				case err == nil && p != nil:
					saw("get", key, string(p.Value), false)
				}
				<-tick.C
			}
		})
		events := ta.sse(t, ctx, "/v1/watch/kv/"+key, "X-Consul-Token", "u-token")
		wg.Go(func() {
			for ev := range events {
				if ev.event == "error" {
					saw("stream", key, "", true)
					return
				}
				var pairs []kvPair
				if err := json.Unmarshal([]byte(ev.data), &pairs); err != nil || len(pairs) != 1 {
					t.Errorf("stream event %q: %v", ev.data, err)
					return
				}
				saw("stream", key, string(pairs[0].Value), false)
			}
		})
	}
	if _, err := root.Put(testCtx(t), "b/k", "before-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := root.RoleRevokePermission(testCtx(t), "rb", "b/", clientv3.GetPrefixRangeEnd("b/")); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		root.Put(testCtx(t), "a/k", "after-"+string(rune('a'+i)))
		root.Put(testCtx(t), "b/k", "after-"+string(rune('a'+i)))
		time.Sleep(20 * time.Millisecond) // spread the writes over the auth check interval
	}
	deadline := time.NewTimer(waitFor)
	defer deadline.Stop()
	for {
		mu.Lock()
		done := refused["blocking b/k"] && refused["get b/k"] && refused["stream b/k"] &&
			latest["blocking a/k"] == "after-t" && latest["get a/k"] == "after-t" && latest["stream a/k"] == "after-t"
		mu.Unlock()
		if done {
			break
		}
		select {
		case <-changed:
		case <-deadline.C:
			mu.Lock()
			t.Fatalf("after %v: refused %v, latest %v", waitFor, refused, latest)
		}
	}
	cancel()
	wg.Wait()
	if len(leaks) > 0 {
		t.Fatalf("values written after the revocation reached the user: %v", leaks)
	}
}

// After a user's password changes, an event stream opened with the old
// password ends with an error event and never carries a value written
// since, even though the user logged in again with the new password
// (whose requests work, and never see the old session's error).
func TestPasswordChangeEndsOldStreams(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	cli.Put(testCtx(t), "a/k", "before")
	c.EnableAuth(t, []etcdtest.User{{Name: "u", Password: "u-pw", Roles: []etcdtest.Role{{Name: "ra", Prefix: "a/", Perm: etcdtest.PermRead}}}})
	root := c.Client(t, etcdtest.WithCredentials(etcdtest.RootUser, etcdtest.RootPassword))
	ta := startAgentOn(t, c)
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	old := ta.sse(t, ctx, "/v1/watch/kv/a/k", "Authorization", "Basic "+basicAuth("u", "u-pw"))
	if ev := <-old; ev.event != "kv" || !strings.Contains(ev.data, `"Key":"a/k"`) {
		t.Fatalf("first event of the old session: %+v", ev)
	}

	if _, err := root.UserChangePassword(testCtx(t), "u", "u-pw2"); err != nil {
		t.Fatal(err)
	}
	kv := ta.consul(t, func(c *api.Config) { c.HttpAuth = &api.HttpBasicAuth{Username: "u", Password: "u-pw2"} }).KV()
	p, meta, err := kv.Get("a/k", (&api.QueryOptions{}).WithContext(ctx))
	if err != nil || p == nil || string(p.Value) != "before" {
		t.Fatalf("GET with the new password: %+v, %v", p, err)
	}
	if _, err := root.Put(testCtx(t), "a/k", "after"); err != nil {
		t.Fatal(err)
	}
	p, _, err = kv.Get("a/k", (&api.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: 10 * time.Second}).WithContext(ctx))
	if err != nil || p == nil || string(p.Value) != "after" {
		t.Fatalf("blocking GET with the new password: %+v, %v", p, err)
	}
	ended := false
	for ev := range old {
		switch {
		case ev.event == "error":
			ended = true
		case strings.Contains(ev.data, base64Std.EncodeToString([]byte("after"))):
			t.Fatalf("the stream opened with the old password carried a value written after the change: %+v", ev)
		}
	}
	if !ended {
		t.Fatal("the old session's stream ended without an error event")
	}
	if _, _, err := ta.consul(t, func(c *api.Config) { c.HttpAuth = &api.HttpBasicAuth{Username: "u", Password: "u-pw"} }).KV().Get("a/k", nil); !isStatus(err, 403) {
		t.Fatalf("GET with the old password: %v, want 403", err)
	}
}
