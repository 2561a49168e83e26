package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// kvData is the data of a kv event: pairs as key, value, ModifyIndex.
func kvData(kvs ...any) string {
	var parts []string
	for i := 0; i+2 < len(kvs); i += 3 {
		parts = append(parts, fmt.Sprintf(`{"LockIndex":0,"Key":%q,"Flags":0,"Value":%q,"CreateIndex":1,"ModifyIndex":%d}`,
			kvs[i], base64.StdEncoding.EncodeToString([]byte(kvs[i+1].(string))), kvs[i+2]))
	}
	return "[" + strings.Join(parts, ",") + "]"
}

// fakeAgent serves the watch endpoint with a script: the i-th connection
// runs streams[i] (the last one is reused). It records each connection's
// request. Reads of /v1/kv/ get a 404 and are counted apart: watch must
// not need them (the agent's stream starts with read-your-writes).
type fakeAgent struct {
	*httptest.Server
	mu       sync.Mutex // protects requests and reads
	requests []*http.Request
	reads    []string // the URLs of /v1/kv/ requests
}

// startFakeAgent starts a fake agent, closed when the test ends (after the
// test's commands returned, which ends every stream).
func startFakeAgent(t *testing.T, streams ...func(w http.ResponseWriter, r *http.Request)) *fakeAgent {
	fa := &fakeAgent{}
	fa.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fa.mu.Lock()
		if strings.HasPrefix(r.URL.Path, "/v1/kv/") {
			fa.reads = append(fa.reads, r.URL.String())
			fa.mu.Unlock()
			http.NotFound(w, r)
			return
		}
		n := len(fa.requests)
		fa.requests = append(fa.requests, r)
		fa.mu.Unlock()
		streams[min(n, len(streams)-1)](w, r)
	}))
	t.Cleanup(fa.Close)
	return fa
}

func (fa *fakeAgent) request(i int) *http.Request {
	fa.mu.Lock()
	defer fa.mu.Unlock()
	return fa.requests[i]
}

// sendEvents answers with an event stream of the given raw events, then
// holds the stream open until the client goes (hold) or ends it.
func sendEvents(hold bool, events ...string) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "retry: 1\n\n") // reconnect at once: the tests do not wait
		for _, ev := range events {
			fmt.Fprint(w, ev)
		}
		w.(http.Flusher).Flush()
		if hold {
			<-r.Context().Done()
		}
	}
}

// startWatch runs the watch command in a goroutine until the returned
// stop is called; stop returns its status.
func startWatch(t *testing.T, getenv func(string) string, args ...string) (stdout, stderr *lineWriter, stop func() int) {
	ctx, cancel := context.WithCancel(context.Background())
	stdout, stderr = newLineWriter(), newLineWriter()
	done := make(chan int, 1)
	go func() { done <- run(ctx, append([]string{"watch"}, args...), nil, stdout, stderr, getenv) }()
	var once sync.Once
	code := -1
	stop = func() int {
		once.Do(func() {
			cancel()
			code = <-done
		})
		return code
	}
	t.Cleanup(func() { stop() })
	return stdout, stderr, stop
}

// A dropped stream is made again with Last-Event-ID, and printing goes on
// from there; cancelling the watch (Ctrl-C) ends it with status 0.
func TestWatchReconnects(t *testing.T) {
	fa := startFakeAgent(t,
		sendEvents(false, "id: 5\nevent: kv\ndata: "+kvData("app/db", "postgres", 5)+"\n\n"),
		sendEvents(true, ": heartbeat\n\nid: 9\nevent: kv\ndata: "+kvData("app/db", "mysql", 9)+"\n\n"),
	)
	stdout, stderr, stop := startWatch(t, env(map[string]string{"WATCHCACHE_HTTP_ADDR": fa.URL}), "app/db")
	for _, want := range []string{"5 app/db postgres", "9 app/db mysql"} {
		if got := stdout.next(t); got != want {
			t.Fatalf("line %q, want %q", got, want)
		}
	}
	stderr.waitForLine(t, "the agent ended the event stream; reconnecting in")
	if code := stop(); code != exitOK {
		t.Fatalf("status %d after cancel, want 0; stderr:\n%s", code, stderr.String())
	}
	if got := fa.request(0).Header.Get("Last-Event-ID"); got != "" {
		t.Errorf("first connection sent Last-Event-ID %q", got)
	}
	if got := fa.request(1).Header.Get("Last-Event-ID"); got != "5" {
		t.Errorf("reconnection sent Last-Event-ID %q, want 5", got)
	}
	if got := fa.request(1).URL.String(); got != "/v1/watch/kv/app/db" {
		t.Errorf("watch URL %q", got)
	}
	fa.mu.Lock()
	defer fa.mu.Unlock()
	if len(fa.reads) != 0 {
		t.Errorf("watch read %q besides its stream", fa.reads)
	}
}

