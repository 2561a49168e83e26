package agent

// Consul's own clients against the agent: consul/api's KV client, its
// blocking queries and watch plans, and where Consul's clients notice a
// difference. In-memory store inside synctest bubbles.

import (
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/consul/api/watch"
)

// Blocking queries of consul/api: WaitIndex returns on the next change
// with a higher index; WaitTime ends a query with no change with the same
// index and no error.
func TestConsulBlocking(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ta, _ := memAgent(t, nil)
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
	})
}

// Consul's api/watch plans of type key and keyprefix run against the
// agent and receive every change.
func TestConsulWatchPlans(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ta, _ := memAgent(t, nil)
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
	})
}

// The consul/api KV client works against the agent: Put, Get, List, Keys,
// CAS, Delete, DeleteCAS, DeleteTree.
func TestConsulKV(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ta, _ := memAgent(t, nil)
		kv := ta.consul(t).KV()
		ctx := testCtx(t)
		q := (&api.QueryOptions{}).WithContext(ctx)
		w := (&api.WriteOptions{}).WithContext(ctx)

		if _, err := kv.Put(&api.KVPair{Key: "app/db", Value: []byte("postgres")}, w); err != nil {
			t.Fatal(err)
		}
		pair, meta, err := kv.Get("app/db", q)
		if err != nil || pair == nil || string(pair.Value) != "postgres" || pair.ModifyIndex == 0 || meta.LastIndex != pair.ModifyIndex {
			t.Fatalf("Get = %+v %+v %v", pair, meta, err)
		}
		if missing, meta, err := kv.Get("app/none", q); err != nil || missing != nil || meta.LastIndex == 0 {
			t.Fatalf("Get of a missing key = %+v %+v %v, want nil with an index", missing, meta, err)
		}
		kv.Put(&api.KVPair{Key: "app/web/port", Value: []byte("80")}, w)
		kv.Put(&api.KVPair{Key: "app/web/host", Value: []byte("h")}, w)
		pairs, _, err := kv.List("app/", q)
		if err != nil || len(pairs) != 3 || pairs[0].Key != "app/db" {
			t.Fatalf("List = %+v %v", pairs, err)
		}
		keys, _, err := kv.Keys("app/", "/", q)
		if err != nil || len(keys) != 2 || keys[0] != "app/db" || keys[1] != "app/web/" {
			t.Fatalf("Keys = %v %v", keys, err)
		}

		pair, _, _ = kv.Get("app/db", q)
		ok, _, err := kv.CAS(&api.KVPair{Key: "app/db", Value: []byte("mysql"), ModifyIndex: pair.ModifyIndex - 1}, w)
		if err != nil || ok {
			t.Fatalf("CAS with a stale index = %v %v, want false", ok, err)
		}
		ok, _, err = kv.CAS(&api.KVPair{Key: "app/db", Value: []byte("mysql"), ModifyIndex: pair.ModifyIndex}, w)
		if err != nil || !ok {
			t.Fatalf("CAS = %v %v, want true", ok, err)
		}
		if pair, _, _ := kv.Get("app/db", q); string(pair.Value) != "mysql" {
			t.Fatalf("after CAS, Get = %q: read-your-writes broken", pair.Value)
		}
		ok, _, err = kv.CAS(&api.KVPair{Key: "app/new", Value: []byte("x"), ModifyIndex: 0}, w)
		if err != nil || !ok {
			t.Fatalf("CAS 0 on a missing key = %v %v, want true", ok, err)
		}
		pair, _, _ = kv.Get("app/new", q)
		if ok, _, err := kv.DeleteCAS(&api.KVPair{Key: "app/new", ModifyIndex: pair.ModifyIndex + 1}, w); err != nil || ok {
			t.Fatalf("DeleteCAS with a wrong index = %v %v", ok, err)
		}
		if ok, _, err := kv.DeleteCAS(&api.KVPair{Key: "app/new", ModifyIndex: pair.ModifyIndex}, w); err != nil || !ok {
			t.Fatalf("DeleteCAS = %v %v", ok, err)
		}
		if p, _, _ := kv.Get("app/new", q); p != nil {
			t.Fatalf("after DeleteCAS, Get = %+v", p)
		}
		if _, err := kv.Delete("app/db", w); err != nil {
			t.Fatal(err)
		}
		if p, _, _ := kv.Get("app/db", q); p != nil {
			t.Fatalf("after Delete, Get = %+v", p)
		}
		if _, err := kv.DeleteTree("app/", w); err != nil {
			t.Fatal(err)
		}
		if pairs, _, _ := kv.List("app/", q); len(pairs) != 0 {
			t.Fatalf("after DeleteTree, List = %+v", pairs)
		}
	})
}

