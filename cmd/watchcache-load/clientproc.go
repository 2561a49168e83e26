package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"time"
)

// clientProc is this process's handle on the client process.
type clientProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser // closing it tells the client process to exit

	// events receives the client process's events, sent by the reader
	// goroutine, which closes it at the end of the process's stdout (after
	// setting readErr) and then closes readerDone.
	events     chan clientEvent
	readErr    error
	readerDone chan struct{}
	// quit is closed by stop; the reader then discards events rather than
	// block on a run that no longer listens.
	quit    chan struct{}
	stopped bool
}

// startClients starts the client process for spec: this same program,
// re-executed with clientEnv set.
func startClients(spec clientSpec) (*clientProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("finding this program to run the clients: %w", err)
	}
	js, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), clientEnv+"="+string(js))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the client process: %w", err)
	}
	p := &clientProc{cmd: cmd, stdin: stdin, events: make(chan clientEvent),
		readerDone: make(chan struct{}), quit: make(chan struct{})}
	go p.read(stdout)
	return p, nil
}

// read delivers the client process's events until its stdout ends.
func (p *clientProc) read(stdout io.Reader) {
	defer close(p.readerDone)
	defer close(p.events)
	sc := bufio.NewScanner(stdout)
	sc.Buffer(nil, 64<<20) // a round's event holds a timestamp per client
	for sc.Scan() {
		var ev clientEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			p.readErr = fmt.Errorf("client process wrote %.100q: %v", sc.Bytes(), err)
			break
		}
		select {
		case p.events <- ev:
		case <-p.quit:
		}
	}
	if p.readErr == nil {
		p.readErr = sc.Err()
	}
	io.Copy(io.Discard, stdout) // let the process finish writing and exit
}

// next returns the client process's next event, which must be of kind.
func (p *clientProc) next(ctx context.Context, kind string) (clientEvent, error) {
	select {
	case ev, ok := <-p.events:
		switch {
		case !ok && p.readErr != nil:
			return ev, p.readErr
		case !ok:
			return ev, fmt.Errorf("the client process ended before its %q report: %v", kind, p.waitExit())
		case ev.Kind != kind:
			return ev, fmt.Errorf("the client process reported %q, expected %q", ev.Kind, kind)
		}
		return ev, nil
	case <-ctx.Done():
		return clientEvent{}, context.Cause(ctx)
	}
}

// wait waits for the client process to exit on its own, once it has
// reported everything, and returns its exit error.
func (p *clientProc) wait(ctx context.Context) error {
	select {
	case <-p.readerDone:
	case <-ctx.Done():
		return fmt.Errorf("waiting for the client process to exit: %w", context.Cause(ctx))
	}
	return p.waitExit()
}

// waitExit reaps the process; its stdout has ended.
func (p *clientProc) waitExit() error {
	<-p.readerDone
	p.stopped = true
	if err := p.cmd.Wait(); err != nil {
		return fmt.Errorf("client process: %w", err)
	}
	return nil
}

// stop ends the client process if it still runs: it closes its stdin, on
// which the process exits, and kills it if it has not within grace.
func (p *clientProc) stop(grace time.Duration) {
	if p.stopped {
		return
	}
	p.stopped = true
	close(p.quit)
	p.stdin.Close()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.readerDone:
	case <-t.C:
		p.cmd.Process.Kill()
		<-p.readerDone
	}
	p.cmd.Wait()
}