// Key mode prints one line per change of KEY: (missing) before it exists,
// (deleted) after, and nothing when a state repeats (after a reconnection);
// odd keys and values are quoted so that each change stays one line.
func TestWatchKeyLines(t *testing.T) {
	fa := startFakeAgent(t, sendEvents(true,
		"id: 3\nevent: kv\ndata: []\n\n",
		"id: 4\nevent: kv\ndata: []\n\n",
		"id: 5\nevent: kv\ndata: "+kvData("a b", "line1\nline2", 5)+"\n\n",
		"id: 5\nevent: kv\ndata: "+kvData("a b", "line1\nline2", 5)+"\n\n",
		"id: 6\nevent: kv\ndata: "+kvData("a b", "", 6)+"\n\n",
		"id: 7\nevent: kv\ndata: "+kvData("a b", "(deleted)", 7)+"\n\n",
		"id: 8\nevent: kv\ndata: []\n\n",
		"id: 9\nevent: kv\ndata: "+kvData("a b", "x y", 9)+"\n\n",
	))
	stdout, _, stop := startWatch(t, env(nil), "-http-addr", fa.URL, "a b")
	for _, want := range []string{
		`3 "a b" (missing)`,
		`5 "a b" "line1\nline2"`,
		`6 "a b" ""`,
		`7 "a b" "(deleted)"`,
		`8 "a b" (deleted)`,
		`9 "a b" x y`,
	} {
		if got := stdout.next(t); got != want {
			t.Fatalf("line %q, want %q", got, want)
		}
	}
	if code := stop(); code != exitOK {
		t.Fatalf("status %d", code)
	}
}

// Prefix mode prints the current keys, then one line per key written or
// deleted, in key order.
func TestWatchPrefixLines(t *testing.T) {
	fa := startFakeAgent(t, sendEvents(true,
		"id: 4\nevent: kv\ndata: "+kvData("app/a", "1", 2, "app/b", "2", 4)+"\n\n",
		"id: 6\nevent: kv\ndata: "+kvData("app/a", "1", 2, "app/b", "3", 6)+"\n\n",
		"id: 8\nevent: kv\ndata: "+kvData("app/c", "4", 8)+"\n\n",
		"id: 9\nevent: kv\ndata: []\n\n",
	))
	stdout, _, stop := startWatch(t, env(nil), "-http-addr", fa.URL, "-prefix", "app/")
	for _, want := range []string{"4 app/a 1", "4 app/b 2", "6 app/b 3", "8 app/a (deleted)", "8 app/b (deleted)", "8 app/c 4", "9 app/c (deleted)"} {
		if got := stdout.next(t); got != want {
			t.Fatalf("line %q, want %q", got, want)
		}
	}
	if code := stop(); code != exitOK {
		t.Fatalf("status %d", code)
	}
	if got := fa.request(0).URL.String(); got != "/v1/watch/kv/app/?recurse" {
		t.Errorf("watch URL %q", got)
	}
	fa.mu.Lock()
	defer fa.mu.Unlock()
	if len(fa.reads) != 0 {
		t.Errorf("watch read %q besides its stream", fa.reads)
	}
}

