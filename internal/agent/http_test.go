package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// do sends a request to the agent and returns the response with its body.
func (ta *testAgent) do(t testing.TB, method, path string, body io.Reader, header ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(testCtx(t), method, ta.url+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// Every kind of bad request gets a 400 (or 405) whose message names what
// is wrong; nothing reaches etcd.
func TestHTTPBadRequests(t *testing.T) {
	ta := startAgent(t)
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
		{"PUT", "/v1/kv/k?release=abc", "v", nil, 400, `"release" is not supported`},
		{"PUT", "/v1/kv/k?cas=minus", "v", nil, 400, `"cas": "minus"`},
		{"PUT", "/v1/kv/k", big, nil, 400, `larger than 524288 bytes`},
		{"PUT", "/v1/kv/", "v", nil, 400, `needs a key`},
		{"DELETE", "/v1/kv/k?recurse&cas=1", "", nil, 400, `cannot be combined`},
		{"POST", "/v1/kv/k", "", nil, 405, `method not allowed`},
		{"PUT", "/v1/session/create", "", nil, 400, `/v1/session/create is not served`},
		{"GET", "/v1/catalog/services", "", nil, 400, `is not served`},
		{"GET", "/v1/watch/kv/k", "", []string{"Last-Event-ID", "yesterday"}, 400, `Last-Event-ID`},
		{"GET", "/v1/watch/kv/k?keys", "", nil, 400, `unknown parameter "keys"`},
		{"GET", "/v1/kv/k", "", []string{"X-Consul-Token", "t"}, 403, `ACL not found`},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			resp, body := ta.do(t, tc.method, tc.path, strings.NewReader(tc.body), tc.header...)
			if resp.StatusCode != tc.status || !strings.Contains(body, tc.want) {
				t.Fatalf("%d %q, want %d mentioning %s", resp.StatusCode, body, tc.status, tc.want)
			}
		})
	}
	if resp, _ := ta.do(t, "GET", "/v1/kv/k", nil); resp.StatusCode != 404 {
		t.Fatalf("the key was written by a bad request: %d", resp.StatusCode)
	}
}

// Reads carry Consul's headers: X-Consul-Index (also on 404, so clients
// can block on a key that does not exist yet), X-Consul-KnownLeader,
// X-Consul-LastContact, X-Cache and Age; ?raw returns the bare value;
// ?consistent and Cache-Control: no-cache read through to etcd.
func TestHTTPReadHeaders(t *testing.T) {
	ta := startAgent(t)
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
	// Behind the cache's back, then read through.
	if _, err := ta.etcd.Client(t).Put(testCtx(t), "k", "direct"); err != nil {
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
}

func index(t testing.TB, resp *http.Response) uint64 {
	t.Helper()
	n, err := strconv.ParseUint(resp.Header.Get("X-Consul-Index"), 10, 64)
	if err != nil {
		t.Fatalf("X-Consul-Index %q: %v", resp.Header.Get("X-Consul-Index"), err)
	}
	return n
}

// When etcd is unreachable, plain reads keep serving the last value with
// its Age, blocking reads and writes fail with a 5xx naming the problem,
// max-age is honoured with stale-if-error, and all recovers when etcd is
// back.
func TestHTTPEtcdOutage(t *testing.T) {
	ta := startAgent(t)
	ta.do(t, "PUT", "/v1/kv/k", strings.NewReader("v1"))
	resp, _ := ta.do(t, "GET", "/v1/kv/k", nil)
	idx := index(t, resp)
	ta.etcd.StopMember(0)

	deadline := time.Now().Add(waitFor)
	for {
		resp, body := ta.do(t, "GET", "/v1/kv/k?raw", nil)
		if resp.StatusCode != 200 || body != "v1" {
			t.Fatalf("plain GET during the outage = %d %q, want the last value", resp.StatusCode, body)
		}
		if age, _ := strconv.Atoi(resp.Header.Get("Age")); age >= 1 && resp.Header.Get("X-Consul-KnownLeader") == "false" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Age never grew: %v", resp.Header)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if resp, body := ta.do(t, "GET", fmt.Sprintf("/v1/kv/k?index=%d&wait=5s", idx), nil); resp.StatusCode < 500 || !strings.Contains(body, "etcd") {
		t.Fatalf("blocking GET during the outage = %d %q, want a 5xx naming etcd", resp.StatusCode, body)
	}
	if resp, body := ta.do(t, "GET", "/v1/kv/k?raw", nil, "Cache-Control", "max-age=0"); resp.StatusCode < 500 {
		t.Fatalf("max-age=0 during the outage = %d %q, want a 5xx", resp.StatusCode, body)
	}
	if resp, body := ta.do(t, "GET", "/v1/kv/k?raw", nil, "Cache-Control", "max-age=0, stale-if-error=3600"); resp.StatusCode != 200 || body != "v1" {
		t.Fatalf("stale-if-error during the outage = %d %q, want the last value", resp.StatusCode, body)
	}
	if resp, body := ta.do(t, "PUT", "/v1/kv/k", strings.NewReader("v2")); resp.StatusCode < 500 || body == "" {
		t.Fatalf("PUT during the outage = %d %q, want a 5xx with the reason", resp.StatusCode, body)
	}

	ta.etcd.RestartMember(t, 0)
	for {
		resp, body := ta.do(t, "PUT", "/v1/kv/k", strings.NewReader("v3"))
		if resp.StatusCode == 200 && body == "true" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("PUT after recovery = %d %q", resp.StatusCode, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if resp, body := ta.do(t, "GET", "/v1/kv/k?raw", nil); body != "v3" || resp.Header.Get("Age") != "0" {
		t.Fatalf("GET after recovery = %q, Age %s", body, resp.Header.Get("Age"))
	}
}

// sseEvent is one Server-Sent Event.
type sseEvent struct{ id, event, data string }

// sse opens the watch stream of path and returns its events.
func (ta *testAgent) sse(t testing.TB, ctx context.Context, path string, header ...string) <-chan sseEvent {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "GET", ta.url+path, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("watch %s: %d %v", path, resp.StatusCode, resp.Header)
	}
	out := make(chan sseEvent, 100)
	go func() {
		defer close(out)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.event != "" {
					out <- ev
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, "id: "):
				ev.id = line[4:]
			case strings.HasPrefix(line, "event: "):
				ev.event = line[7:]
			case strings.HasPrefix(line, "data: "):
				ev.data = line[6:]
			}
		}
	}()
	return out
}

