package agent

// The HTTP contract, tested against an in-memory store inside synctest
// bubbles: fake time, no real-time polling. The end-to-end tests on real
// etcd are in e2e_test.go.

import (
	"bytes"
	"context"
	stdbase64 "encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
	"unsafe"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/memstore"
	"github.com/watchcache/watchcache/kvstore"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/consul/api/watch"
)

// Every kind of bad request gets a 400 (or 405) whose message names what
// is wrong; nothing reaches etcd.
func TestHTTPBadRequests(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ta, _ := memAgent(t, nil)
		big := strings.Repeat("x", MaxValueSize+1)
		for _, tc := range []struct {
			method, path, body string
			header             []string
			status             int
			want               string
		}{
			{"GET", "/v1/kv/k?index=abc", "", nil, 400, `"index": "abc"`},
			{"GET", "/v1/kv/k?index=5&wait=forever", "", nil, 400, `"wait": "forever"`},
			{"GET", "/v1/kv/k?index=5&wait=10", "", nil, 400, `"wait": "10"`},
			{"GET", "/v1/kv/k?recurse=perhaps", "", nil, 400, `"recurse": "perhaps"`},
			{"GET", "/v1/kv/k?bogus=1", "", nil, 400, `unknown parameter "bogus"`},
			{"GET", "/v1/kv/k?%zz", "", nil, 400, `bad query`},
			{"GET", "/v1/kv/k", "", []string{"Cache-Control", "max-age=later"}, 400, `Cache-Control`},
			{"PUT", "/v1/kv/k?flags=3", "v", nil, 400, `only 0 is supported`},
			{"PUT", "/v1/kv/k?acquire=abc", "v", nil, 400, `"acquire" is not supported`},
			{"GET", "/v1/kv/k?seperator=/", "", nil, 400, `"seperator" needs "keys"`},
			{"PUT", "/v1/kv/k?release=abc", "v", nil, 400, `"release" is not supported`},
			{"PUT", "/v1/kv/k?cas=minus", "v", nil, 400, `"cas": "minus"`},
			{"PUT", "/v1/kv/k", big, nil, 413, `Request body too large, max size: 524288 bytes`},
			{"PUT", "/v1/kv/", "v", nil, 400, `Missing key name`},
			{"GET", "/v1/kv/", "", nil, 400, `Missing key name`},
			{"DELETE", "/v1/kv/", "", nil, 400, `Missing key name`},
			{"GET", "/v1/kv/k?consistent&cached", "", nil, 400, `Cannot specify ?cached with ?consistent`},
			{"GET", "/v1/kv/k?peer=other", "", nil, 400, `"peer" is not supported`},
			{"DELETE", "/v1/kv/k?recurse&cas=1", "", nil, 400, `cannot be combined`},
			{"POST", "/v1/kv/k", "", nil, 405, `method not allowed`},
			{"PUT", "/v1/session/create", "", nil, 400, `/v1/session/create is not served`},
			{"GET", "/v1/catalog/services", "", nil, 400, `is not served`},
			{"GET", "/v1/watch/kv/k", "", []string{"Last-Event-ID", "yesterday"}, 400, `bad Last-Event-ID: "yesterday" is not an index`},
			{"GET", "/v1/watch/kv/k?index=x", "", nil, 400, `bad query parameter "index": "x" is not an index`},
			{"GET", "/v1/kv/%ff", "", nil, 400, `bad key: is not valid UTF-8`},
			{"HEAD", "/livez", "", nil, 200, ``},
			{"POST", "/readyz", "", nil, 405, `method not allowed`},
			{"GET", "/v1/watch/kv/k?keys", "", nil, 400, `unknown parameter "keys"`},
			{"GET", "/v1/kv/k", "", []string{"X-Consul-Token", "t"}, 403, `ACL not found`},
		} {
			resp, body := ta.do(t, tc.method, tc.path, strings.NewReader(tc.body), tc.header...)
			if resp.StatusCode != tc.status || !strings.Contains(body, tc.want) {
				t.Errorf("%s %s: %d %q, want %d mentioning %s", tc.method, tc.path, resp.StatusCode, body, tc.status, tc.want)
			}
		}
		if resp, _ := ta.do(t, "GET", "/v1/kv/k", nil); resp.StatusCode != 404 {
			t.Fatalf("the key was written by a bad request: %d", resp.StatusCode)
		}
	})
}