// A reset event (the store's history restarted) is printed as a reset line
// followed by the whole current state, deletions included, even where the
// new history reuses a ModifyIndex the old one had.
func TestWatchResetLines(t *testing.T) {
	for _, tc := range []struct {
		name   string
		args   []string
		events []string
		want   []string
	}{
		{"prefix", []string{"-prefix", "app/"}, []string{
			"id: 9\nevent: kv\ndata: " + kvData("app/a", "1", 2, "app/b", "2", 9) + "\n\n",
			"id: 3\nevent: reset\ndata: " + kvData("app/a", "1", 2, "app/c", "x", 3) + "\n\n",
			"id: 4\nevent: kv\ndata: " + kvData("app/a", "1", 2, "app/c", "y", 4) + "\n\n",
		}, []string{"9 app/a 1", "9 app/b 2", "3 (reset)", "3 app/a 1", "3 app/b (deleted)", "3 app/c x", "4 app/c y"}},
		{"key deleted", []string{"app/db"}, []string{
			"id: 9\nevent: kv\ndata: " + kvData("app/db", "v", 9) + "\n\n",
			"id: 2\nevent: reset\ndata: []\n\n",
		}, []string{"9 app/db v", "2 (reset)", "2 app/db (deleted)"}},
		{"key same index", []string{"app/db"}, []string{
			"id: 5\nevent: kv\ndata: " + kvData("app/db", "old", 5) + "\n\n",
			"id: 5\nevent: reset\ndata: " + kvData("app/db", "new", 5) + "\n\n",
		}, []string{"5 app/db old", "5 (reset)", "5 app/db new"}},
		{"key missing", []string{"app/db"}, []string{
			"id: 5\nevent: kv\ndata: []\n\n",
			"id: 1\nevent: reset\ndata: []\n\n",
		}, []string{"5 app/db (missing)", "1 (reset)", "1 app/db (missing)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fa := startFakeAgent(t, sendEvents(true, tc.events...))
			stdout, _, stop := startWatch(t, env(nil), append([]string{"-http-addr", fa.URL}, tc.args...)...)
			for _, want := range tc.want {
				if got := stdout.next(t); got != want {
					t.Fatalf("line %q, want %q", got, want)
				}
			}
			if code := stop(); code != exitOK {
				t.Fatalf("status %d", code)
			}
		})
	}
}

// The agent refusing a watch ends it with status 1 and the agent's
// message: an HTTP error status, or an error event that ends the stream.
// An error event on a stream that goes on is reported and the watch
// continues.
func TestWatchErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		stream func(http.ResponseWriter, *http.Request)
		want   []string
	}{
		{"403", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "ACL not found", http.StatusForbidden) },
			[]string{"Error! watching app/db: the agent answered 403 Forbidden: ACL not found"}},
		{"400", func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, `bad query parameter: unknown parameter "x"`, http.StatusBadRequest)
		},
			[]string{`the agent answered 400 Bad Request: bad query parameter: unknown parameter "x"`}},
		{"503 before the first stream", func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "agent is shutting down", http.StatusServiceUnavailable)
		},
			[]string{"503 Service Unavailable: agent is shutting down"}},
		{"error event ends the stream", sendEvents(false, "id: 3\nevent: kv\ndata: []\n\n",
			"event: error\ndata: {\"error\":\"Permission denied: etcdserver: permission denied\"}\n\n"),
			[]string{"watchcache watch: the agent reports: Permission denied: etcdserver: permission denied",
				"Error! watching app/db: the agent ended the stream: Permission denied"}},
		{"not an event stream", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "<html>") },
			[]string{"not an event stream: is it a watchcache agent?"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fa := startFakeAgent(t, tc.stream)
			code, _, stderr := runCmd(t, env(map[string]string{"WATCHCACHE_HTTP_ADDR": fa.URL}), "watch", "app/db")
			if code != exitError {
				t.Fatalf("status %d, stderr:\n%s\nwant 1", code, stderr)
			}
			for _, want := range tc.want {
				if !strings.Contains(stderr, want) {
					t.Errorf("stderr does not say %q:\n%s", want, stderr)
				}
			}
		})
	}

	t.Run("error event then more", func(t *testing.T) {
		fa := startFakeAgent(t, sendEvents(true,
			"id: 3\nevent: kv\ndata: "+kvData("app/db", "v", 3)+"\n\n",
			"event: error\ndata: {\"error\":\"etcd unavailable: context deadline exceeded\"}\n\n",
			"id: 4\nevent: kv\ndata: "+kvData("app/db", "w", 4)+"\n\n",
		))
		stdout, stderr, stop := startWatch(t, env(map[string]string{"WATCHCACHE_HTTP_ADDR": fa.URL}), "app/db")
		stdout.waitForLine(t, "4 app/db w")
		stderr.waitForLine(t, "the agent reports: etcd unavailable: context deadline exceeded")
		if code := stop(); code != exitOK {
			t.Fatalf("status %d", code)
		}
	})
}

