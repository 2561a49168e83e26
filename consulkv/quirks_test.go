package consulkv

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/goleak"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/pipetest"
	"github.com/watchcache/watchcache/kvstore"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// scripted is a test server that answers as Consul does in the hard
// cases: each request to the KV API goes to handle with its number
// (from 1), so a test scripts the server's answers in order.
type scripted struct {
	mu     sync.Mutex
	n      int
	seen   []*http.Request
	handle func(w http.ResponseWriter, r *http.Request, n int)
}

func (s *scripted) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.n++
	n := s.n
	s.seen = append(s.seen, r)
	s.mu.Unlock()
	s.handle(w, r, n)
}

// requests returns how many requests the server got.
func (s *scripted) requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// answer writes a KV answer as Consul does: the index and contact headers
// and the pairs as JSON, or a 404 when there are none.
func answer(w http.ResponseWriter, index uint64, pairs ...*api.KVPair) {
	h := w.Header()
	h.Set("X-Consul-Index", strconv.FormatUint(index, 10))
	h.Set("X-Consul-LastContact", "0")
	h.Set("X-Consul-KnownLeader", "true")
	if len(pairs) == 0 {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	h.Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(pairs)
}

func pair(key, value string, index uint64) *api.KVPair {
	return &api.KVPair{Key: key, Value: []byte(value), CreateIndex: 1, ModifyIndex: index}
}

// blocking reports whether r is a blocking query.
func blocking(r *http.Request) bool { return r.URL.Query().Get("index") != "" }

// hang waits, as a blocking query with nothing new, until the client goes
// away.
func hang(r *http.Request) { <-r.Context().Done() }

// start serves s over in-memory connections and returns a Store on it,
// in a synctest bubble; everything stops when the test ends.
func start(t *testing.T, s *scripted, mod ...func(*Config)) *Store {
	t.Helper()
	ln := pipetest.NewListener()
	srv := &http.Server{Handler: s}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	cfg := Config{Address: "http://consul.test:8500", HTTPTransport: ln.Transport(), QueryTimeout: time.Minute,
		Logger: slog.New(slog.DiscardHandler)}
	for _, m := range mod {
		m(&cfg)
	}
	src, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c, err := watchcache.New(watchcache.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	st, err := src.Register(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		src.Close()
		srv.Close()
		<-served
	})
	return st
}

func watchKey(t *testing.T, st *Store, key string) <-chan watchcache.UpdateEvent[kvstore.Key] {
	t.Helper()
	ch := make(chan watchcache.UpdateEvent[kvstore.Key], 16)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := st.Kinds().Key.Notify(ctx, kvstore.KeyRequest(key, watchcache.Partition{}), key, ch); err != nil {
		t.Fatal(err)
	}
	return ch
}

// next returns the event ready on ch, once every goroutine is blocked.
func next[V any](t *testing.T, ch <-chan watchcache.UpdateEvent[V]) watchcache.UpdateEvent[V] {
	t.Helper()
	synctest.Wait()
	select {
	case ev := <-ch:
		return ev
	default:
		t.Fatal("no event")
		panic("unreachable")
	}
}

func value(ev watchcache.UpdateEvent[kvstore.Key]) string { return string(ev.Result.Entry.Value) }

// An index that goes backwards (a snapshot restore, a server rebuilt) is
// delivered at once as a reset, and the watch follows the new index.
func TestIndexBackwardsIsAReset(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &scripted{handle: func(w http.ResponseWriter, r *http.Request, n int) {
			switch idx := r.URL.Query().Get("index"); {
			case n == 1:
				answer(w, 100, pair("k", "old", 100))
			case idx == "100":
				answer(w, 5, pair("k", "restored", 5))
			case idx == "5" && n == 3:
				answer(w, 6, pair("k", "after", 6))
			default:
				hang(r)
			}
		}}
		st := start(t, s)
		ch := watchKey(t, st, "k")
		if ev := next(t, ch); value(ev) != "old" || ev.Meta.Index != 100 {
			t.Fatalf("first event = %q at %d", value(ev), ev.Meta.Index)
		}
		if ev := next(t, ch); value(ev) != "restored" || ev.Meta.Index != 5 {
			t.Fatalf("after the index went back: %q at %d, want restored at 5 at once", value(ev), ev.Meta.Index)
		}
		if ev := next(t, ch); value(ev) != "after" || ev.Meta.Index != 6 {
			t.Fatalf("then: %q at %d, want after at 6", value(ev), ev.Meta.Index)
		}
	})
}