// Where Consul's clients notice a difference, the agent answers as Consul
// does: ?keys of the root of an empty store is [] (not 404); a CAS delete
// of a missing key is true; ?raw is text/plain that browsers must not sniff
// or run; the parameters Consul's client sends (near, filter, cached,
// pretty, the legacy seperator) are taken with Consul's meaning.
func TestConsulDifferences(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ta, _ := memAgent(t, nil)
		if resp, body := ta.do(t, "GET", "/v1/kv/?keys", nil); resp.StatusCode != 200 || body != "[]" {
			t.Fatalf("?keys of an empty root = %d %q, want 200 []", resp.StatusCode, body)
		}
		if resp, _ := ta.do(t, "GET", "/v1/kv/none/?keys", nil); resp.StatusCode != 404 {
			t.Fatalf("?keys of an empty prefix = %d, want 404 as Consul", resp.StatusCode)
		}
		if resp, body := ta.do(t, "DELETE", "/v1/kv/missing?cas=5", nil); resp.StatusCode != 200 || body != "true" {
			t.Fatalf("DELETE ?cas of a missing key = %d %q, want true", resp.StatusCode, body)
		}
		ta.do(t, "PUT", "/v1/kv/page", strings.NewReader("<script>alert(1)</script>"))
		resp, body := ta.do(t, "GET", "/v1/kv/page?raw", nil)
		for h, want := range map[string]string{"Content-Type": "text/plain", "X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"} {
			if got := resp.Header.Get(h); got != want {
				t.Errorf("?raw %s = %q, want %q", h, got, want)
			}
		}
		if body != "<script>alert(1)</script>" {
			t.Errorf("?raw body = %q", body)
		}
		ta.do(t, "PUT", "/v1/kv/a/b/c", strings.NewReader("1"))
		ta.do(t, "PUT", "/v1/kv/a/d", strings.NewReader("2"))
		if _, body := ta.do(t, "GET", "/v1/kv/a/?keys&seperator=/", nil); body != `["a/b/","a/d"]` {
			t.Errorf("?keys&seperator= = %s", body)
		}
		if _, body := ta.do(t, "GET", "/v1/kv/a/?keys&separator=/&seperator=x", nil); body != `["a/b/","a/d"]` {
			t.Errorf("separator must win over seperator: %s", body)
		}
		if resp, body := ta.do(t, "GET", "/v1/kv/a/d?near=_agent&filter=x&cached", nil); resp.StatusCode != 200 || !strings.Contains(body, `"a/d"`) {
			t.Errorf("near, filter and cached: %d %s", resp.StatusCode, body)
		}
		if _, body := ta.do(t, "GET", "/v1/kv/a/d?pretty", nil); !strings.Contains(body, "\n        \"LockIndex\"") {
			t.Errorf("?pretty = %q, want indented JSON", body)
		}
		if _, body := ta.do(t, "GET", "/v1/kv/a/d", nil); strings.Contains(body, "\n") {
			t.Errorf("without ?pretty the shared rendering was indented: %q", body)
		}
	})
}
