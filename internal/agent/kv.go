package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/kvstore"
)

// kvPair is one entry of a /v1/kv response, as Consul writes it.
type kvPair struct {
	LockIndex   uint64
	Key         string
	Flags       uint64
	Value       []byte // base64 in JSON, as Consul's
	CreateIndex uint64
	ModifyIndex uint64
}

func pairOf(e kvstore.Entry) kvPair {
	return kvPair{Key: e.Key, Value: e.Value, Flags: e.Flags, CreateIndex: e.CreateIndex, ModifyIndex: e.ModifyIndex}
}

// handleKV serves /v1/kv/<key>: GET reads through the cache, PUT and
// DELETE write through to the store.
func (a *Agent) handleKV(w http.ResponseWriter, r *http.Request) {
	key, q, err := keyAndQuery(r, "/v1/kv")
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	kr, err := parseKVRequest(r.Method, key, q, r.Header, a.cfg.Datacenter)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	p, err := a.identity(r.Context(), r, kr.token)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	switch r.Method {
	case http.MethodGet:
		switch {
		case kr.recurse:
			serveRead(a, w, r, kr, kvstore.PrefixRequest(key, p), a.store.GetPrefix, a.store.ReadPrefix, pretty(kr, renderPrefix))
		case kr.keys:
			// As Consul, the root's listing is never a 404: an empty store
			// lists [].
			serveRead(a, w, r, kr, kvstore.KeysRequest(key, kr.separator, p), a.store.GetKeys, a.store.ReadKeys, pretty(kr, renderKeys(key == "")))
		default:
			serveRead(a, w, r, kr, kvstore.KeyRequest(key, p), a.store.GetKey, a.store.ReadKey, pretty(kr, renderKey(kr.raw)))
		}
	case http.MethodPut:
		a.put(w, r, kr, p)
	case http.MethodDelete:
		a.delete(w, r, kr, p)
	}
}

// keyAndQuery returns the key a request's path names under root, and its
// query.
func keyAndQuery(r *http.Request, root string) (string, url.Values, error) {
	key, err := kvKey(r.URL.Path, root)
	if err != nil {
		return "", nil, err
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return "", nil, badf("query", "%v", err)
	}
	return key, q, nil
}

// kvKey returns the key named by a request path under root ("/v1/kv" or
// "/v1/watch/kv"): everything after "root/", as Consul takes it. The root
// itself, with or without its slash, names the empty key (the whole
// keyspace for ?recurse and ?keys).
func kvKey(path, root string) (string, error) {
	rest, ok := strings.CutPrefix(path, root)
	if !ok || (rest != "" && rest[0] != '/') {
		return "", badf("path", "%q is not under %s/", path, root)
	}
	key := strings.TrimPrefix(rest, "/")
	if strings.ContainsRune(key, 0) {
		return "", badf("key", "contains a NUL byte")
	}
	if !utf8.ValidString(key) {
		return "", badf("key", "is not valid UTF-8")
	}
	return key, nil
}

// view is a read rendered for the client.
type view struct {
	found       bool // false: 404
	raw         bool // the bare value (?raw), not JSON
	body        []byte
	contentType string
}

// The JSON renderings are done once per value the store published, and
// shared by every reader and event stream that sends it (kvstore.Memo).
type renderJSON struct{}

func renderKey(raw bool) func(kvstore.Key) view {
	return func(k kvstore.Key) view {
		if !k.Exists {
			return view{}
		}
		if raw {
			// As Consul: a value is not a page for a browser to run.
			return view{found: true, body: k.Entry.Value, contentType: "text/plain", raw: true}
		}
		return k.Memo().Do(renderJSON{}, func() any { return jsonView([]kvPair{pairOf(k.Entry)}) }).(view)
	}
}

func renderPrefix(p kvstore.Prefix) view {
	if len(p.Entries) == 0 {
		return view{}
	}
	return p.Memo().Do(renderJSON{}, func() any {
		pairs := make([]kvPair, len(p.Entries))
		for i, e := range p.Entries {
			pairs[i] = pairOf(e)
		}
		return jsonView(pairs)
	}).(view)
}

func renderKeys(root bool) func(kvstore.KeyList) view {
	return func(kl kvstore.KeyList) view {
		switch {
		case len(kl.Keys) == 0 && root:
			return view{found: true, body: []byte("[]"), contentType: "application/json"}
		case len(kl.Keys) == 0:
			return view{}
		}
		return kl.Memo().Do(renderJSON{}, func() any { return jsonView(kl.Keys) }).(view)
	}
}

// pretty indents a JSON rendering when the request asks (?pretty). Such a
// rendering is the request's own, not the shared one.
func pretty[V any](kr kvRequest, render func(V) view) func(V) view {
	if !kr.pretty {
		return render
	}
	return func(v V) view {
		out := render(v)
		if !out.found || out.raw {
			return out
		}
		var buf bytes.Buffer
		if json.Indent(&buf, out.body, "", "    ") == nil {
			out.body = append(buf.Bytes(), '\n')
		}
		return out
	}
}

func jsonView(v any) view {
	body, err := json.Marshal(v)
	if err != nil { // only for values json cannot encode, which these are not
		panic(err)
	}
	return view{found: true, body: body, contentType: "application/json"}
}

// reader reads a request's value: from the cache (with read-your-writes)
// or directly from the store.
type reader[V any] func(context.Context, watchcache.Request) (V, watchcache.ResultMeta, error)

