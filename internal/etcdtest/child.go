package etcdtest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/watchcache/watchcache/internal/devetcd"
)

// A child etcd runs in a process of its own, for benchmarks whose figures
// must be the client's alone (memory), or whose server must not share the
// Go scheduler with the client's goroutines, as no deployed etcd does.
// The child is the test binary itself: a package's TestMain calls
// RunChildIfAsked first.

// childEnv makes the test binary serve etcd instead of running tests.
const childEnv = "WATCHCACHE_CHILD_ETCD"

// RunChildIfAsked serves etcd and exits, in a test binary started by
// StartChild; otherwise it returns at once. Call it first in TestMain.
func RunChildIfAsked() {
	if os.Getenv(childEnv) != "" {
		os.Exit(runChild())
	}
}

// StartChild starts a single-node etcd in a child process (this test
// binary, whose TestMain calls RunChildIfAsked) and returns its client
// URL. The child stops when the test or benchmark ends.
func StartChild(tb testing.TB) string {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		stdin.Close() // the child stops when its stdin closes
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		tb.Fatalf("child etcd: %v", err)
	}
	return strings.TrimSpace(line)
}

// runChild is the child process of StartChild: it serves etcd on a free
// port, prints the client URL, and stops when its stdin closes.
func runChild() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	addr := ln.Addr().String()
	ln.Close()
	srv, err := devetcd.Start(addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer srv.Close()
	fmt.Println(srv.Endpoints()[0])
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// Metric reads an unlabelled counter or gauge from the /metrics of the
// etcd at endpoint.
func Metric(tb testing.TB, endpoint, name string) float64 {
	tb.Helper()
	resp, err := http.Get(endpoint + "/metrics")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				tb.Fatal(err)
			}
			return f
		}
	}
	tb.Fatalf("%s not in etcd's metrics", name)
	return 0
}
