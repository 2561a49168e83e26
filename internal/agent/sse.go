package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/kvstore"
)

// watchParams lists the query parameters /v1/watch/kv accepts.
var watchParams = map[string]bool{"recurse": true, "token": true, "dc": true, "index": true}

// handleWatch serves GET /v1/watch/kv/<key>[?recurse]: a Server-Sent
// Events stream of the key's (or the prefix's) state, pushed on every
// change from the cache's one etcd watch, with no re-polling.
//
// Each event is
//
//	id: <index>
//	event: kv
//	data: <the JSON body a GET would answer; [] when nothing exists>
//
// A client that reconnects with Last-Event-ID (or ?index=) gets the
// current state at once if it changed since that index, and otherwise
// waits for the next change: it misses nothing that is still current.
// When the store's index went back (it was restored or rebuilt), the
// current state comes at once as "event: reset", to replace what the
// client had.
// Errors are sent as "event: error" with a JSON {"error": ...}; the stream
// ends after one that will not heal (access refused). Idle streams get a
// comment line every HeartbeatInterval.
func (a *Agent) handleWatch(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		a.writeError(w, r, errMethod)
		return
	}
	key, q, err := keyAndQuery(r, "/v1/watch/kv")
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	for name := range q {
		if !watchParams[name] {
			a.writeError(w, r, badf("query parameter", "unknown parameter %q (the watch endpoint takes recurse, index, token, dc)", name))
			return
		}
	}
	recurse, err := flagParam(q, "recurse")
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if dc := q.Get("dc"); dc != "" && dc != a.cfg.Datacenter {
		a.writeError(w, r, badf("query parameter", "\"dc\": this agent serves datacenter %q, not %q", a.cfg.Datacenter, dc))
		return
	}
	last, from := r.Header.Get("Last-Event-ID"), "Last-Event-ID"
	if last == "" {
		last, from = q.Get("index"), "query parameter \"index\""
	}
	var since uint64
	if last != "" {
		if since, err = strconv.ParseUint(last, 10, 64); err != nil {
			a.writeError(w, r, badf(from, "%q is not an index", last))
			return
		}
	}
	p, err := a.identity(r.Context(), r, q.Get("token"))
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if recurse {
		streamEvents(a, w, r, a.kinds.Prefix, a.store.GetPrefix, kvstore.PrefixRequest(key, p), since, renderPrefix)
	} else {
		streamEvents(a, w, r, a.kinds.Key, a.store.GetKey, kvstore.KeyRequest(key, p), since, renderKey(false))
	}
}

// streamEvents writes kind's events for req as Server-Sent Events until
// the client goes away, the agent shuts down or access is refused. The
// handler's goroutine (owned by net/http) is the stream's only goroutine;
// the cache delivers to it through a one-slot channel, so a slow client
// gets the latest state when it catches up, never a backlog.
//
// A state whose index is lower than the last one the client saw (the
// store was restored or rebuilt, or the client resumes with a
// Last-Event-ID from before that) is sent at once as "event: reset": the
// whole current state, to be taken instead of what the client had.
//
// Every event must be written within EventWriteTimeout: a client that
// stops reading is dropped (and counted) rather than holding its handler
// and connection, and a shutdown cuts a write in progress.
func streamEvents[V any](a *Agent, w http.ResponseWriter, r *http.Request, kind *watchcache.Kind[V], read reader[V], req watchcache.Request, since uint64, render func(V) view) {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	// Read once as a GET does, with read-your-writes: the entry then
	// reflects every write this agent acknowledged, so the stream's first
	// event is never older than a PUT the client just made. It also
	// answers a refused request with 403 before the stream begins.
	v, meta, err := read(ctx, req)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	events := make(chan watchcache.UpdateEvent[V], 1)
	resumeReset := since > max(meta.Index, 1) // resumed from another history
	if resumeReset {
		req.MinIndex = meta.Index // the reset event below is the current state
	} else {
		req.MinIndex = since
	}
	if err := kind.Notify(ctx, req, "", events); err != nil {
		a.writeError(w, r, err)
		return
	}
	sw := &streamWriter{w: w, rc: http.NewResponseController(w), timeout: a.cfg.EventWriteTimeout}
	// A write blocked on a client that stopped reading ends with its
	// deadline, or at once when the request ends (shutdown, client gone).
	cutDone := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(cutDone)
		sw.cut()
	})
	defer func() {
		// The ResponseWriter must not be touched once the handler
		// returned: wait for a cut that already began.
		if !stop() {
			<-cutDone
		}
	}()
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // ask proxies not to buffer the stream
	w.WriteHeader(http.StatusOK)
	write := func(format string, args ...any) error {
		return sw.write(fmt.Appendf(nil, format, args...))
	}
	if err := write("retry: 1000\n\n"); err != nil {
		a.dropped(sw, err)
		return
	}
	var last uint64 = since
	sendState := func(v V, index uint64) error {
		body := render(v).body
		if body == nil {
			body = []byte("[]")
		}
		typ := "kv"
		if index < last {
			typ = "reset"
		}
		last = index
		return sw.write(fmt.Appendf(nil, "id: %d\nevent: %s\ndata: ", index, typ), body, []byte("\n\n"))
	}
	if resumeReset {
		if err = sendState(v, max(meta.Index, 1)); err != nil {
			a.dropped(sw, err)
			return
		}
	}
	heartbeat := time.NewTicker(a.cfg.HeartbeatInterval)
	defer heartbeat.Stop()
	for {
		select {
		case ev := <-events:
			switch {
			case errors.Is(ev.Err, watchcache.ErrClosed):
				return
			case ev.Err != nil:
				_, msg := statusOf(ev.Err)
				data, _ := json.Marshal(map[string]string{"error": msg})
				err = write("event: error\ndata: %s\n\n", data)
				if err == nil && errors.Is(ev.Err, watchcache.ErrFatal) {
					return // refused: it will not heal by waiting
				}
			default:
				err = sendState(ev.Result, max(ev.Meta.Index, 1))
			}
		case <-heartbeat.C:
			err = write(": heartbeat\n\n")
		case <-ctx.Done():
			return
		}
		if err != nil {
			a.dropped(sw, err)
			return
		}
	}
}

