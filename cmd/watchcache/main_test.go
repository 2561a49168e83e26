package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestMain fails the package if a goroutine of the agent, the embedded
// etcd or a client outlives the tests.
//
// Run with WATCHCACHE_TEST_MAIN=1, the test binary is the watchcache
// command instead (runMain with its arguments), for tests that need a
// process of their own: signals.
func TestMain(m *testing.M) {
	if os.Getenv("WATCHCACHE_TEST_MAIN") == "1" {
		os.Exit(runMain(os.Args[1:]))
	}
	goleak.VerifyTestMain(m)
}

// waitFor bounds every wait of a test. Generous: the embedded etcd starts
// slowly under the race detector on small shared machines.
const waitFor = 60 * time.Second

// env returns a getenv over vars, so that tests never see the process's
// own WATCHCACHE_* variables.
func env(vars map[string]string) func(string) string {
	return func(name string) string { return vars[name] }
}

// runCmd runs a command line in-process and returns its status and output.
func runCmd(t testing.TB, getenv func(string) string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	var out, errOut bytes.Buffer
	code = run(ctx, args, nil, &out, &errOut, getenv)
	return code, out.String(), errOut.String()
}

// runCmdIn is runCmd with stdin as the command's standard input.
func runCmdIn(t testing.TB, getenv func(string) string, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	var out, errOut bytes.Buffer
	code = run(ctx, args, strings.NewReader(stdin), &out, &errOut, getenv)
	return code, out.String(), errOut.String()
}

// syncBuffer is a bytes.Buffer that a command's goroutine writes while the
// test reads it.
type syncBuffer struct {
	mu sync.Mutex // protects b
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

// lineWriter hands each complete line written to it to the test, in
// order, through lines (which never blocks a writer in these tests: it
// holds far more lines than any test writes).
type lineWriter struct {
	mu      sync.Mutex // protects partial and all
	partial []byte
	all     strings.Builder
	lines   chan string
}

func newLineWriter() *lineWriter { return &lineWriter{lines: make(chan string, 1000)} }

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.all.Write(p)
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			return len(p), nil
		}
		w.lines <- string(w.partial[:i])
		w.partial = w.partial[i+1:]
	}
}

func (w *lineWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.all.String()
}

// next returns the next line, failing the test if none comes in time.
func (w *lineWriter) next(t testing.TB) string {
	t.Helper()
	timer := time.NewTimer(waitFor)
	defer timer.Stop()
	select {
	case l := <-w.lines:
		return l
	case <-timer.C:
		t.Fatalf("no line within %v; output so far:\n%s", waitFor, w.String())
		return ""
	}
}

// waitForLine skips lines until one contains want.
func (w *lineWriter) waitForLine(t testing.TB, want string) string {
	t.Helper()
	for {
		if l := w.next(t); strings.Contains(l, want) {
			return l
		}
	}
}

// freeAddr returns a loopback host:port that was free a moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// The top-level usage lists the subcommands; asking for it succeeds, and
// anything it does not know is a usage error (status 2).
func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		args     []string
		code     int
		inStdout bool // the usage is on stdout (asked for), else on stderr
		want     string
	}{
		{nil, exitUsage, false, "Commands:"},
		{[]string{"-h"}, exitOK, true, "Commands:"},
		{[]string{"--help"}, exitOK, true, "Commands:"},
		{[]string{"help"}, exitOK, true, "Commands:"},
		{[]string{"frobnicate"}, exitUsage, false, `unknown command "frobnicate"`},
		{[]string{"help", "kv", "get"}, exitOK, true, "Usage: watchcache kv get [options] [KEY]"},
		{[]string{"kv", "put", "-h"}, exitOK, true, "@FILE  the contents of FILE"},
		{[]string{"kv", "export", "-h"}, exitOK, true, "consul kv export's format"},
		{[]string{"kv", "import", "-h"}, exitOK, true, "writes nothing"},
		{[]string{"watch", "-h"}, exitOK, true, `{"index":13,"key":"app/db","deleted":true}`},
		{[]string{"version"}, exitOK, true, "watchcache "},
		{[]string{"help", "agent"}, exitOK, true, "-dev-etcd-addr"},
		{[]string{"kv"}, exitUsage, false, "Subcommands:"},
		{[]string{"kv", "-h"}, exitOK, true, "Subcommands:"},
		{[]string{"kv", "list"}, exitUsage, false, `unknown subcommand "list"`},
		{[]string{"watch", "-h"}, exitOK, true, "13 app/db (deleted)"},
		{[]string{"agent", "-h"}, exitOK, true, "[$WATCHCACHE_ETCD_PASSWORD]"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, stdout, stderr := runCmd(t, env(nil), tc.args...)
			got := stderr
			if tc.inStdout {
				got = stdout
			}
			if code != tc.code || !strings.Contains(got, tc.want) {
				t.Fatalf("status %d, stdout:\n%s\nstderr:\n%s\nwant status %d and %q in std%s", code, stdout, stderr, tc.code, tc.want,
					map[bool]string{true: "out", false: "err"}[tc.inStdout])
			}
		})
	}
	// Every command is listed.
	_, stdout, _ := runCmd(t, env(nil), "help")
	for _, cmd := range []string{"agent", "kv get", "kv put", "kv delete", "kv export", "kv import", "watch", "version"} {
		if !strings.Contains(stdout, "\n  "+cmd+" ") {
			t.Errorf("usage does not list %q:\n%s", cmd, stdout)
		}
	}
}
