package agent

// What operators see: store outages, /v1/status, /metrics, the startup
// probe, leader and peers, the request log, shutdown. In-memory store
// inside synctest bubbles.

import (
	"bytes"
	"context"
	stdbase64 "encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/watchcache/watchcache/internal/memstore"
)

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
		// Past the longest backoff, and not at the instant the agent closes
		// the idle connection (idleTimeout, 2 min): the PUT would race it.
		time.Sleep(2*time.Minute + time.Second)
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
