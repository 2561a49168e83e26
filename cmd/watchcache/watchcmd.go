package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"net/http"
	"time"
)

// Event stream limits and timing.
const (
	// maxEventSize bounds one event: a prefix's whole state is one event,
	// each value up to the agent's 512 KiB, base64 in JSON.
	maxEventSize = 64 << 20
	// streamIdleTimeout ends a stream that sent nothing, not even the
	// agent's heartbeat comment (every 30s), for this long: the connection
	// is presumed dead and is made again.
	streamIdleTimeout = 2 * time.Minute
	// Reconnection delays: the stream's retry (the agent asks for 1s), or
	// defaultRetry, doubled after each failed attempt up to maxRetry.
	defaultRetry = time.Second
	maxRetry     = 30 * time.Second
)

const watchAbout = `Prints the changes of KEY, or with -recurse of every key under the prefix
KEY, as they happen, from the agent's event stream (/v1/watch/kv/), until
interrupted (Ctrl-C or SIGTERM: exit status 0). KEY is watched exactly as
typed: /config/db and config/db are two keys.

One line per change: the index at which it was seen, the key, and the value:

  12 app/db postgres
  13 app/db (deleted)

The first line is KEY's current state; "(missing)" if it does not exist.
With -recurse, the first lines are the current keys under the prefix (none
if there are none), and then one line per key that was written or deleted.
A key or value that is empty, is not printable single-line text, or begins
with '"' or '(' is printed quoted, as a Go string ("a\nb"); so is a key
with a space in it.

When the store's history restarts (it was restored from a backup or
rebuilt, so its index went back), a line "INDEX (reset)" is printed and
then the whole current state as after a first connection: KEY's line, or
with -recurse every current key and "(deleted)" for each key that is gone.

With -format json, each line is a JSON object instead:
  {"index":12,"key":"app/db","value":"<base64>","create_index":5,"modify_index":12,"flags":0}
  {"index":13,"key":"app/db","deleted":true}
  {"index":3,"key":"app/db","missing":true}
  {"index":2,"reset":true}

A dropped connection is made again (with Last-Event-ID, so no change that
is still current is missed); errors the agent reports on the stream are
printed to stderr. An agent that cannot be reached at first, or that
refuses the watch, is an error (exit status 1).`

// runWatch runs the watch command.
func runWatch(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	c := newCommand("watch", "[options] KEY", watchAbout, stderr)
	var recurse bool
	c.fs.BoolVar(&recurse, "recurse", false, "watch every key under the prefix KEY")
	c.fs.BoolVar(&recurse, "prefix", false, "the same as -recurse")
	format := "text"
	c.fs.Var(formatValue{&format}, "format", "output `format`: text or json (one object per line)")
	var co clientOptions
	co.register(c)
	if code, ok := c.parse(args, stdout, getenv); !ok {
		return code
	}
	if len(c.args) != 1 {
		return c.usageErrorf("want KEY, got %d argument(s)", len(c.args))
	}
	if msg := co.check(c); msg != "" {
		return c.usageErrorf("%s", msg)
	}
	client := newAgentClient(co, 0)
	defer client.Close()
	w := &watcher{
		client: client,
		key:    c.args[0],
		prefix: recurse,
		json:   format == "json",
		out:    stdout,
		errOut: stderr,
	}
	if err := w.run(ctx); err != nil {
		fmt.Fprintf(stderr, "Error! watching %s: %s\n", shown(w.key), describe(err, client.base))
		return exitError
	}
	return exitOK
}

// watcher follows one key or prefix through reconnections and prints its
// changes. It is used by one goroutine.
type watcher struct {
	client *agentClient
	key    string
	prefix bool
	json   bool // one JSON object per line
	out    io.Writer
	errOut io.Writer

	lastID string        // the stream's last event ID, sent on reconnection
	retry  time.Duration // the stream's retry, 0 until it sends one

	// The state printed last. Key mode: seen (a first line was printed),
	// exists and modified (KEY's ModifyIndex). Prefix mode: keys, each
	// key's ModifyIndex.
	seen     bool
	exists   bool
	modified uint64
	keys     map[string]uint64
}

// permanentError ends a watch instead of reconnecting.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// errStreamEnded is a stream the agent ended without an error (it shuts
// down, or a proxy cut it).
var errStreamEnded = errors.New("the agent ended the event stream")