// Reads carry Consul's headers: X-Consul-Index (also on 404, so clients
// can block on a key that does not exist yet), X-Consul-KnownLeader,
// X-Consul-LastContact, X-Cache and Age; ?raw returns the bare value;
// ?consistent and Cache-Control: no-cache read through to etcd.
func TestHTTPReadHeaders(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ta, store := memAgent(t, nil)
		resp, _ := ta.do(t, "GET", "/v1/kv/k", nil)
		if resp.StatusCode != 404 || index(t, resp) == 0 || resp.Header.Get("X-Cache") != "MISS" {
			t.Fatalf("missing key: %d %v", resp.StatusCode, resp.Header)
		}
		if resp, body := ta.do(t, "PUT", "/v1/kv/k", strings.NewReader("hello")); resp.StatusCode != 200 || body != "true" {
			t.Fatalf("PUT = %d %q", resp.StatusCode, body)
		}
		resp, body := ta.do(t, "GET", "/v1/kv/k", nil)
		var pairs []map[string]any
		if err := json.Unmarshal([]byte(body), &pairs); err != nil || len(pairs) != 1 || pairs[0]["Value"] != "aGVsbG8=" || pairs[0]["Key"] != "k" {
			t.Fatalf("GET body = %s (%v)", body, err)
		}
		if int(pairs[0]["ModifyIndex"].(float64)) != int(index(t, resp)) {
			t.Fatalf("X-Consul-Index %d, ModifyIndex %v", index(t, resp), pairs[0]["ModifyIndex"])
		}
		for h, want := range map[string]string{"X-Consul-KnownLeader": "true", "X-Consul-LastContact": "0", "Age": "0", "Content-Type": "application/json"} {
			if got := resp.Header.Get(h); got != want {
				t.Errorf("%s = %q, want %q", h, got, want)
			}
		}
		if resp, _ := ta.do(t, "GET", "/v1/kv/k", nil); resp.Header.Get("X-Cache") != "HIT" {
			t.Fatalf("second GET X-Cache = %q", resp.Header.Get("X-Cache"))
		}
		if resp, body := ta.do(t, "GET", "/v1/kv/k?raw", nil); body != "hello" || resp.StatusCode != 200 {
			t.Fatalf("raw = %d %q", resp.StatusCode, body)
		}
		// Straight to the store, then read through.
		if err := store.Put(testCtx(t), watchcache.Partition{}, "k", []byte("direct")); err != nil {
			t.Fatal(err)
		}
		for _, read := range [][]string{{"/v1/kv/k?raw&consistent"}, {"/v1/kv/k?raw", "Cache-Control", "no-cache"}, {"/v1/kv/k?raw", "Cache-Control", "must-revalidate"}} {
			resp, body := ta.do(t, "GET", read[0], nil, read[1:]...)
			if body != "direct" || resp.Header.Get("X-Cache") != "MISS" {
				t.Fatalf("%v = %q, X-Cache %s; want the store's value", read, body, resp.Header.Get("X-Cache"))
			}
		}
		if resp, body := ta.do(t, "GET", "/v1/kv/?keys", nil); body != `["k"]` || index(t, resp) == 0 {
			t.Fatalf("keys = %q", body)
		}
		// Answers carry their length, large ones too (net/http would send
		// those chunked): a client knows what is to come.
		big := strings.Repeat("v", 64<<10)
		if resp, _ := ta.do(t, "PUT", "/v1/kv/big", strings.NewReader(big)); resp.StatusCode != 200 {
			t.Fatalf("PUT big = %d", resp.StatusCode)
		}
		for _, path := range []string{"/v1/kv/big", "/v1/kv/big?raw", "/v1/kv/?recurse"} {
			resp, body := ta.do(t, "GET", path, nil)
			if resp.ContentLength != int64(len(body)) || len(resp.TransferEncoding) != 0 || len(body) < len(big) {
				t.Errorf("GET %s: Content-Length %d, Transfer-Encoding %v, %d bytes", path, resp.ContentLength, resp.TransferEncoding, len(body))
			}
		}
	})
}