// The commands that talk to an agent send the identity of their flags and
// nothing else: not a token that consul/api would take from
// CONSUL_HTTP_TOKEN.
func TestClientIdentity(t *testing.T) {
	t.Setenv("CONSUL_HTTP_TOKEN", "meant-for-consul")
	var mu sync.Mutex
	var got http.Header
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = r.Header.Clone()
		mu.Unlock()
		fmt.Fprint(w, kvData("k", "v", 2))
	}))
	defer srv.Close()
	for _, tc := range []struct {
		name      string
		args      []string
		env       map[string]string
		token     string
		basicUser string
	}{
		{"anonymous", nil, nil, "", ""},
		{"token flag", []string{"-token", "t1"}, nil, "t1", ""},
		{"token variable", nil, map[string]string{"WATCHCACHE_TOKEN": "t2"}, "t2", ""},
		{"basic auth", []string{"-user", "alice"}, map[string]string{"WATCHCACHE_PASSWORD": "pw"}, "", "alice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append(append([]string{"kv", "get", "-http-addr", srv.URL}, tc.args...), "k")
			code, stdout, stderr := runCmd(t, env(tc.env), args...)
			if code != exitOK || stdout != "v\n" {
				t.Fatalf("status %d, stdout %q, stderr %s", code, stdout, stderr)
			}
			mu.Lock()
			defer mu.Unlock()
			if tok := got.Get("X-Consul-Token"); tok != tc.token {
				t.Errorf("X-Consul-Token %q, want %q", tok, tc.token)
			}
			r := &http.Request{Header: got}
			user, password, ok := r.BasicAuth()
			if user != tc.basicUser || (ok && password != "pw") {
				t.Errorf("basic auth %q %q %v, want user %q", user, password, ok, tc.basicUser)
			}
		})
	}
}

