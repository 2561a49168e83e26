package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
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
	last := r.Header.Get("Last-Event-ID")
	if last == "" {
		last = q.Get("index")
	}
	var since uint64
	if last != "" {
		if since, err = strconv.ParseUint(last, 10, 64); err != nil {
			a.writeError(w, r, badf("Last-Event-ID", "%q is not an index", last))
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
func streamEvents[V any](a *Agent, w http.ResponseWriter, r *http.Request, kind *watchcache.Kind[V], read reader[V], req watchcache.Request, since uint64, render func(V) view) {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	// Read once as a GET does, with read-your-writes: the entry then
	// reflects every write this agent acknowledged, so the stream's first
	// event is never older than a PUT the client just made. It also
	// answers a refused request with 403 before the stream begins.
	if _, _, err := read(ctx, req); err != nil {
		a.writeError(w, r, err)
		return
	}
	events := make(chan watchcache.UpdateEvent[V], 1)
	req.MinIndex = since
	if err := kind.Notify(ctx, req, "", events); err != nil {
		a.writeError(w, r, err)
		return
	}
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // ask proxies not to buffer the stream
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(w, "retry: 1000\n\n")
	if rc.Flush() != nil {
		return
	}
	heartbeat := time.NewTicker(a.cfg.HeartbeatInterval)
	defer heartbeat.Stop()
	for {
		var err error
		select {
		case ev := <-events:
			switch {
			case errors.Is(ev.Err, watchcache.ErrClosed):
				return
			case ev.Err != nil:
				_, msg := statusOf(ev.Err)
				data, _ := json.Marshal(map[string]string{"error": msg})
				_, err = fmt.Fprintf(w, "event: error\ndata: %s\n\n", data)
				if errors.Is(ev.Err, watchcache.ErrFatal) {
					rc.Flush()
					return // refused: it will not heal by waiting
				}
			default:
				body := render(ev.Result).body
				if body == nil {
					body = []byte("[]")
				}
				_, err = fmt.Fprintf(w, "id: %d\nevent: kv\ndata: %s\n\n", max(ev.Meta.Index, 1), body)
			}
		case <-heartbeat.C:
			_, err = fmt.Fprintf(w, ": heartbeat\n\n")
		case <-ctx.Done():
			return
		}
		if err == nil {
			err = rc.Flush()
		}
		if err != nil {
			return // the client went away
		}
	}
}