// The watch stream pushes every change in order, and a client that
// reconnects with Last-Event-ID misses nothing that is still current.
func TestSSEWatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ta, _ := memAgent(t, nil)
		ctx, cancel := context.WithCancel(testCtx(t))
		events := ta.sse(t, ctx, "/v1/watch/kv/cfg")
		if ev := nextEvent(t, events); ev.event != "kv" || ev.data != "[]" {
			t.Fatalf("first event for a missing key = %+v", ev)
		}
		var last uint64
		for i := range 5 {
			ta.do(t, "PUT", "/v1/kv/cfg", strings.NewReader(fmt.Sprint("v", i)))
			ev := nextEvent(t, events)
			var pairs []kvPair
			json.Unmarshal([]byte(ev.data), &pairs)
			id, _ := strconv.ParseUint(ev.id, 10, 64)
			if len(pairs) != 1 || string(pairs[0].Value) != fmt.Sprint("v", i) || id <= last || id != pairs[0].ModifyIndex {
				t.Fatalf("event %d = %+v", i, ev)
			}
			last = id
		}
		cancel() // the client goes away...
		for range events {
		}
		ta.do(t, "PUT", "/v1/kv/cfg", strings.NewReader("while away"))

		// ...and comes back: the change it missed is current, so it comes first.
		ctx2, cancel2 := context.WithCancel(testCtx(t))
		defer cancel2()
		events = ta.sse(t, ctx2, "/v1/watch/kv/cfg", "Last-Event-ID", fmt.Sprint(last))
		ev := nextEvent(t, events)
		if !strings.Contains(ev.data, base64("while away")) {
			t.Fatalf("resumed stream's first event = %+v", ev)
		}
		// Resuming at the current index waits for the next change.
		ctx3, cancel3 := context.WithCancel(testCtx(t))
		defer cancel3()
		current := ta.sse(t, ctx3, "/v1/watch/kv/cfg", "Last-Event-ID", ev.id)
		ta.do(t, "PUT", "/v1/kv/cfg", strings.NewReader("next"))
		if ev := nextEvent(t, current); !strings.Contains(ev.data, base64("next")) {
			t.Fatalf("stream resumed at the current index first saw %+v", ev)
		}
		// A prefix stream.
		prefix := ta.sse(t, ctx3, "/v1/watch/kv/?recurse")
		if ev := nextEvent(t, prefix); !strings.Contains(ev.data, `"Key":"cfg"`) {
			t.Fatalf("prefix stream = %+v", ev)
		}
	})
}

// Shutdown answers blocking queries at once with the current value and
// ends event streams.
func TestShutdownAnswersBlockingQueries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ta, _ := memAgent(t, nil)
		ta.do(t, "PUT", "/v1/kv/k", strings.NewReader("v"))
		resp, _ := ta.do(t, "GET", "/v1/kv/k", nil)
		idx := index(t, resp)
		answered := make(chan string, 1)
		go func() {
			resp, body := ta.do(t, "GET", fmt.Sprintf("/v1/kv/k?raw&index=%d&wait=5m", idx), nil)
			answered <- fmt.Sprint(resp.StatusCode, " ", body)
		}()
		events := ta.sse(t, testCtx(t), "/v1/watch/kv/k")
		nextEvent(t, events)
		waitBlocked(t, ta, 1)
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		if err := ta.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
		if got := <-answered; got != "200 v" {
			t.Fatalf("blocking query at shutdown = %q, want 200 v", got)
		}
		for range events {
		}
		if took := time.Since(start); took > 10*time.Second {
			t.Fatalf("shutdown took %v", took)
		}
	})
}

