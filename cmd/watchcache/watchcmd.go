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
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/consul/api"
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

const watchAbout = `Prints the changes of KEY, or with -prefix of every key under KEY, as they
happen, from the agent's event stream (/v1/watch/kv/), until interrupted
(Ctrl-C or SIGTERM: exit status 0).

One line per change: the index at which it was seen, the key, and the value:

  12 app/db postgres
  13 app/db (deleted)

The first line is KEY's current state; "(missing)" if it does not exist.
With -prefix, the first lines are the current keys under the prefix (none
if there are none), and then one line per key that was written or deleted.
A key or value that is empty, is not printable single-line text, or begins
with '"' or '(' is printed quoted, as a Go string ("a\nb"); so is a key
with a space in it.

When the store's history restarts (it was restored from a backup or
rebuilt, so its index went back), a line "INDEX (reset)" is printed and
then the whole current state as after a first connection: KEY's line, or
with -prefix every current key and "(deleted)" for each key that is gone.

A dropped connection is made again (with Last-Event-ID, so no change that
is still current is missed); errors the agent reports on the stream are
printed to stderr. An agent that cannot be reached at first, or that
refuses the watch, is an error (exit status 1).`

// runWatch runs the watch command.
func runWatch(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	c := newCommand("watch", "[options] KEY", watchAbout, stderr)
	prefix := c.fs.Bool("prefix", false, "watch every key under the prefix KEY")
	var co clientOptions
	co.register(c)
	if code, ok := c.parse(args, stdout, getenv); !ok {
		return code
	}
	if c.fs.NArg() != 1 {
		return c.usageErrorf("want KEY, got %d argument(s)", c.fs.NArg())
	}
	if msg := co.check(c); msg != "" {
		return c.usageErrorf("%s", msg)
	}
	client := newAgentClient(co, 0)
	defer client.Close()
	w := &watcher{
		client: client,
		key:    strings.TrimPrefix(c.fs.Arg(0), "/"), // as consul/api does
		prefix: *prefix,
		out:    stdout,
		errOut: stderr,
	}
	if err := w.run(ctx); err != nil {
		fmt.Fprintf(stderr, "Error! watching %s: %s\n", w.key, describe(err, client.base))
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

// print prints what changed in the state that a kv or reset event carries
// (the JSON body a GET of the key or prefix would get; [] when nothing
// exists). A reset replaces the state printed so far: its indexes are from
// another history, so every current key is printed again.
func (w *watcher) print(ev sseEvent) error {
	var pairs []*api.KVPair
	if err := json.Unmarshal([]byte(ev.Data), &pairs); err != nil {
		return fmt.Errorf("the agent sent an event that is not a list of keys: %w", err)
	}
	var lines []string
	if ev.Type == "reset" {
		lines = append(lines, ev.ID+" (reset)")
		w.seen = false // print KEY's state, whatever it is
		for key := range w.keys {
			w.keys[key] = 0 // no key has ModifyIndex 0: all print again
		}
	}
	if w.prefix {
		lines = append(lines, w.prefixChanges(ev.ID, pairs)...)
	} else {
		lines = append(lines, w.keyChange(ev.ID, pairs)...)
	}
	for _, l := range lines {
		if _, err := io.WriteString(w.out, l+"\n"); err != nil {
			return fmt.Errorf("writing output: %w", err)
		}
	}
	return nil
}

// keyChange returns the line for KEY's new state, if it changed.
func (w *watcher) keyChange(index string, pairs []*api.KVPair) []string {
	var cur *api.KVPair
	for _, p := range pairs {
		if p != nil && p.Key == w.key {
			cur = p
		}
	}
	switch {
	case cur == nil && w.seen && !w.exists,
		cur != nil && w.seen && w.exists && cur.ModifyIndex == w.modified:
		return nil // the same state again (after a reconnection)
	case cur == nil:
		what := "(missing)"
		if w.exists {
			what = "(deleted)"
		}
		w.seen, w.exists, w.modified = true, false, 0
		return []string{index + " " + quoteKey(w.key) + " " + what}
	}
	w.seen, w.exists, w.modified = true, true, cur.ModifyIndex
	return []string{changeLine(index, cur)}
}

// prefixChanges returns a line for each key written or deleted since the
// last state, in key order.
func (w *watcher) prefixChanges(index string, pairs []*api.KVPair) []string {
	type change struct{ key, line string }
	var changes []change
	now := make(map[string]uint64, len(pairs))
	for _, p := range pairs {
		if p == nil {
			continue
		}
		now[p.Key] = p.ModifyIndex
		if old, ok := w.keys[p.Key]; !ok || old != p.ModifyIndex {
			changes = append(changes, change{p.Key, changeLine(index, p)})
		}
	}
	for key := range w.keys {
		if _, ok := now[key]; !ok {
			changes = append(changes, change{key, index + " " + quoteKey(key) + " (deleted)"})
		}
	}
	w.keys = now
	slices.SortFunc(changes, func(a, b change) int { return strings.Compare(a.key, b.key) })
	lines := make([]string, len(changes))
	for i, c := range changes {
		lines[i] = c.line
	}
	return lines
}

func changeLine(index string, p *api.KVPair) string {
	return index + " " + quoteKey(p.Key) + " " + quoteValue(string(p.Value))
}

// quoteValue returns s as it is if it reads unambiguously as the last
// field of a line, and as a Go string literal otherwise: empty, not valid
// UTF-8, with a character that is not printable (a newline, a tab), with
// leading or trailing spaces, or starting with '"' (a quoted field) or '('
// (the (missing) and (deleted) markers).
func quoteValue(s string) string {
	if s == "" || !utf8.ValidString(s) || s[0] == '"' || s[0] == '(' || strings.TrimSpace(s) != s ||
		strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) {
		return strconv.Quote(s)
	}
	return s
}

// quoteKey is quoteValue for a field in the middle of a line, which must
// not contain a space either.
func quoteKey(s string) string {
	if strings.Contains(s, " ") {
		return strconv.Quote(s)
	}
	return quoteValue(s)
}
