package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"

	"github.com/hashicorp/consul/api"
)

// The kv commands talk to the agent's /v1/kv/ themselves rather than
// through consul/api, whose KV methods trim a leading '/' from every key:
// "kv delete /config/db" would delete config/db. Here the key is the URL's
// path after /v1/kv/, exactly as typed, escaped only as a URL path must be
// ('%', '?', '#', spaces, non-ASCII), and the agent takes it back verbatim.

// maxKVBody bounds a read's answer: a prefix of many keys, each up to the
// agent's 512 KiB, base64 in JSON.
const maxKVBody = 1 << 30

// kvURL is the URL of key under /v1/kv/ with query.
func (c *agentClient) kvURL(key string, query url.Values) string {
	u := *c.base
	u.Path = "/v1/kv/" + key
	u.RawQuery = query.Encode()
	return u.String()
}

// kvDo sends a request for key and returns the answer's body if it is a
// 200; a 404 of a read is (nil, nil). Other answers are statusErrors.
func (c *agentClient) kvDo(ctx context.Context, method, key string, query url.Values, body []byte) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.kvURL(key, query), rd)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound && method == http.MethodGet:
		return nil, nil
	case resp.StatusCode != http.StatusOK:
		return nil, responseError(resp)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxKVBody+1))
	if err != nil {
		return nil, fmt.Errorf("reading the agent's answer: %w", err)
	}
	if len(b) > maxKVBody {
		return nil, fmt.Errorf("the agent's answer is over %d bytes", maxKVBody)
	}
	return b, nil
}

// kvGet returns key's pair, or nil if it does not exist.
func (c *agentClient) kvGet(ctx context.Context, key string) (*api.KVPair, error) {
	pairs, err := c.kvPairs(ctx, key, nil)
	if err != nil || len(pairs) == 0 {
		return nil, err
	}
	return pairs[0], nil
}

// kvList returns every pair under prefix, in key order.
func (c *agentClient) kvList(ctx context.Context, prefix string) ([]*api.KVPair, error) {
	return c.kvPairs(ctx, prefix, url.Values{"recurse": {""}})
}

func (c *agentClient) kvPairs(ctx context.Context, key string, query url.Values) ([]*api.KVPair, error) {
	b, err := c.kvDo(ctx, http.MethodGet, key, query, nil)
	if err != nil || b == nil {
		return nil, err
	}
	var pairs []*api.KVPair
	if err := json.Unmarshal(b, &pairs); err != nil {
		return nil, fmt.Errorf("the agent's answer is not a list of keys: %w", err)
	}
	return pairs, nil
}

// kvKeys returns the key names under prefix, cut after separator ("" for
// none), as ?keys does.
func (c *agentClient) kvKeys(ctx context.Context, prefix, separator string) ([]string, error) {
	q := url.Values{"keys": {""}}
	if separator != "" {
		q.Set("separator", separator)
	}
	b, err := c.kvDo(ctx, http.MethodGet, prefix, q, nil)
	if err != nil || b == nil {
		return nil, err
	}
	var keys []string
	if err := json.Unmarshal(b, &keys); err != nil {
		return nil, fmt.Errorf("the agent's answer is not a list of key names: %w", err)
	}
	return keys, nil
}

// kvPut writes value to key; with cas, only if key's ModifyIndex is *cas
// (0: only if it does not exist). It reports whether it wrote.
func (c *agentClient) kvPut(ctx context.Context, key string, value []byte, cas *uint64) (bool, error) {
	if value == nil {
		value = []byte{}
	}
	return c.kvWrite(ctx, http.MethodPut, key, casQuery(nil, cas), value)
}

// kvDelete deletes key, or with recurse every key under it; with cas, only
// if key's ModifyIndex is *cas. It reports whether it deleted.
func (c *agentClient) kvDelete(ctx context.Context, key string, recurse bool, cas *uint64) (bool, error) {
	var q url.Values
	if recurse {
		q = url.Values{"recurse": {""}}
	}
	return c.kvWrite(ctx, http.MethodDelete, key, casQuery(q, cas), nil)
}

func casQuery(q url.Values, cas *uint64) url.Values {
	if cas == nil {
		return q
	}
	if q == nil {
		q = url.Values{}
	}
	q.Set("cas", strconv.FormatUint(*cas, 10))
	return q
}

// kvWrite sends a write and reads its true or false.
func (c *agentClient) kvWrite(ctx context.Context, method, key string, query url.Values, body []byte) (bool, error) {
	b, err := c.kvDo(ctx, method, key, query, body)
	if err != nil {
		return false, err
	}
	var ok bool
	if err := json.Unmarshal(b, &ok); err != nil {
		return false, fmt.Errorf("the agent answered %q, not true or false", b)
	}
	return ok, nil
}