// A stream opened right after a PUT starts at (or after) that write: the
// stream reads its entry with read-your-writes first.
func TestSSEAfterWrite(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ta, _ := memAgent(t, nil)
		ta.do(t, "PUT", "/v1/kv/p/k", strings.NewReader("v0"))
		ctx, cancel := context.WithCancel(testCtx(t))
		defer cancel()
		nextEvent(t, ta.sse(t, ctx, "/v1/watch/kv/p/?recurse")) // the prefix entry is cached and watched
		for i := 1; i <= 100; i++ {
			want := fmt.Sprint("v", i)
			ta.do(t, "PUT", "/v1/kv/p/k", strings.NewReader(want))
			sctx, scancel := context.WithCancel(ctx)
			ev := nextEvent(t, ta.sse(t, sctx, "/v1/watch/kv/p/?recurse"))
			scancel()
			if !strings.Contains(ev.data, base64(want)) {
				t.Fatalf("stream opened after PUT %s began with %s", want, ev.data)
			}
		}
	})
}

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

// When the store is unreachable, plain reads keep serving the last value
// with its Age, blocking reads and writes fail with a 5xx naming the
// problem, max-age is honoured with stale-if-error, and all recovers when
// the store is back.
func TestHTTPStoreOutage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ta, store := memAgent(t, nil)
		ta.do(t, "PUT", "/v1/kv/k", strings.NewReader("v1"))
		resp, _ := ta.do(t, "GET", "/v1/kv/k", nil)
		idx := index(t, resp)
		store.SetDown(true)
		synctest.Wait()             // the entry's query failed
		time.Sleep(3 * time.Second) // fake time
		resp, body := ta.do(t, "GET", "/v1/kv/k?raw", nil)
		if resp.StatusCode != 200 || body != "v1" || resp.Header.Get("Age") != "3" || resp.Header.Get("X-Consul-KnownLeader") != "false" {
			t.Fatalf("plain GET during the outage = %d %q %v, want the last value, Age 3", resp.StatusCode, body, resp.Header)
		}
		if resp, body := ta.do(t, "GET", fmt.Sprintf("/v1/kv/k?index=%d&wait=5s", idx), nil); resp.StatusCode < 500 || !strings.Contains(body, "unreachable") {
			t.Fatalf("blocking GET during the outage = %d %q, want a 5xx with the store's reason", resp.StatusCode, body)
		}
		if resp, body := ta.do(t, "GET", "/v1/kv/k?raw", nil, "Cache-Control", "max-age=0"); resp.StatusCode < 500 {
			t.Fatalf("max-age=0 during the outage = %d %q, want a 5xx", resp.StatusCode, body)
		}
		if resp, body := ta.do(t, "GET", "/v1/kv/k?raw", nil, "Cache-Control", "max-age=0, stale-if-error=3600"); resp.StatusCode != 200 || body != "v1" {
			t.Fatalf("stale-if-error during the outage = %d %q, want the last value", resp.StatusCode, body)
		}
		if resp, body := ta.do(t, "PUT", "/v1/kv/k", strings.NewReader("v2")); resp.StatusCode < 500 || !strings.Contains(body, "unreachable") {
			t.Fatalf("PUT during the outage = %d %q, want a 5xx with the reason", resp.StatusCode, body)
		}

		store.SetDown(false)
		time.Sleep(2 * time.Minute) // past the longest backoff
		if resp, body := ta.do(t, "PUT", "/v1/kv/k", strings.NewReader("v3")); resp.StatusCode != 200 || body != "true" {
			t.Fatalf("PUT after recovery = %d %q", resp.StatusCode, body)
		}
		if resp, body := ta.do(t, "GET", "/v1/kv/k?raw", nil); body != "v3" || resp.Header.Get("Age") != "0" {
			t.Fatalf("GET after recovery = %q, Age %s", body, resp.Header.Get("Age"))
		}
	})
}

