package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// waitReady polls the agent's /v1/status until it answers 200, failing the
// test if the agent exits first or the wait runs out. Polling a readiness
// endpoint is the only way to know: the agent says nothing else when
// ready but the line on stdout, which comes just before Serve.
func waitReady(t *testing.T, addr string, exited <-chan int, stderr *syncBuffer) {
	t.Helper()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	waitReadyURL(t, "http://"+addr, &http.Client{Transport: tr, Timeout: 5 * time.Second}, exited, stderr)
}

// waitReadyURL is waitReady for the agent at base, asked with hc.
func waitReadyURL(t *testing.T, base string, hc *http.Client, exited <-chan int, stderr *syncBuffer) {
	t.Helper()
	deadline := time.NewTimer(waitFor)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if resp, err := hc.Get(base + "/v1/status"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case code := <-exited:
			t.Fatalf("the agent exited with status %d before it was ready:\n%s", code, stderr.String())
		case <-deadline.C:
			t.Fatalf("the agent was not ready within %v:\n%s", waitFor, stderr.String())
		case <-tick.C:
		}
	}
}

// index returns the index at the start of a watch line.
func index(t *testing.T, line string) uint64 {
	t.Helper()
	f, _, _ := strings.Cut(line, " ")
	n, err := strconv.ParseUint(f, 10, 64)
	if err != nil {
		t.Fatalf("line %q does not start with an index", line)
	}
	return n
}

