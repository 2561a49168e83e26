package agent

// The HTTP contract, tested against an in-memory store inside synctest
// bubbles: fake time, no real-time polling. This file holds requests and
// answers; the event stream, Consul's clients and what operators see are
// in sse_, consul_ and ops_contract_test.go. The end-to-end tests on real
// etcd are in e2e_test.go.

import (
	"encoding/json"
	"strings"
	"testing"
	"testing/synctest"
	"unsafe"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/kvstore"
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