// /v1/status reports the cache and the store; /metrics exports Prometheus
// metrics of the cache, the process and the Go runtime.
func TestStatusAndMetrics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ta, store := memAgent(t, nil)
		ta.do(t, "PUT", "/v1/kv/k", strings.NewReader("v"))
		ta.do(t, "GET", "/v1/kv/k", nil)
		ta.do(t, "GET", "/v1/kv/k", nil)
		resp, body := ta.do(t, "GET", "/v1/status", nil)
		var st statusReport
		if err := json.Unmarshal([]byte(body), &st); err != nil || resp.StatusCode != 200 {
			t.Fatalf("status = %d %s (%v)", resp.StatusCode, body, err)
		}
		if st.Entries != 1 || st.Hits < 1 || st.HitRatio <= 0 || !st.Upstream.Healthy || st.Upstream.Index != store.Index() || st.Upstream.Store != "memory" {
			t.Fatalf("status = %+v", st)
		}
		_, body = ta.do(t, "GET", "/metrics", nil)
		for _, m := range []string{`watchcache_hits_total{kind="mem-key"} `, `watchcache_entries{kind="mem-key"} 1`, "process_resident_memory_bytes", "go_goroutines"} {
			if !strings.Contains(body, m) {
				t.Errorf("/metrics lacks %s", m)
			}
		}
		store.SetDown(true)
		_, body = ta.do(t, "GET", "/v1/status", nil)
		json.Unmarshal([]byte(body), &st)
		if st.Upstream.Healthy || st.Upstream.Error == "" {
			t.Fatalf("status with the store down = %+v", st.Upstream)
		}
	})
}

// From its first Serve the agent asks the store how it is until it
// answers, and logs why it does not: each new cause at warn level, a
// repeated one at debug, and the answer at info.
func TestStartupProbe(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var buf syncBuffer
		log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
		_, store := memAgentLogging(t, nil, log, func(s *memstore.Store) { s.SetDown(true) })
		synctest.Wait()
		if out := buf.String(); !strings.Contains(out, "level=WARN msg=\"the store does not answer") || !strings.Contains(out, memstore.ErrDown.Error()) {
			t.Fatalf("no warning with the cause:\n%s", out)
		}
		time.Sleep(probeFirstGap)
		synctest.Wait()
		if out := buf.String(); strings.Count(out, "level=WARN") != 1 || !strings.Contains(out, "level=DEBUG msg=\"the store still does not answer") {
			t.Fatalf("a repeated cause is not logged at debug level only:\n%s", out)
		}
		store.SetDown(false)
		time.Sleep(2 * probeFirstGap)
		synctest.Wait()
		if out := buf.String(); !strings.Contains(out, "level=INFO msg=\"the store answers\" upstream=memory endpoint=memory leader=memory") {
			t.Fatalf("no line when the store answered:\n%s", out)
		}
		before := buf.String()
		time.Sleep(probeMaxGap)
		synctest.Wait()
		if after := buf.String(); after != before {
			t.Fatalf("the probe went on after the store answered:\n%s", strings.TrimPrefix(after, before))
		}
	})
}

// /v1/status/leader and /v1/status/peers answer as Consul does, to the real
// client, and /readyz is 200 "ok"; while the store does not answer, all
// three are 503 with the reason (/livez stays 200), and /readyz is 503
// once Shutdown began.
func TestLeaderPeersReady(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ta, store := memAgent(t, nil)
		status := ta.consul(t).Status()
		if leader, err := status.Leader(); err != nil || leader != "memory" {
			t.Fatalf("Leader() = %q, %v", leader, err)
		}
		if peers, err := status.Peers(); err != nil || !slices.Equal(peers, []string{"memory"}) {
			t.Fatalf("Peers() = %q, %v", peers, err)
		}
		if resp, body := ta.do(t, "GET", "/readyz", nil); resp.StatusCode != 200 || body != "ok\n" {
			t.Fatalf("/readyz = %d %q", resp.StatusCode, body)
		}
		store.SetDown(true)
		if resp, body := ta.do(t, "GET", "/livez", nil); resp.StatusCode != 200 || body != "ok\n" {
			t.Fatalf("/livez with the store down = %d %q", resp.StatusCode, body)
		}
		for _, path := range []string{"/v1/status/leader", "/v1/status/peers", "/readyz"} {
			resp, body := ta.do(t, "GET", path, nil)
			if resp.StatusCode != 503 || !strings.Contains(body, memstore.ErrDown.Error()) {
				t.Errorf("%s with the store down = %d %q", path, resp.StatusCode, body)
			}
		}
		if _, err := status.Leader(); err == nil {
			t.Error("Leader() with the store down: no error")
		}
		store.SetDown(false)
		if resp, _ := ta.do(t, "GET", "/readyz", nil); resp.StatusCode != 200 {
			t.Fatalf("/readyz after the outage = %d", resp.StatusCode)
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		if err := ta.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
		rec := httptest.NewRecorder()
		ta.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
		if rec.Code != 503 || !strings.Contains(rec.Body.String(), "shutting down") {
			t.Fatalf("/readyz during shutdown = %d %q", rec.Code, rec.Body)
		}
	})
}