// serveRead answers a GET.
//
//   - Blocking (?index=): waits through the cache for a change or the wait;
//     a shutdown ends the wait early with the current value.
//   - ?consistent, Cache-Control must-revalidate or no-cache: read from the
//     store.
//   - Cache-Control max-age: a cached value older than it (the cache cannot
//     reach the store) is replaced by a read from the store, or, if that
//     fails too, served while within stale-if-error.
//   - Otherwise the cached value, even while the store is unreachable (its
//     Age says how stale it may be).
func serveRead[V any](a *Agent, w http.ResponseWriter, r *http.Request, kr kvRequest, req watchcache.Request, cached, direct reader[V], render func(V) view) {
	ctx := r.Context()
	req.MinIndex, req.Timeout = kr.index, kr.wait
	revalidate := kr.consistent || kr.cache.mustRevalidate
	// A client that stops reading must not hold the handler: the answer is
	// due by the end of the wait, and gets writeGrace to be written.
	http.NewResponseController(w).SetWriteDeadline(time.Now().Add(kr.wait + writeGrace))

	if revalidate && kr.index == 0 {
		// The cached value would be read again by direct.
		v, meta, err := direct(ctx, req)
		if err != nil {
			a.writeError(w, r, err)
			return
		}
		writeView(w, meta, render(v))
		return
	}
	if kr.index > 0 {
		a.blocked.Add(1)
	}
	v, meta, err := cached(ctx, req)
	if kr.index > 0 {
		a.blocked.Add(-1)
	}
	if err != nil && kr.index > 0 && ctx.Err() != nil {
		if !a.isStopping() {
			return // the client went away
		}
		// Shutting down: answer now with what the cache has.
		req.MinIndex = 0
		v, meta, err = cached(context.WithoutCancel(ctx), req)
	}
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	stale := kr.cache.hasMaxAge && meta.Age > kr.cache.maxAge
	if revalidate || stale {
		fresh, freshMeta, ferr := direct(ctx, req)
		switch {
		case ferr == nil:
			v, meta = fresh, freshMeta
		case stale && !revalidate && meta.Age <= kr.cache.maxAge+kr.cache.staleIfError:
			// stale-if-error: the cached value is still acceptable.
		default:
			a.writeError(w, r, ferr)
			return
		}
	}
	writeView(w, meta, render(v))
}

// writeView writes a read's response with Consul's headers.
func writeView(w http.ResponseWriter, meta watchcache.ResultMeta, v view) {
	h := w.Header()
	h.Set("X-Consul-Index", strconv.FormatUint(max(meta.Index, 1), 10))
	h.Set("X-Consul-KnownLeader", strconv.FormatBool(meta.Age == 0))
	h.Set("X-Consul-LastContact", strconv.FormatInt(meta.Age.Milliseconds(), 10))
	h.Set("Age", strconv.FormatInt(int64(meta.Age/time.Second), 10))
	if meta.Hit {
		h.Set("X-Cache", "HIT")
	} else {
		h.Set("X-Cache", "MISS")
	}
	if !v.found {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	h.Set("Content-Type", v.contentType)
	h.Set("Content-Length", strconv.Itoa(len(v.body)))
	if v.raw {
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Content-Security-Policy", "sandbox")
	}
	w.Write(v.body)
}

// readValue reads a PUT's body, at most MaxValueSize bytes.
func readValue(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	http.NewResponseController(w).SetReadDeadline(time.Now().Add(bodyReadTimeout))
	value, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxValueSize))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return nil, errTooLarge
	case err != nil:
		return nil, badf("request body", "%v", err)
	}
	return value, nil
}

// put serves PUT /v1/kv/<key>[?cas=N]; it answers true or false.
func (a *Agent) put(w http.ResponseWriter, r *http.Request, kr kvRequest, p watchcache.Partition) {
	value, err := readValue(w, r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	ctx, cancel := a.writeContext(r)
	defer cancel()
	ok := true
	if kr.hasCAS {
		ok, err = a.store.CompareAndSwap(ctx, p, kr.key, value, kr.cas)
	} else {
		err = a.store.Put(ctx, p, kr.key, value)
	}
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeBool(w, ok)
}

// delete serves DELETE /v1/kv/<key>[?recurse][?cas=N]; it answers true
// or false.
func (a *Agent) delete(w http.ResponseWriter, r *http.Request, kr kvRequest, p watchcache.Partition) {
	ctx, cancel := a.writeContext(r)
	defer cancel()
	ok := true
	var err error
	switch {
	case kr.recurse && kr.hasCAS:
		err = badf("query parameter", "\"cas\" deletes one key; it cannot be combined with \"recurse\"")
	case kr.recurse:
		err = a.store.DeletePrefix(ctx, p, kr.key)
	case kr.hasCAS:
		ok, err = a.store.DeleteCAS(ctx, p, kr.key, kr.cas)
	default:
		err = a.store.Delete(ctx, p, kr.key)
	}
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeBool(w, ok)
}

// writeContext is the context of a write to the store. It detaches from
// the request's: once started, neither a client going away nor a shutdown
// aborts a write midway; WriteTimeout bounds it instead (an unreachable
// store makes the client retry until then).
func (a *Agent) writeContext(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(r.Context()), a.cfg.WriteTimeout)
}

func writeBool(w http.ResponseWriter, ok bool) {
	w.Header().Set("Content-Type", "application/json")
	w.Write([]byte(strconv.FormatBool(ok)))
}
