package etcdkv

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
)

// TokenUser is the etcd user a token stands for (Config.Tokens).
type TokenUser struct {
	User     string `json:"user"`
	Password string `json:"password"`
}

// tokensFile is the format of the -tokens file:
//
//	{"tokens": [{"token": "f3c1...", "user": "alice", "password": "..."}]}
//
// Each token (a Consul client's X-Consul-Token) maps to the etcd user the
// store logs in as for requests that present it.
type tokensFile struct {
	Tokens []struct {
		Token string `json:"token"`
		TokenUser
	} `json:"tokens"`
}

// LoadTokens reads a tokens file:
//
//	{"tokens": [{"token": "f3c1...", "user": "alice", "password": "..."}]}
func LoadTokens(path string) (map[string]TokenUser, error) {
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
func parseTokens(data []byte) (map[string]TokenUser, error) {
	var f tokensFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("not a tokens file (want {\"tokens\": [{\"token\", \"user\", \"password\"}]}): %w", err)
	}
	if dec.More() {
		return nil, errors.New("trailing data after the tokens object")
	}
	tokens := make(map[string]TokenUser, len(f.Tokens))
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
		tokens[t.Token] = t.TokenUser
	}
	return tokens, nil
}
