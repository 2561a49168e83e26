package agent

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestParseKVRequest(t *testing.T) {
	for _, tc := range []struct {
		name, method, query string
		header              string // Cache-Control
		want                func(kvRequest) bool
		bad                 string // substring of the 400 message; "" when valid
	}{
		{name: "plain get", method: "GET", want: func(r kvRequest) bool { return r.key == "k" && r.wait == 0 }},
		{name: "recurse", method: "GET", query: "recurse", want: func(r kvRequest) bool { return r.recurse }},
		{name: "recurse=true", method: "GET", query: "recurse=true", want: func(r kvRequest) bool { return r.recurse }},
		{name: "keys with separator", method: "GET", query: "keys&separator=/", want: func(r kvRequest) bool { return r.keys && r.separator == "/" }},
		{name: "blocking defaults to 5m plus jitter", method: "GET", query: "index=7", want: func(r kvRequest) bool {
			return r.index == 7 && r.wait >= 5*time.Minute && r.wait <= 5*time.Minute+5*time.Minute/16
		}},
		{name: "wait is capped at 10m", method: "GET", query: "index=7&wait=1h", want: func(r kvRequest) bool {
			return r.wait >= 10*time.Minute && r.wait <= 10*time.Minute+10*time.Minute/16
		}},
		{name: "wait without index does not block", method: "GET", query: "wait=10s", want: func(r kvRequest) bool { return r.wait == 0 }},
		{name: "consul/api wait in ms", method: "GET", query: "index=3&wait=60000ms", want: func(r kvRequest) bool { return r.wait >= time.Minute }},
		{name: "cache-control", method: "GET", header: "max-age=30, stale-if-error=60, must-revalidate", want: func(r kvRequest) bool {
			return r.cache.hasMaxAge && r.cache.maxAge == 30*time.Second && r.cache.staleIfError == time.Minute && r.cache.mustRevalidate
		}},
		{name: "unknown cache-control directives are ignored", method: "GET", header: "no-transform, private", want: func(r kvRequest) bool { return r.cache == cacheControl{} }},
		{name: "put cas", method: "PUT", query: "cas=0", want: func(r kvRequest) bool { return r.hasCAS && r.cas == 0 }},
		{name: "put flags=0", method: "PUT", query: "flags=0", want: func(r kvRequest) bool { return true }},
		{name: "delete recurse cas", method: "DELETE", query: "recurse&cas=5", want: func(r kvRequest) bool { return r.recurse && r.cas == 5 }},
		{name: "dc of this agent", method: "GET", query: "dc=dc1", want: func(r kvRequest) bool { return true }},

		{name: "bad index", method: "GET", query: "index=abc", bad: `"index": "abc"`},
		{name: "negative index", method: "GET", query: "index=-1", bad: `"index"`},
		{name: "bad wait", method: "GET", query: "index=1&wait=10", bad: `"wait": "10"`},
		{name: "negative wait", method: "GET", query: "index=1&wait=-5s", bad: `negative`},
		{name: "unknown parameter", method: "GET", query: "recurce", bad: `unknown parameter "recurce"`},
		{name: "bad boolean", method: "GET", query: "recurse=maybe", bad: `"recurse": "maybe"`},
		{name: "acquire", method: "PUT", query: "acquire=abc", bad: `"acquire" is not supported`},
		{name: "release", method: "PUT", query: "release=abc", bad: `"release" is not supported`},
		{name: "flags", method: "PUT", query: "flags=42", bad: `only 0 is supported`},
		{name: "bad cas", method: "PUT", query: "cas=x", bad: `"cas": "x"`},
		{name: "cas on get", method: "GET", query: "cas=1", bad: `"cas" is for PUT`},
		{name: "index on put", method: "PUT", query: "index=1", bad: `"index" is for GET`},
		{name: "recurse on put", method: "PUT", query: "recurse", bad: `"recurse" is for GET and DELETE`},
		{name: "repeated parameter", method: "GET", query: "index=1&index=2", bad: `given 2 times`},
		{name: "other dc", method: "GET", query: "dc=dc9", bad: `not "dc9"`},
		{name: "other namespace", method: "GET", query: "ns=team", bad: `"ns"`},
		{name: "separator without keys", method: "GET", query: "separator=/", bad: `needs "keys"`},
		{name: "recurse and keys", method: "GET", query: "recurse&keys", bad: `mutually exclusive`},
		{name: "raw with recurse", method: "GET", query: "raw&recurse", bad: `"raw" reads one key`},
		{name: "stale and consistent", method: "GET", query: "stale&consistent", bad: `mutually exclusive`},
		{name: "bad max-age", method: "GET", header: "max-age=soon", bad: `max-age="soon"`},
		{name: "max-age without value", method: "GET", header: "max-age", bad: `max-age needs`},
		{name: "bad stale-if-error", method: "GET", header: "stale-if-error=-1", bad: `stale-if-error`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q, err := url.ParseQuery(tc.query)
			if err != nil {
				t.Fatal(err)
			}
			h := http.Header{}
			if tc.header != "" {
				h.Set("Cache-Control", tc.header)
			}
			r, err := parseKVRequest(tc.method, "k", q, h, "dc1")
			if tc.bad != "" {
				var br *badRequest
				if !errors.As(err, &br) || !strings.Contains(err.Error(), tc.bad) {
					t.Fatalf("error = %v, want a bad request mentioning %s", err, tc.bad)
				}
				return
			}
			if err != nil {
				t.Fatalf("error = %v", err)
			}
			if !tc.want(r) {
				t.Fatalf("parsed %+v", r)
			}
		})
	}
	if _, err := parseKVRequest("PATCH", "k", nil, nil, "dc1"); !errors.Is(err, errMethod) {
		t.Fatalf("PATCH = %v, want errMethod", err)
	}
	if _, err := parseKVRequest("PUT", "", nil, nil, "dc1"); err == nil {
		t.Fatal("PUT without a key accepted")
	}
}