func nextEvent(t testing.TB, ch <-chan sseEvent) sseEvent {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("stream ended")
		}
		return ev
	case <-time.After(waitFor):
		t.Fatal("no event")
	}
	return sseEvent{}
}

// The watch stream pushes every change in order, and a client that
// reconnects with Last-Event-ID misses nothing that is still current.
func TestSSEWatch(t *testing.T) {
	ta := startAgent(t)
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
}

func base64(s string) string {
	b, _ := json.Marshal([]byte(s))
	return strings.Trim(string(b), `"`)
}

// Shutdown answers blocking queries at once with the current value and
// ends event streams.
func TestShutdownAnswersBlockingQueries(t *testing.T) {
	ta := startAgent(t)
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
}

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

// /v1/status reports the cache and etcd; /metrics exports Prometheus
// metrics of the cache, the process and the Go runtime.
func TestStatusAndMetrics(t *testing.T) {
	ta := startAgent(t)
	ta.do(t, "PUT", "/v1/kv/k", strings.NewReader("v"))
	ta.do(t, "GET", "/v1/kv/k", nil)
	ta.do(t, "GET", "/v1/kv/k", nil)
	resp, body := ta.do(t, "GET", "/v1/status", nil)
	var st statusReport
	if err := json.Unmarshal([]byte(body), &st); err != nil || resp.StatusCode != 200 {
		t.Fatalf("status = %d %s (%v)", resp.StatusCode, body, err)
	}
	if st.Entries != 1 || st.Hits < 1 || st.HitRatio <= 0 || !st.Upstream.Healthy || st.Upstream.Index == 0 || !strings.HasPrefix(st.Upstream.Store, "etcd ") {
		t.Fatalf("status = %+v", st)
	}
	_, body = ta.do(t, "GET", "/metrics", nil)
	for _, m := range []string{`watchcache_hits_total{kind="etcd-key"} `, `watchcache_entries{kind="etcd-key"} 1`, "process_resident_memory_bytes", "go_goroutines"} {
		if !strings.Contains(body, m) {
			t.Errorf("/metrics lacks %s", m)
		}
	}
	ta.etcd.StopMember(0)
	_, body = ta.do(t, "GET", "/v1/status", nil)
	json.Unmarshal([]byte(body), &st)
	if st.Upstream.Healthy || st.Upstream.Error == "" {
		t.Fatalf("status with etcd down = %+v", st.Upstream)
	}
}

// A stream opened right after a PUT starts at (or after) that write: the
// stream reads its entry with read-your-writes first.
func TestSSEAfterWrite(t *testing.T) {
	ta := startAgent(t)
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
}