// The JSON of one published value is rendered once and shared: every GET
// and every event stream sends the same bytes.
func TestRenderedOncePerValue(t *testing.T) {
	v := kvstore.NewPrefix([]kvstore.Entry{{Key: "a", Value: []byte("1"), CreateIndex: 2, ModifyIndex: 2}})
	first, second := renderPrefix(v), renderPrefix(v)
	if string(first.body) != `[{"LockIndex":0,"Key":"a","Flags":0,"Value":"MQ==","CreateIndex":2,"ModifyIndex":2}]` {
		t.Fatalf("rendering = %s", first.body)
	}
	if unsafe.SliceData(first.body) != unsafe.SliceData(second.body) {
		t.Fatal("two readers of one value got two renderings")
	}
	k := kvstore.NewKey(kvstore.Entry{Key: "k", Value: []byte("v")}, true)
	if a, b := renderKey(false)(k), renderKey(false)(k); unsafe.SliceData(a.body) != unsafe.SliceData(b.body) {
		t.Fatal("two readers of one key got two renderings")
	}
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

// Every request is logged once answered: successes at debug, 4xx at info,
// 5xx at warn, with method, path, status, duration, X-Cache and the
// identity's name, and never a token or a password.
func TestRequestLog(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var buf syncBuffer
		log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
		ta, store := memAgentLogging(t, map[string]memstore.User{
			"alice": {Password: "alice-password", Tokens: []string{"alice-secret-token"}, Prefixes: []string{"a/"}},
		}, log)
		ta.do(t, "PUT", "/v1/kv/a/k", strings.NewReader("v"), "X-Consul-Token", "alice-secret-token")
		ta.do(t, "GET", "/v1/kv/a/k", nil, "Authorization", "Basic "+basicAuth("alice", "alice-password"))
		ta.do(t, "GET", "/v1/kv/b/k", nil, "X-Consul-Token", "alice-secret-token")
		store.SetDown(true)
		ta.do(t, "PUT", "/v1/kv/a/k", strings.NewReader("v2"))
		out := buf.String()
		for _, want := range []string{
			`level=DEBUG msg=request method=PUT path=/v1/kv/a/k status=200`,
			`level=DEBUG msg=request method=GET path=/v1/kv/a/k status=200 duration=`,
			`cache=MISS identity=alice`,
			`level=INFO msg=request method=GET path=/v1/kv/b/k status=403`,
			`level=WARN msg=request method=PUT path=/v1/kv/a/k status=503`,
		} {
			if !strings.Contains(out, want) {
				t.Errorf("the log lacks %q:\n%s", want, out)
			}
		}
		for _, secret := range []string{"alice-secret-token", "alice-password"} {
			if strings.Contains(out, secret) {
				t.Errorf("the log shows %q:\n%s", secret, out)
			}
		}
	})
}

func basicAuth(user, password string) string {
	return base64Std.EncodeToString([]byte(user + ":" + password))
}

var base64Std = stdbase64.StdEncoding