// streamChunk is how much of an event is written under one deadline: a
// client that takes a large event slowly but steadily is not dropped.
const streamChunk = 64 << 10

// streamWriter writes a stream's events, each piece of at most streamChunk
// bytes within its own write deadline, and then flushes and clears the
// deadline. cut (when the request ends) makes a write in progress, and
// every later one, fail at once. Its methods are called by the handler's
// goroutine, except cut.
type streamWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration

	first time.Time   // deadline of the current event's first piece; read by dropped
	isCut atomic.Bool // set by cut
}

// cut ends the stream's writes: the one in progress and every later one.
func (sw *streamWriter) cut() {
	sw.isCut.Store(true)
	sw.rc.SetWriteDeadline(time.Now())
}

// write writes parts as one event and flushes it. No deadline is left
// armed between events: over HTTP/2 an armed deadline resets the stream
// when it passes, written to or not, and an idle stream waits for its next
// event (or heartbeat) longer than an event may take.
func (sw *streamWriter) write(parts ...[]byte) error {
	sw.first = time.Time{}
	for _, p := range parts {
		for len(p) > 0 {
			n := min(len(p), streamChunk)
			if err := sw.setDeadline(time.Now().Add(sw.timeout)); err != nil {
				return err
			}
			if _, err := sw.w.Write(p[:n]); err != nil {
				return err
			}
			p = p[n:]
		}
	}
	if err := sw.setDeadline(time.Now().Add(sw.timeout)); err != nil {
		return err
	}
	if err := sw.rc.Flush(); err != nil {
		return err
	}
	return sw.setDeadline(time.Time{})
}

// setDeadline sets the write deadline (none if d is zero), unless the
// stream was cut: setting it after a cut would undo the cut.
func (sw *streamWriter) setDeadline(d time.Time) error {
	if sw.isCut.Load() {
		return errStreamCut
	}
	if err := sw.rc.SetWriteDeadline(d); err != nil {
		return err
	}
	if sw.isCut.Load() { // cut meanwhile, before the deadline above: cut again
		sw.rc.SetWriteDeadline(time.Now())
		return errStreamCut
	}
	if sw.first.IsZero() && !d.IsZero() {
		sw.first = d
	}
	return nil
}

// errStreamCut is a write refused because the request ended.
var errStreamCut = errors.New("the event stream was cut")

// dropped counts an event stream whose client did not take an event in
// time: a write that failed once the deadline of the event's first piece
// had passed, while the agent is not shutting down. A write cut earlier
// because the request ended (shutdown, the client went away) fails before
// it and is not counted. The error itself cannot tell: net/http cancels
// the request when a write fails, which cuts the stream; and the deadline
// in force may be an earlier piece's than the last one set, since HTTP/2
// applies a new deadline later, on its connection's goroutine, and not at
// all if the one before fired meanwhile.
func (a *Agent) dropped(sw *streamWriter, err error) {
	if err == nil || sw.first.IsZero() || time.Now().Before(sw.first) || a.isStopping() {
		return
	}
	a.droppedStreams.Inc()
	a.log.Info("dropped an event stream whose client stopped reading", "timeout", a.cfg.EventWriteTimeout)
}
