package agent

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/watchcache/watchcache"
)

// Request logs. Every request is logged once it is answered: at debug
// level when it succeeded, info for a 4xx, warn for a 5xx, with its method,
// path, status, duration, X-Cache and the caller's identity as the store
// names it (never a token or a password), and the error of a failure.

// logged records what a request's log line says. Handlers reach it through
// the request's context (identify, fail).
type logged struct {
	status   int
	identity string
	err      error
}

type loggedKey struct{}

// recorder is the ResponseWriter handlers write to: it notes the status.
// Unwrap lets http.ResponseController reach the connection (flushes and
// write deadlines of event streams).
type recorder struct {
	http.ResponseWriter
	rec *logged
}

func (w *recorder) WriteHeader(status int) {
	if w.rec.status == 0 {
		w.rec.status = status
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *recorder) Write(b []byte) (int, error) {
	if w.rec.status == 0 {
		w.rec.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *recorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// serveLogged runs h and logs the request.
func (a *Agent) serveLogged(w http.ResponseWriter, r *http.Request, h func(http.ResponseWriter, *http.Request)) {
	rec := &logged{}
	start := time.Now()
	h(&recorder{ResponseWriter: w, rec: rec}, r.WithContext(context.WithValue(r.Context(), loggedKey{}, rec)))
	status := rec.status
	if status == 0 {
		status = http.StatusOK
	}
	level := slog.LevelDebug
	switch {
	case status >= 500:
		level = slog.LevelWarn
	case status >= 400:
		level = slog.LevelInfo
	}
	if !a.log.Enabled(r.Context(), level) {
		return
	}
	attrs := []slog.Attr{
		slog.String("method", r.Method), slog.String("path", r.URL.Path), slog.Int("status", status),
		slog.Duration("duration", time.Since(start)),
	}
	if c := w.Header().Get("X-Cache"); c != "" {
		attrs = append(attrs, slog.String("cache", c))
	}
	if rec.identity != "" {
		attrs = append(attrs, slog.String("identity", rec.identity))
	}
	if rec.err != nil {
		attrs = append(attrs, slog.String("error", rec.err.Error()))
	}
	a.log.LogAttrs(r.Context(), level, "request", attrs...)
}

// identify notes the caller's identity, as the store names it, for the
// request's log line.
func (a *Agent) identify(r *http.Request, p watchcache.Partition) {
	if rec, ok := r.Context().Value(loggedKey{}).(*logged); ok {
		rec.identity = a.store.Who(p)
	}
}

// failed notes a request's error for its log line.
func failed(r *http.Request, err error) {
	if rec, ok := r.Context().Value(loggedKey{}).(*logged); ok {
		rec.err = err
	}
}
