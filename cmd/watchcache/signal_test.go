package main

import (
	"bufio"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/watchcache/watchcache/internal/devetcd"
)

// process is the test binary run as the watchcache command.
type process struct {
	cmd   *exec.Cmd
	lines <-chan string   // its stderr, line by line; closed when it ends
	done  <-chan struct{} // closed when it exited, after lines
	err   error           // how it exited; read after done
}

// startProcess starts the test binary as the watchcache command with args,
// its temporary directory (where -dev keeps its etcd) set to tmp. It is
// killed if the test ends first.
func startProcess(t *testing.T, tmp string, args ...string) *process {
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
	// One goroutine reads stderr to its end and then waits for the
	// process: Wait must come after the last read, and only once. The
	// channel holds more lines than the command writes, so it never
	// blocks the command.
	lines, done := make(chan string, 10000), make(chan struct{})
	p := &process{cmd: cmd, lines: lines, done: done}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		p.err = cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill() // an error if it exited already, which is fine
		select {
		case <-done:
		case <-time.After(waitFor):
			t.Errorf("the command did not end within %v of being killed", waitFor)
		}
	})
	return p
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

// Two interrupts in a row during the dev agent's shutdown, which a client
// that trickles a PUT's body holds open (for up to 30 s, the body's read
// deadline): the second cuts it short but the cleanup still runs, so the
// embedded etcd's data directory is removed and the process exits 0 at
// once.
func TestSecondSignalCleansUp(t *testing.T) {
	tmp, httpAddr := t.TempDir(), freeAddr(t)
	p := startProcess(t, tmp, "agent", "-dev", "-dev-etcd-addr", freeAddr(t), "-http-addr", httpAddr, "-shutdown-timeout", "1m")
	await(t, p.lines, "the store answers")
	slow, err := net.Dial("tcp", httpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	if _, err := io.WriteString(slow, "PUT /v1/kv/held HTTP/1.1\r\nHost: agent\r\nContent-Length: 100\r\n\r\nfirst bytes"); err != nil {
		t.Fatal(err)
	}
	dirs, _ := filepath.Glob(filepath.Join(tmp, devetcd.DirPattern+"*"))
	if len(dirs) != 1 {
		t.Fatalf("data directories while running: %q, want one", dirs)
	}
	p.cmd.Process.Signal(syscall.SIGINT)
	await(t, p.lines, "shutting down")
	p.cmd.Process.Signal(syscall.SIGINT)
	await(t, p.lines, "second interrupt")
	const prompt = 10 * time.Second // well under the held request's 30 s
	select {
	case <-p.done:
		if p.err != nil {
			t.Errorf("exit after two interrupts: %v", p.err)
		}
	case <-time.After(prompt):
		t.Fatalf("the agent did not exit within %v of a second interrupt", prompt)
	}
	if dirs, _ := filepath.Glob(filepath.Join(tmp, devetcd.DirPattern+"*")); len(dirs) != 0 {
		t.Fatalf("data directories left behind: %q", dirs)
	}
}
