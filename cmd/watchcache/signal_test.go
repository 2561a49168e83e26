package main

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/watchcache/watchcache/internal/devetcd"
)

// startProcess starts the test binary as the watchcache command with args, its
// temporary directory (where -dev keeps its etcd) set to tmp. Lines of its
// stderr arrive on the returned channel; it is killed if the test ends
// first.
func startProcess(t *testing.T, tmp string, args ...string) (*exec.Cmd, <-chan string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "WATCHCACHE_TEST_MAIN=1", "TMPDIR="+tmp)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	return cmd, lines
}

// await returns the first line of lines that contains want, failing the
// test if none comes within waitFor.
func await(t *testing.T, lines <-chan string, want string) string {
	t.Helper()
	deadline := time.After(waitFor)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("the command's stderr ended before a line with %q", want)
			}
			if strings.Contains(l, want) {
				return l
			}
		case <-deadline:
			t.Fatalf("no line with %q within %v", want, waitFor)
		}
	}
}

// Two interrupts in a row during the dev agent's shutdown: the second
// hurries it but the cleanup still runs, so the embedded etcd's data
// directory is removed and the process exits promptly.
func TestSecondSignalCleansUp(t *testing.T) {
	tmp := t.TempDir()
	cmd, lines := startProcess(t, tmp, "agent", "-dev", "-dev-etcd-addr", freeAddr(t), "-http-addr", freeAddr(t))
	await(t, lines, "the store answers")
	dirs, _ := filepath.Glob(filepath.Join(tmp, devetcd.DirPattern+"*"))
	if len(dirs) != 1 {
		t.Fatalf("data directories while running: %q, want one", dirs)
	}
	cmd.Process.Signal(syscall.SIGINT)
	await(t, lines, "shutting down")
	cmd.Process.Signal(syscall.SIGINT)
	await(t, lines, "second interrupt")
	exited := make(chan error, 1)
	go func() {
		for range lines { // drain, so that the command never blocks on stderr
		}
		exited <- cmd.Wait()
	}()
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("exit after two interrupts: %v", err)
		}
	case <-time.After(waitFor):
		t.Fatalf("the agent did not exit within %v of a second interrupt", waitFor)
	}
	if dirs, _ := filepath.Glob(filepath.Join(tmp, devetcd.DirPattern+"*")); len(dirs) != 0 {
		t.Fatalf("data directories left behind: %q", dirs)
	}
}