// A server that answers X-Consul-Index: 0 at once, blocking or not, gets
// index 1 published and its queries backed off: it cannot make the source
// spin.
func TestZeroIndexDoesNotSpin(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &scripted{handle: func(w http.ResponseWriter, r *http.Request, n int) {
			answer(w, 0, pair("k", "v", 0))
		}}
		st := start(t, s)
		v, meta, err := st.GetKey(context.Background(), kvstore.KeyRequest("k", watchcache.Partition{}))
		if err != nil || string(v.Entry.Value) != "v" || meta.Index != 1 {
			t.Fatalf("GetKey = %q at %d, %v; want v at index 1", v.Entry.Value, meta.Index, err)
		}
		time.Sleep(time.Minute)
		if n := s.requests(); n > 15 {
			t.Fatalf("%d requests in a minute to a server answering index 0: the source spins", n)
		}
	})
}

// "ACL not found" and "Permission denied" are fatal for the entry: the
// error says which, the value is withheld, and the refresh stops.
func TestAccessErrorsAreFatal(t *testing.T) {
	for _, tc := range []struct {
		body string
		want error
	}{
		{"ACL not found", kvstore.ErrAuthFailed},
		{"Permission denied: token with AccessorID '00000000' lacks permission 'key:read' on \"k\"", kvstore.ErrPermissionDenied},
	} {
		synctest.Test(t, func(t *testing.T) {
			s := &scripted{handle: func(w http.ResponseWriter, r *http.Request, n int) {
				http.Error(w, tc.body, http.StatusForbidden)
			}}
			st := start(t, s)
			_, _, err := st.GetKey(context.Background(), kvstore.KeyRequest("k", watchcache.Partition{}))
			if !errors.Is(err, tc.want) || !errors.Is(err, watchcache.ErrFatal) {
				t.Fatalf("403 %q: err = %v, want a fatal %v", tc.body, err, tc.want)
			}
			n := s.requests()
			time.Sleep(10 * time.Minute)
			if more := s.requests() - n; more != 0 {
				t.Fatalf("403 %q: %d more requests after it; the refresh should stop", tc.body, more)
			}
		})
	}
}

// 500 "No cluster leader", 429 rate limiting and a connection reset in
// the middle of a blocking query are transient: plain reads keep serving
// the last value with a growing Age, watchers hear of the failure once,
// the source backs off, and it recovers by itself.
func TestTransientErrorsBackOffAndRecover(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		failures := 0
		s := &scripted{handle: func(w http.ResponseWriter, r *http.Request, n int) {
			mu.Lock()
			defer mu.Unlock()
			switch {
			case n == 1:
				answer(w, 10, pair("k", "a", 10))
			case n == 2: // the first blocking query: the connection drops
				hj, _ := w.(http.Hijacker)
				conn, _, _ := hj.Hijack()
				conn.Close()
			case failures < 4:
				failures++
				http.Error(w, "No cluster leader", http.StatusInternalServerError)
			case failures < 8:
				failures++
				http.Error(w, "rate limit exceeded", http.StatusTooManyRequests)
			case blocking(r) && r.URL.Query().Get("index") == "11":
				hang(r)
			default:
				answer(w, 11, pair("k", "b", 11))
			}
		}}
		st := start(t, s)
		ch := watchKey(t, st, "k")
		if ev := next(t, ch); value(ev) != "a" {
			t.Fatalf("first event = %+v", ev)
		}
		ev := next(t, ch)
		if ev.Err == nil || value(ev) != "a" {
			t.Fatalf("after the failures began: %+v, want the error with the last value", ev)
		}
		time.Sleep(2 * time.Second)
		v, meta, err := st.GetKey(context.Background(), kvstore.KeyRequest("k", watchcache.Partition{}))
		if err != nil || string(v.Entry.Value) != "a" || meta.Age < 2*time.Second {
			t.Fatalf("GetKey during the failures = %q, Age %v, %v; want a with a growing Age", v.Entry.Value, meta.Age, err)
		}
		time.Sleep(5 * time.Minute)
		for {
			ev := next(t, ch)
			if ev.Err == nil {
				if value(ev) != "b" {
					t.Fatalf("after recovery: %+v, want b", ev)
				}
				break
			}
			if value(ev) != "a" { // a new kind of failure (429 after 500) is told too
				t.Fatalf("failure event without the last value: %+v", ev)
			}
		}
		if n := s.requests(); n > 20 {
			t.Fatalf("%d requests for 9 failures: no backoff", n)
		}
	})
}

