package agent

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Blocking query limits, as Consul's HTTP API has them.
const (
	defaultWait = 5 * time.Minute
	maxWait     = 10 * time.Minute
)

// badRequest is an error answered with 400: it names the parameter or
// header at fault.
type badRequest struct {
	what     string // the parameter or header
	msg      string
	verbatim bool // msg is Consul's own words: the whole message
}

func (e *badRequest) Error() string {
	if e.verbatim {
		return e.msg
	}
	return fmt.Sprintf("bad %s: %s", e.what, e.msg)
}

// errMissingKey is Consul's answer to a read or write that needs a key and
// names none.
var errMissingKey = &badRequest{what: "key", msg: "Missing key name", verbatim: true}

func badf(what, format string, args ...any) error {
	return &badRequest{what: what, msg: fmt.Sprintf(format, args...)}
}

// kvRequest is a parsed /v1/kv request.
type kvRequest struct {
	key string

	// Reads.
	recurse    bool
	keys       bool
	separator  string
	raw        bool
	pretty     bool          // indent JSON, as Consul's ?pretty
	index      uint64        // blocking: wait for an index above this
	wait       time.Duration // blocking: how long, jitter included; 0 when not blocking
	consistent bool          // read through to the store
	cache      cacheControl

	// Writes.
	cas    uint64
	hasCAS bool

	token string // ?token=, Consul's query-string form of X-Consul-Token
}

// queryParam says what the agent does with a query parameter.
type queryParam int

const (
	paramUsed        queryParam = iota // parsed below
	paramIgnored                       // accepted and meaningless here (Consul sends it)
	paramUnsupported                   // a Consul feature this agent refuses with 400
)

// kvParams lists every query parameter /v1/kv accepts. Anything else is a
// 400 that names it: a typo must not silently turn into a different query.
var kvParams = map[string]queryParam{
	"recurse": paramUsed, "keys": paramUsed, "separator": paramUsed, "raw": paramUsed,
	"index": paramUsed, "wait": paramUsed, "consistent": paramUsed, "stale": paramUsed,
	"cached": paramUsed, "cas": paramUsed, "flags": paramUsed, "token": paramUsed,
	"dc": paramUsed, "ns": paramUsed, "partition": paramUsed, "pretty": paramUsed,
	"seperator": paramUsed, // Consul's historic spelling, which its clients still send
	// Consul's clients send these; for KV reads Consul itself does not use
	// them (near sorts nodes by distance, filter applies to catalog and
	// health listings), so neither does the agent.
	"near": paramIgnored, "filter": paramIgnored,
	// Sessions, locks and peering are not served (see the README).
	"acquire": paramUnsupported, "release": paramUnsupported, "session": paramUnsupported,
	"peer": paramUnsupported,
}

// parseKVRequest parses a /v1/kv request: the key from path (already
// stripped of "/v1/kv/"), the query and the Cache-Control header.
// datacenter is the agent's own: requests naming another are refused.
func parseKVRequest(method, key string, q url.Values, h http.Header, datacenter string) (kvRequest, error) {
	r := kvRequest{key: key}
	for name, vals := range q {
		switch kind, ok := kvParams[name]; {
		case !ok:
			return r, badf("query parameter", "unknown parameter %q", name)
		case kind == paramUnsupported:
			return r, badf("query parameter", "%q is not supported by this agent (sessions, locks and peering are not served)", name)
		}
		if len(vals) > 1 {
			return r, badf("query parameter", "%q given %d times", name, len(vals))
		}
	}
	if strings.ContainsRune(key, 0) {
		return r, badf("key", "contains a NUL byte")
	}
	var err error
	if r.recurse, err = flagParam(q, "recurse"); err != nil {
		return r, err
	}
	if r.keys, err = flagParam(q, "keys"); err != nil {
		return r, err
	}
	if r.raw, err = flagParam(q, "raw"); err != nil {
		return r, err
	}
	if r.consistent, err = flagParam(q, "consistent"); err != nil {
		return r, err
	}
	stale, err := flagParam(q, "stale")
	if err != nil {
		return r, err
	}
	cached, err := flagParam(q, "cached")
	if err != nil {
		return r, err
	}
	if r.pretty, err = flagParam(q, "pretty"); err != nil {
		return r, err
	}
	if r.consistent && stale {
		return r, badf("query parameter", "\"stale\" and \"consistent\" are mutually exclusive")
	}
	if r.consistent && cached {
		return r, badf("query parameter", "Cannot specify ?cached with ?consistent, conflicting semantics")
	}
	for _, name := range []string{"seperator", "separator"} { // the right spelling wins, as in Consul
		if q.Has(name) {
			if !r.keys {
				return r, badf("query parameter", "%q needs \"keys\"", name)
			}
			r.separator = q.Get(name)
		}
	}
	if dc := q.Get("dc"); dc != "" && dc != datacenter {
		return r, badf("query parameter", "\"dc\": this agent serves datacenter %q, not %q", datacenter, dc)
	}
	for _, name := range []string{"ns", "partition"} {
		if v := q.Get(name); v != "" && v != "default" {
			return r, badf("query parameter", "%q: only the default %s is served, not %q", name, name, v)
		}
	}
	if flags := q.Get("flags"); flags != "" {
		f, err := strconv.ParseUint(flags, 10, 64)
		if err != nil {
			return r, badf("query parameter", "\"flags\": %q is not an unsigned integer", flags)
		}
		if f != 0 {
			return r, badf("query parameter", "\"flags\": only 0 is supported, got %d", f)
		}
	}
	r.token = q.Get("token")

	switch method {
	case http.MethodGet:
		if r.recurse && r.keys {
			return r, badf("query parameter", "\"recurse\" and \"keys\" are mutually exclusive")
		}
		if r.raw && (r.recurse || r.keys) {
			return r, badf("query parameter", "\"raw\" reads one key; it cannot be combined with \"recurse\" or \"keys\"")
		}
		if q.Has("cas") {
			return r, badf("query parameter", "\"cas\" is for PUT and DELETE")
		}
		if key == "" && !r.recurse && !r.keys {
			return r, errMissingKey
		}
		if r.index, r.wait, err = parseBlocking(q); err != nil {
			return r, err
		}
		if r.cache, err = parseCacheControl(h.Values("Cache-Control")); err != nil {
			return r, err
		}
	case http.MethodPut, http.MethodDelete:
		for _, name := range []string{"keys", "raw", "index", "wait", "separator", "seperator"} {
			if q.Has(name) {
				return r, badf("query parameter", "%q is for GET", name)
			}
		}
		if method == http.MethodPut && r.recurse {
			return r, badf("query parameter", "\"recurse\" is for GET and DELETE")
		}
		if key == "" && !r.recurse {
			return r, errMissingKey
		}
		if q.Has("cas") {
			cas := q.Get("cas")
			if r.cas, err = strconv.ParseUint(cas, 10, 64); err != nil {
				return r, badf("query parameter", "\"cas\": %q is not an unsigned integer", cas)
			}
			r.hasCAS = true
		}
	default:
		return r, errMethod
	}
	return r, nil
}