// errIdle is a stream on which nothing arrived for streamIdleTimeout.
var errIdle = fmt.Errorf("nothing received on the event stream for %v", streamIdleTimeout)

// run watches until ctx ends (nil) or a permanent error.
func (w *watcher) run(ctx context.Context) error {
	connected := false // once: later failures are retried
	failures := 0      // consecutive attempts that did not get a stream
	for {
		opened, err := w.stream(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if opened {
			connected, failures = true, 0
		} else {
			failures++
		}
		var perm *permanentError
		if !connected || errors.As(err, &perm) {
			return err
		}
		delay := w.backoff(failures)
		fmt.Fprintf(w.errOut, "watchcache watch: %s; reconnecting in %v\n", describe(err, w.client.base), delay.Round(time.Millisecond))
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// backoff is the delay before the next attempt after failures consecutive
// failed ones: the stream's retry doubled per failure up to maxRetry, drawn
// from [d/2, d] so that many watchers of a restarted agent do not all come
// back at once.
func (w *watcher) backoff(failures int) time.Duration {
	d := w.retry
	if d <= 0 {
		d = defaultRetry
	}
	for range min(failures, 16) {
		d = min(2*d, maxRetry)
	}
	d = min(d, maxRetry)
	return d/2 + rand.N(d/2+1)
}

// url is the URL of the key or prefix under path: /v1/kv/ for a read,
// /v1/watch/kv/ for the event stream.
func (w *watcher) url(path string) string {
	u := *w.client.base
	u.Path = path + w.key
	if w.prefix {
		u.RawQuery = "recurse"
	}
	return u.String()
}

// stream reads one connection's events and prints them. opened reports
// whether the agent answered with a stream. It returns when the stream
// ends, with the reason.
func (w *watcher) stream(ctx context.Context) (opened bool, err error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, w.url("/v1/watch/kv/"), nil)
	if err != nil {
		return false, &permanentError{err}
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Cache-Control", "no-cache")
	if w.lastID != "" {
		req.Header.Set("Last-Event-ID", w.lastID)
	}
	resp, err := w.client.hc.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		err := responseError(resp)
		if resp.StatusCode < 500 { // refused: asking again will not help
			err = &permanentError{err}
		}
		return false, err
	}
	if ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); ct != "text/event-stream" {
		return false, &permanentError{fmt.Errorf("%s answered with %q, not an event stream: is it a watchcache agent?", w.client.base, ct)}
	}

	idle := time.AfterFunc(streamIdleTimeout, func() { cancel(errIdle) })
	defer idle.Stop()
	r := newSSEReader(&idleReader{r: resp.Body, idle: idle}, maxEventSize)
	agentErr := "" // the last event was an error with this message
	for {
		ev, err := r.Next()
		if r.Retry > 0 {
			w.retry = r.Retry
		}
		if err != nil {
			switch {
			case errors.Is(context.Cause(ctx), errIdle):
				return true, errIdle
			case errors.Is(err, io.EOF) && agentErr != "":
				// The agent ends a stream after an error only when waiting
				// will not heal it (access refused).
				return true, &permanentError{errors.New("the agent ended the stream: " + agentErr)}
			case errors.Is(err, io.EOF):
				return true, errStreamEnded
			}
			return true, fmt.Errorf("reading the event stream: %w", err)
		}
		w.lastID = ev.ID
		switch ev.Type {
		case "kv", "reset":
			agentErr = ""
			if err := w.print(ev); err != nil {
				return true, &permanentError{err}
			}
		case "error":
			var body struct {
				Error string `json:"error"`
			}
			if json.Unmarshal([]byte(ev.Data), &body) != nil || body.Error == "" {
				body.Error = ev.Data
			}
			agentErr = body.Error
			fmt.Fprintf(w.errOut, "watchcache watch: the agent reports: %s\n", body.Error)
		}
	}
}

// idleReader reads r and pushes the idle timer back on every read that
// gets something.
type idleReader struct {
	r    io.Reader
	idle *time.Timer
}

func (ir *idleReader) Read(p []byte) (int, error) {
	n, err := ir.r.Read(p)
	if n > 0 {
		ir.idle.Reset(streamIdleTimeout)
	}
	return n, err
}