// A blocking query that returns before its wait with the same index is
// issued again, paced, and tells watchers nothing.
func TestEarlyReturnWithTheSameIndex(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &scripted{handle: func(w http.ResponseWriter, r *http.Request, n int) {
			answer(w, 10, pair("k", "a", 10))
		}}
		st := start(t, s)
		ch := watchKey(t, st, "k")
		next(t, ch)
		time.Sleep(time.Minute)
		synctest.Wait()
		select {
		case ev := <-ch:
			t.Fatalf("an event for an early return with the same index: %+v", ev)
		default:
		}
		if n := s.requests(); n < 3 || n > 100 {
			t.Fatalf("%d queries in a minute of early returns; want them re-issued, but paced", n)
		}
	})
}

// Keys go to the server exactly as given, whatever they contain; reads,
// writes and deletes alike.
func TestKeysVerbatim(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &scripted{handle: func(w http.ResponseWriter, r *http.Request, n int) {
			switch r.Method {
			case http.MethodGet:
				answer(w, 7, pair(strings.TrimPrefix(r.URL.Path, "/v1/kv/"), "v", 7))
			default:
				io.Copy(io.Discard, r.Body)
				w.Write([]byte("true"))
			}
		}}
		st := start(t, s)
		keys := []string{"/config/db", "//double", "a//b", "sp ace", "ü/ñ", "100%", "what?", "hash#tag", "plus+sign", "trailing/"}
		ctx := context.Background()
		p := watchcache.Partition{}
		for _, key := range keys {
			if _, _, err := st.GetKey(ctx, kvstore.KeyRequest(key, p)); err != nil {
				t.Fatalf("GetKey(%q): %v", key, err)
			}
			if err := st.Put(ctx, p, key, []byte("x")); err != nil {
				t.Fatalf("Put(%q): %v", key, err)
			}
			if err := st.Delete(ctx, p, key); err != nil {
				t.Fatalf("Delete(%q): %v", key, err)
			}
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, r := range s.seen {
			key := strings.TrimPrefix(r.URL.Path, "/v1/kv/")
			found := false
			for _, k := range keys {
				found = found || k == key
			}
			if !found {
				t.Errorf("%s %s: key %q is none of those asked for", r.Method, r.URL.EscapedPath(), key)
			}
		}
	})
}

// Each token is its own partition and goes along with every request made
// for it; basic auth credentials go along too; the zero Partition is the
// source's own token.
func TestIdentitiesGoAlong(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := &scripted{handle: func(w http.ResponseWriter, r *http.Request, n int) {
			who := r.Header.Get("X-Consul-Token")
			if u, _, ok := r.BasicAuth(); ok {
				who = "basic:" + u
			}
			if blocking(r) {
				hang(r)
				return
			}
			answer(w, 3, pair("k", who, 3))
		}}
		st := start(t, s, func(c *Config) { c.Token = "own" })
		ctx := context.Background()
		for _, tc := range []struct {
			c    kvstore.Credentials
			want string
		}{
			{kvstore.Credentials{}, "own"},
			{kvstore.Credentials{Token: "alice-token"}, "alice-token"},
			{kvstore.Credentials{Token: "bob-token"}, "bob-token"},
			{kvstore.Credentials{User: "carol", Password: "pw"}, "basic:carol"},
		} {
			p, err := st.Identify(ctx, tc.c)
			if err != nil {
				t.Fatal(err)
			}
			v, _, err := st.GetKey(ctx, kvstore.KeyRequest("k", p))
			if err != nil || string(v.Entry.Value) != tc.want {
				t.Fatalf("GetKey as %+v = %q, %v; want the server to see %q", tc.c, v.Entry.Value, err, tc.want)
			}
		}
		if _, err := st.Identify(ctx, kvstore.Credentials{Token: "t", User: "u"}); !errors.Is(err, watchcache.ErrInvalid) {
			t.Fatalf("both a token and basic auth: %v, want ErrInvalid", err)
		}
	})
}
