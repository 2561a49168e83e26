package etcdkv

import (
	"strings"
	"testing"
)

func TestParseTokens(t *testing.T) {
	good := `{"tokens": [{"token": "t1", "user": "alice", "password": "a"}, {"token": "t2", "user": "bob", "password": ""}]}`
	tokens, err := parseTokens([]byte(good))
	if err != nil || len(tokens) != 2 || tokens["t1"] != (TokenUser{"alice", "a"}) {
		t.Fatalf("parseTokens = %v %v", tokens, err)
	}
	for _, bad := range []struct{ data, want string }{
		{`{"tokens": [{"token": "", "user": "a"}]}`, "empty token"},
		{`{"tokens": [{"token": "t"}]}`, "without a user"},
		{`{"tokens": [{"token": "t", "user": "a"}, {"token": "t", "user": "b"}]}`, "listed twice"},
		{`{"tokens": [{"token": "t", "user": "a", "role": "x"}]}`, "unknown field"},
		{`{"tokens": []} {}`, "trailing data"},
		{`[1, 2]`, "not a tokens file"},
		{``, "not a tokens file"},
	} {
		if _, err := parseTokens([]byte(bad.data)); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("parseTokens(%q) = %v, want an error about %s", bad.data, err, bad.want)
		}
	}
}

// FuzzParseTokens: no file content crashes the parser; accepted files map
// only non-empty tokens to named users.
func FuzzParseTokens(f *testing.F) {
	f.Add([]byte(`{"tokens": [{"token": "t1", "user": "alice", "password": "a"}]}`))
	f.Add([]byte(`{"tokens": null}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, data []byte) {
		tokens, err := parseTokens(data)
		if err != nil {
			return
		}
		for tok, c := range tokens {
			if tok == "" || c.User == "" {
				t.Fatalf("accepted token %q for user %q", tok, c.User)
			}
		}
	})
}
