package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/etcdkv"
)

// Credentials are an etcd user and password.
type Credentials struct {
	User     string `json:"user"`
	Password string `json:"password"`
}

// tokensFile is the format of the -tokens file:
//
//	{"tokens": [{"token": "f3c1...", "user": "alice", "password": "..."}]}
//
// Each X-Consul-Token value maps to the etcd user the agent logs in as for
// requests that present it.
type tokensFile struct {
	Tokens []struct {
		Token string `json:"token"`
		Credentials
	} `json:"tokens"`
}

// LoadTokens reads a tokens file (see tokensFile).
func LoadTokens(path string) (map[string]Credentials, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tokens file: %w", err)
	}
	tokens, err := parseTokens(data)
	if err != nil {
		return nil, fmt.Errorf("tokens file %s: %w", path, err)
	}
	return tokens, nil
}

// parseTokens parses the contents of a tokens file.
func parseTokens(data []byte) (map[string]Credentials, error) {
	var f tokensFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("not a tokens file (want {\"tokens\": [{\"token\", \"user\", \"password\"}]}): %w", err)
	}
	if dec.More() {
		return nil, errors.New("trailing data after the tokens object")
	}
	tokens := make(map[string]Credentials, len(f.Tokens))
	for i, t := range f.Tokens {
		switch {
		case t.Token == "":
			return nil, fmt.Errorf("entry %d: empty token", i)
		case t.User == "":
			return nil, fmt.Errorf("entry %d: token without a user", i)
		}
		if _, dup := tokens[t.Token]; dup {
			return nil, fmt.Errorf("entry %d: token listed twice", i)
		}
		tokens[t.Token] = t.Credentials
	}
	return tokens, nil
}

// errNoToken is answered with 403, in Consul's words.
var errNoToken = errors.New("ACL not found")

// identity returns the cache partition of the caller: the etcd user named
// by HTTP basic auth (consul/api's HttpAuth), or mapped from the
// X-Consul-Token header, a Bearer token or ?token=, verified with etcd.
// A request without credentials is the agent's own identity. A wrong
// password or an unknown token is an error: such a request never reaches
// the cache.
func (a *Agent) identity(ctx context.Context, r *http.Request, queryToken string) (watchcache.Partition, error) {
	token := r.Header.Get("X-Consul-Token")
	if bearer, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && token == "" {
		token = strings.TrimSpace(bearer)
	}
	if token == "" {
		token = queryToken
	}
	user, password, basic := r.BasicAuth()
	switch {
	case basic && token != "":
		return watchcache.Partition{}, badf("credentials", "both basic auth and a token were given; use one")
	case basic:
		return a.src.Login(ctx, user, password)
	case token != "":
		creds, ok := a.cfg.Tokens[token]
		if !ok {
			return watchcache.Partition{}, fmt.Errorf("%w (%w)", errNoToken, etcdkv.ErrAuthFailed)
		}
		return a.src.Login(ctx, creds.User, creds.Password)
	}
	return watchcache.Partition{}, nil
}