// Bad client flags, variables or arguments are usage errors (status 2)
// that name the culprit; an agent that cannot be reached is status 1 with
// a hint.
func TestClientErrors(t *testing.T) {
	closed := freeAddr(t) // nothing listens there
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		code int
		want string
	}{
		{"get without key", []string{"kv", "get"}, nil, exitUsage, "want KEY (or -recurse or -keys to list from the root)"},
		{"put without key", []string{"kv", "put"}, nil, exitUsage, "want KEY [VALUE], got 0 argument(s)"},
		{"put with three arguments", []string{"kv", "put", "k", "v", "x"}, nil, exitUsage, `want KEY [VALUE], got 3 argument(s) (["k" "v" "x"])`},
		{"put a value that looks like a flag", []string{"kv", "put", "k", "-5"}, nil, exitUsage, "flag provided but not defined: -5\n(an argument that begins with '-' goes after --, e.g. watchcache kv put -- k -5)"},
		{"delete with two keys", []string{"kv", "delete", "a", "b"}, nil, exitUsage, "want KEY, got 2 argument(s)"},
		{"delete -recurse without key", []string{"kv", "delete", "-recurse"}, nil, exitUsage, "want KEY, got 0 argument(s)"},
		{"get -recurse and -keys", []string{"kv", "get", "-recurse", "-keys", "k"}, nil, exitUsage, "-recurse and -keys cannot be used together"},
		{"get -keys -detailed", []string{"kv", "get", "-keys", "-detailed"}, nil, exitUsage, "-keys prints names only"},
		{"get -detailed json", []string{"kv", "get", "-detailed", "-format", "json", "k"}, nil, exitUsage, "-detailed is a text format"},
		{"get -separator without -keys", []string{"kv", "get", "-separator", ":", "k"}, nil, exitUsage, "-separator applies to -keys"},
		{"get unknown format", []string{"kv", "get", "-format", "yaml", "k"}, nil, exitUsage, `invalid value "yaml" for flag -format: must be text or json`},
		{"put -modify-index without -cas", []string{"kv", "put", "-modify-index", "3", "k", "v"}, nil, exitUsage, "-modify-index applies to -cas"},
		{"put bad modify index", []string{"kv", "put", "-cas", "-modify-index", "-1", "k", "v"}, nil, exitUsage, "-modify-index"},
		{"delete -cas without index", []string{"kv", "delete", "-cas", "k"}, nil, exitUsage, "-cas needs -modify-index"},
		{"delete -cas -recurse", []string{"kv", "delete", "-cas", "-modify-index", "3", "-recurse", "k"}, nil, exitUsage, "cannot be used with -recurse"},
		{"export with two prefixes", []string{"kv", "export", "a", "b"}, nil, exitUsage, "want [PREFIX], got 2 argument(s)"},
		{"TLS files for plain http", []string{"kv", "get", "-ca-file", "ca.pem", "k"}, nil, exitUsage, "no such file"},
		{"watch without key", []string{"watch"}, nil, exitUsage, "watchcache watch: want KEY"},
		{"bad address", []string{"kv", "get", "-http-addr", "localhost", "k"}, nil, exitUsage, "-http-addr: not host:port"},
		{"bad address variable", []string{"watch", "k"}, map[string]string{"WATCHCACHE_HTTP_ADDR": "ftp://h:1"}, exitUsage, `WATCHCACHE_HTTP_ADDR: scheme "ftp": want http or https`},
		{"address with a path", []string{"kv", "put", "-http-addr", "http://h:1/x", "k", "v"}, nil, exitUsage, "-http-addr: want only a scheme and host:port"},
		{"token and user", []string{"kv", "get", "-token", "t", "-user", "u", "k"}, nil, exitUsage, "-token and -user cannot be used together"},
		{"password without user", []string{"kv", "get", "k"}, map[string]string{"WATCHCACHE_PASSWORD": "pw"}, exitUsage, "WATCHCACHE_PASSWORD needs -user"},
		{"unknown flag", []string{"kv", "get", "-prefix", "k"}, nil, exitUsage, "flag provided but not defined: -prefix"},
		{"unknown flag after the key", []string{"kv", "get", "k", "-rekurse"}, nil, exitUsage, "flag provided but not defined: -rekurse"},
		{"kv unreachable", []string{"kv", "get", "-http-addr", closed, "k"}, nil, exitError, "Error! reading k: cannot reach the agent at http://" + closed},
		{"watch unreachable", []string{"watch", "-http-addr", closed, "k"}, nil, exitError, "Error! watching k: cannot reach the agent at http://" + closed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCmd(t, env(tc.env), tc.args...)
			if code != tc.code || stdout != "" || !strings.Contains(stderr, tc.want) {
				t.Fatalf("status %d, stdout %q, stderr:\n%s\nwant status %d and %q", code, stdout, stderr, tc.code, tc.want)
			}
		})
	}
}

// quoteValue and quoteKey keep every change on one line and every line
// parseable: index, key, then the rest is the value.
func TestQuote(t *testing.T) {
	for _, tc := range []struct{ in, value, key string }{
		{"postgres", "postgres", "postgres"},
		{"a b", "a b", `"a b"`},
		{"", `""`, `""`},
		{"a\nb", `"a\nb"`, `"a\nb"`},
		{"tab\there", `"tab\there"`, `"tab\there"`},
		{" lead", `" lead"`, `" lead"`},
		{`"quoted"`, `"\"quoted\""`, `"\"quoted\""`},
		{"(deleted)", `"(deleted)"`, `"(deleted)"`},
		{"\xff", `"\xff"`, `"\xff"`},
		{"héllo", "héllo", "héllo"},
	} {
		if got := quoteValue(tc.in); got != tc.value {
			t.Errorf("quoteValue(%q) = %s, want %s", tc.in, got, tc.value)
		}
		if got := quoteKey(tc.in); got != tc.key {
			t.Errorf("quoteKey(%q) = %s, want %s", tc.in, got, tc.key)
		}
	}
	// Messages show keys as typed, spaces and all, unless they hold bytes
	// that a terminal must not get raw.
	for in, want := range map[string]string{"a b": "a b", "/config/db": "/config/db", "héllo": "héllo", "tab\there": `"tab\there"`, "\xff": `"\xff"`, "esc\x1b[2J": `"esc\x1b[2J"`} {
		if got := shown(in); got != want {
			t.Errorf("shown(%q) = %s, want %s", in, got, want)
		}
	}
}