// FuzzParseKVRequest: no query string, header or key crashes the parser;
// every error is a 400 that names what is wrong; accepted blocking
// requests respect the wait cap.
func FuzzParseKVRequest(f *testing.F) {
	for _, seed := range []string{"", "recurse", "keys&separator=/", "index=5&wait=30s", "index=1&wait=1h", "cas=0", "flags=1", "acquire=x", "%zz", "index=18446744073709551615", "wait=9223372036854775807ns&index=1"} {
		f.Add("GET", "a/b", seed, "max-age=5")
		f.Add("PUT", "a/b", seed, "")
		f.Add("DELETE", "", seed, "stale-if-error=1, must-revalidate")
	}
	f.Fuzz(func(t *testing.T, method, key, query, cacheControl string) {
		q, err := url.ParseQuery(query)
		if err != nil {
			return // net/http answers a malformed query itself
		}
		h := http.Header{"Cache-Control": {cacheControl}}
		r, err := parseKVRequest(method, key, q, h, "dc1")
		if err != nil {
			var br *badRequest
			if !errors.Is(err, errMethod) && (!errors.As(err, &br) || br.what == "" || br.msg == "") {
				t.Fatalf("error %v (%T) does not name the problem", err, err)
			}
			return
		}
		if r.wait < 0 || r.wait > maxWait+maxWait/16 {
			t.Fatalf("wait %v outside [0, %v]", r.wait, maxWait+maxWait/16)
		}
		if r.wait > 0 && r.index == 0 {
			t.Fatal("a request without index blocks")
		}
	})
}

// FuzzParseWait: any string is a duration within bounds or a 400.
func FuzzParseWait(f *testing.F) {
	for _, s := range []string{"10s", "5m", "1h", "60000ms", "10", "-1s", "", "1e9h", "9223372036854775807ns"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := parseWait(s)
		if err != nil {
			var br *badRequest
			if !errors.As(err, &br) || !strings.Contains(err.Error(), "wait") {
				t.Fatalf("parseWait(%q) error %v does not name wait", s, err)
			}
			return
		}
		if d < 0 {
			t.Fatalf("parseWait(%q) = %v", s, d)
		}
	})
}

// FuzzParseCacheControl: any header value parses or is a 400 naming
// Cache-Control; ages are never negative.
func FuzzParseCacheControl(f *testing.F) {
	for _, s := range []string{"max-age=5", "max-age=\"5\"", "no-cache", "stale-if-error=30, max-age=0", "max-age=", "MAX-AGE=1", ",,,", "max-age=99999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cc, err := parseCacheControl([]string{s})
		if err != nil {
			if !strings.Contains(err.Error(), "Cache-Control") {
				t.Fatalf("error %v does not name Cache-Control", err)
			}
			return
		}
		if cc.maxAge < 0 || cc.staleIfError < 0 {
			t.Fatalf("negative age from %q: %+v", s, cc)
		}
	})
}

func TestKVKey(t *testing.T) {
	for _, tc := range []struct{ path, key, bad string }{
		{path: "/v1/kv/a/b", key: "a/b"},
		{path: "/v1/kv/", key: ""},
		{path: "/v1/kv", key: ""},
		{path: "/v1/kv//lead", key: "/lead"},
		{path: "/v1/kvx", bad: "not under"},
		{path: "/v1/kv/a\x00b", bad: "NUL"},
		{path: "/v1/kv/\xff", bad: "UTF-8"},
	} {
		key, err := kvKey(tc.path, "/v1/kv")
		if tc.bad != "" {
			if err == nil || !strings.Contains(err.Error(), tc.bad) {
				t.Errorf("kvKey(%q) = %q, %v; want an error about %s", tc.path, key, err, tc.bad)
			}
			continue
		}
		if err != nil || key != tc.key {
			t.Errorf("kvKey(%q) = %q, %v; want %q", tc.path, key, err, tc.key)
		}
	}
}

// FuzzKVKey: any path yields a key that, put back under the root, gives
// the path again, or a 400 naming the path or key.
func FuzzKVKey(f *testing.F) {
	for _, p := range []string{"/v1/kv/a", "/v1/kv", "/v1/kv/", "/v1/kvx", "/v1/kv/\x00", "/v1/kv//x/"} {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, path string) {
		key, err := kvKey(path, "/v1/kv")
		if err != nil {
			var br *badRequest
			if !errors.As(err, &br) || (br.what != "path" && br.what != "key") {
				t.Fatalf("kvKey(%q): %v", path, err)
			}
			return
		}
		if path != "/v1/kv" && "/v1/kv/"+key != path {
			t.Fatalf("kvKey(%q) = %q does not round-trip", path, key)
		}
		if strings.ContainsRune(key, 0) {
			t.Fatalf("kvKey(%q) = %q contains NUL", path, key)
		}
	})
}