// The whole system as a user runs it: `watchcache agent -dev` with its
// embedded etcd, the kv and watch commands against it, and a clean stop on
// Ctrl-C (here: cancelling run's context) that leaves no port taken and
// (checked by TestMain) no goroutine running.
func TestEndToEnd(t *testing.T) {
	etcdAddr, httpAddr := freeAddr(t), freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var agentOut, agentErr syncBuffer
	exited := make(chan int, 1)
	go func() {
		exited <- run(ctx, []string{"agent", "-dev", "-dev-etcd-addr", etcdAddr, "-http-addr", httpAddr, "-log-level", "warn"},
			nil, &agentOut, &agentErr, env(nil))
	}()
	stopped := false
	defer func() { // a failed test still stops the agent, so that goleak reports the failure, not a leak
		if !stopped {
			cancel()
			<-exited
		}
	}()
	waitReady(t, httpAddr, exited, &agentErr)
	if want := "watchcache agent: HTTP API on http://" + httpAddr + ", embedded etcd on http://" + etcdAddr; !strings.HasPrefix(agentOut.String(), want) {
		t.Errorf("start line %q, want it to begin %q", agentOut.String(), want)
	}

	// The commands find the agent through the environment.
	cli := env(map[string]string{"WATCHCACHE_HTTP_ADDR": httpAddr})
	expect := func(t *testing.T, wantCode int, wantStdout, wantStderr string, args ...string) {
		t.Helper()
		code, stdout, stderr := runCmd(t, cli, args...)
		if code != wantCode || stdout != wantStdout || !strings.Contains(stderr, wantStderr) {
			t.Fatalf("watchcache %s: status %d, stdout %q, stderr %q\nwant status %d, stdout %q, stderr containing %q",
				strings.Join(args, " "), code, stdout, stderr, wantCode, wantStdout, wantStderr)
		}
	}

	t.Run("kv put and get", func(t *testing.T) {
		expect(t, exitOK, "Success! Data written to: app/db\n", "", "kv", "put", "app/db", "postgres")
		expect(t, exitOK, "Success! Data written to: app/web/port\n", "", "kv", "put", "app/web/port", "8080")
		expect(t, exitOK, "postgres\n", "", "kv", "get", "app/db")
		expect(t, exitOK, "app/db:postgres\napp/web/port:8080\n", "", "kv", "get", "-recurse", "app/")
		expect(t, exitOK, "", "", "kv", "get", "-recurse", "nothing/")
	})
	t.Run("kv errors", func(t *testing.T) {
		expect(t, exitError, "", "Error! No key exists at: app/none\n", "kv", "get", "app/none")
		// The agent's 400 and 403 messages reach the user.
		expect(t, exitError, "", "Error! reading \"a\\x00b\": the agent answered 400 Bad Request: bad key: contains a NUL byte\n", "kv", "get", "a\x00b")
		expect(t, exitError, "", "Error! writing : the agent answered 400 Bad Request: Missing key name", "kv", "put", "", "v")
		// As Consul without ACLs: with no tokens file and etcd's auth off,
		// a token is ignored rather than refused.
		expect(t, exitOK, "postgres\n", "", "kv", "get", "-token", "unknown", "app/db")
		if !strings.Contains(agentErr.String(), "tokens are ignored") {
			t.Errorf("no warning about the ignored token in the agent's log: %q", agentErr.String())
		}
	})
	t.Run("watch key", func(t *testing.T) {
		stdout, stderr, stop := startWatch(t, cli, "app/db")
		first := stdout.next(t)
		if !strings.HasSuffix(first, " app/db postgres") {
			t.Fatalf("first line %q, want the current value", first)
		}
		expect(t, exitOK, "Success! Data written to: app/db\n", "", "kv", "put", "app/db", "mysql")
		second := stdout.next(t)
		if !strings.HasSuffix(second, " app/db mysql") || index(t, second) <= index(t, first) {
			t.Fatalf("after a put, line %q (the one before: %q)", second, first)
		}
		expect(t, exitOK, "Success! Deleted key: app/db\n", "", "kv", "delete", "app/db")
		third := stdout.next(t)
		if !strings.HasSuffix(third, " app/db (deleted)") || index(t, third) <= index(t, second) {
			t.Fatalf("after a delete, line %q (the one before: %q)", third, second)
		}
		if code := stop(); code != exitOK {
			t.Fatalf("watch: status %d after cancel, stderr:\n%s", code, stderr.String())
		}
		expect(t, exitError, "", "Error! No key exists at: app/db", "kv", "get", "app/db")
	})
	t.Run("watch prefix", func(t *testing.T) {
		stdout, stderr, stop := startWatch(t, cli, "-prefix", "app/")
		if l := stdout.next(t); !strings.HasSuffix(l, " app/web/port 8080") {
			t.Fatalf("first line %q, want the current key", l)
		}
		expect(t, exitOK, "Success! Data written to: app/new\n", "", "kv", "put", "app/new", "hello world")
		if l := stdout.next(t); !strings.HasSuffix(l, " app/new hello world") {
			t.Fatalf("after a put, line %q", l)
		}
		expect(t, exitOK, "Success! Deleted keys with prefix: app/\n", "", "kv", "delete", "-recurse", "app/")
		a, b := stdout.next(t), stdout.next(t)
		if !strings.HasSuffix(a, " app/new (deleted)") || !strings.HasSuffix(b, " app/web/port (deleted)") || index(t, a) != index(t, b) {
			t.Fatalf("after delete -recurse, lines %q, %q", a, b)
		}
		if code := stop(); code != exitOK {
			t.Fatalf("watch: status %d after cancel, stderr:\n%s", code, stderr.String())
		}
		expect(t, exitOK, "", "", "kv", "get", "-recurse", "app/")
	})
	t.Run("metrics", func(t *testing.T) {
		// The agent exports the etcd source's metrics with the cache's.
		resp, err := http.Get("http://" + httpAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, m := range []string{"watchcache_entries{", "watchcache_etcd_watch_streams ", "watchcache_etcd_access_checks_total ", `watchcache_etcd_consistent_reads_total{served="cache"} `} {
			if !strings.Contains(string(body), m) {
				t.Errorf("/metrics lacks %s", m)
			}
		}
	})

	// Ctrl-C: the agent stops with status 0, and both its ports are free
	// again, the embedded etcd's included.
	cancel()
	select {
	case code := <-exited:
		stopped = true
		if code != exitOK {
			t.Fatalf("agent: status %d after cancel, stderr:\n%s", code, agentErr.String())
		}
	case <-time.After(waitFor):
		t.Fatalf("the agent did not stop within %v", waitFor)
	}
	for _, addr := range []string{etcdAddr, httpAddr} {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Errorf("after the agent stopped, %s is still taken: %v", addr, err)
			continue
		}
		l.Close()
	}
}