// syncBuffer is a bytes.Buffer safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A stream resumed with a Last-Event-ID above the store's current index
// (the store was restored or rebuilt since) gets the current state at
// once, as a reset; so does a stream whose store is reset while it runs.
func TestSSEResets(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ta, store := memAgent(t, nil)
		ta.do(t, "PUT", "/v1/kv/cfg", strings.NewReader("now"))
		ctx, cancel := context.WithCancel(testCtx(t))
		defer cancel()
		events := ta.sse(t, ctx, "/v1/watch/kv/cfg", "Last-Event-ID", "1000")
		synctest.Wait()
		ev := nextEvent(t, events)
		if ev.event != "reset" || !strings.Contains(ev.data, base64("now")) {
			t.Fatalf("resumed above the current index: first event %+v, want a reset with the current state", ev)
		}
		ta.do(t, "PUT", "/v1/kv/cfg", strings.NewReader("next"))
		if ev := nextEvent(t, events); ev.event != "kv" || !strings.Contains(ev.data, base64("next")) {
			t.Fatalf("then %+v, want the next change", ev)
		}
		store.Reset()
		store.Put(ctx, watchcache.Partition{}, "cfg", []byte("rebuilt"))
		synctest.Wait()
		for {
			ev := nextEvent(t, events)
			if strings.Contains(ev.data, base64("rebuilt")) || ev.data == "[]" {
				if ev.event != "reset" {
					t.Fatalf("after the store was rebuilt: %+v, want a reset", ev)
				}
				break
			}
		}
	})
}

// A client that stops reading its event stream is dropped when an event
// is not taken within EventWriteTimeout, and counted; the agent shuts down
// at once even while a stuck client holds a stream.
func TestSSEStuckClient(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ta, _ := memAgent(t, nil)
		ta.do(t, "PUT", "/v1/kv/cfg", strings.NewReader("v"))
		stuck := func() net.Conn {
			conn, err := ta.dial(t.Context(), "", "")
			if err != nil {
				t.Fatal(err)
			}
			go io.WriteString(conn, "GET /v1/watch/kv/cfg HTTP/1.1\r\nHost: agent\r\n\r\n")
			return conn // never read: a pipe has no buffer, so the stream's first write blocks
		}
		first := stuck()
		defer first.Close()
		synctest.Wait()
		time.Sleep(11 * time.Second) // past EventWriteTimeout
		synctest.Wait()
		_, body := ta.do(t, "GET", "/metrics", nil)
		if !strings.Contains(body, "watchcache_agent_event_streams_dropped_total 1") {
			t.Fatalf("a stuck stream was not dropped and counted:\n%s", grepLines(body, "dropped"))
		}

		second := stuck()
		defer second.Close()
		synctest.Wait()
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := ta.Shutdown(ctx); err != nil {
			t.Fatalf("Shutdown with a stuck stream: %v", err)
		}
		if took := time.Since(start); took > time.Second {
			t.Fatalf("Shutdown with a stuck stream took %v", took)
		}
	})
}

// A client that takes a large event slowly but steadily is not dropped:
// the write deadline applies to each piece of an event, not to the whole.
func TestSSESlowReaderKept(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ta, _ := memAgent(t, nil)
		value := strings.Repeat("v", MaxValueSize)
		for _, k := range []string{"a", "b", "c", "d"} { // an event of about 2.7 MiB of JSON
			ta.do(t, "PUT", "/v1/kv/big/"+k, strings.NewReader(value))
		}
		conn, err := ta.dial(t.Context(), "", "")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		go io.WriteString(conn, "GET /v1/watch/kv/big/?recurse HTTP/1.1\r\nHost: agent\r\n\r\n")
		// 64 KiB a second: the whole event takes about 40s, 4 times
		// EventWriteTimeout; a piece, a second.
		buf := make([]byte, 64<<10)
		read := 0
		for read < 4*MaxValueSize*4/3 {
			n, err := conn.Read(buf)
			if err != nil {
				t.Fatalf("after %d bytes: %v", read, err)
			}
			read += n
			time.Sleep(time.Second)
		}
		_, body := ta.do(t, "GET", "/metrics", nil)
		if !strings.Contains(body, "watchcache_agent_event_streams_dropped_total 0") {
			t.Fatalf("a slow reader was dropped:\n%s", grepLines(body, "dropped"))
		}
	})
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