var errMethod = errors.New("method not allowed")

// flagParam reads a boolean query parameter: present with no value, or
// "true"/"false" (and the other forms strconv.ParseBool accepts), as
// consul/api and curl users write them.
func flagParam(q url.Values, name string) (bool, error) {
	if !q.Has(name) {
		return false, nil
	}
	v := q.Get(name)
	if v == "" {
		return true, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, badf("query parameter", "%q: %q is not a boolean", name, v)
	}
	return b, nil
}

// parseBlocking reads ?index and ?wait. A request blocks when index is
// given and above 0; wait then defaults to 5m, is capped at 10m and gets up
// to wait/16 of random jitter, so that clients that started together do
// not all come back together.
func parseBlocking(q url.Values) (index uint64, wait time.Duration, err error) {
	if s := q.Get("index"); s != "" {
		if index, err = strconv.ParseUint(s, 10, 64); err != nil {
			return 0, 0, badf("query parameter", "\"index\": %q is not an unsigned integer", s)
		}
	}
	if s := q.Get("wait"); s != "" {
		if wait, err = parseWait(s); err != nil {
			return 0, 0, err
		}
	}
	if index == 0 {
		return 0, 0, nil
	}
	if wait == 0 {
		wait = defaultWait
	}
	wait = min(wait, maxWait)
	return index, wait + rand.N(wait/16+1), nil
}

// parseWait parses a wait duration: a Go duration with a unit ("10s",
// "1m30s", "5000ms"), as Consul accepts it.
func parseWait(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	switch {
	case err != nil:
		return 0, badf("query parameter", "\"wait\": %q is not a duration such as 30s or 5m", s)
	case d < 0:
		return 0, badf("query parameter", "\"wait\": %q is negative", s)
	}
	return d, nil
}

// cacheControl is what a request's Cache-Control header asks of the cache.
type cacheControl struct {
	maxAge         time.Duration // 0: none
	hasMaxAge      bool
	mustRevalidate bool          // no-cache too: revalidate before answering
	staleIfError   time.Duration // serve a value this much older than max-age if the store fails
}

// parseCacheControl parses request Cache-Control directives (RFC 9111):
// max-age, must-revalidate, no-cache and stale-if-error are honoured, other
// directives are ignored as the RFC says caches must, and malformed values
// of the honoured ones are errors.
func parseCacheControl(headers []string) (cacheControl, error) {
	var cc cacheControl
	for _, h := range headers {
		for _, d := range strings.Split(h, ",") {
			d = strings.TrimSpace(d)
			if d == "" {
				continue
			}
			name, val, hasVal := strings.Cut(d, "=")
			name = strings.ToLower(strings.TrimSpace(name))
			val = strings.Trim(strings.TrimSpace(val), `"`)
			switch name {
			case "max-age", "stale-if-error":
				if !hasVal {
					return cc, badf("Cache-Control", "%s needs a number of seconds", name)
				}
				secs, err := strconv.ParseUint(val, 10, 32)
				if err != nil {
					return cc, badf("Cache-Control", "%s=%q is not a number of seconds", name, val)
				}
				if name == "max-age" {
					cc.maxAge, cc.hasMaxAge = time.Duration(secs)*time.Second, true
				} else {
					cc.staleIfError = time.Duration(secs) * time.Second
				}
			case "must-revalidate", "no-cache":
				cc.mustRevalidate = true
			}
		}
	}
	return cc, nil
}
