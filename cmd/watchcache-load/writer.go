package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// requestTimeout bounds each of the run's own requests to the agent.
const requestTimeout = 30 * time.Second

// kvURL is the agent's URL for key.
func kvURL(host, key string) string {
	return (&url.URL{Scheme: "http", Host: host, Path: "/v1/kv/" + key}).String()
}

// put writes value to key through the agent.
func put(ctx context.Context, c *http.Client, host, key, value string) error {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, kvURL(host, key), strings.NewReader(value))
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("PUT %s: %w", key, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return fmt.Errorf("PUT %s: %w", key, err)
	}
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != "true" {
		return fmt.Errorf("PUT %s: %s %q", key, resp.Status, body)
	}
	return nil
}

// index reads key through the agent (which makes its cache start watching
// it) and returns its X-Consul-Index.
func index(ctx context.Context, c *http.Client, host, key string) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, kvURL(host, key), nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, fmt.Errorf("GET %s: %w", key, err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", key, resp.Status)
	}
	idx, err := strconv.ParseUint(resp.Header.Get("X-Consul-Index"), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("GET %s: X-Consul-Index %q: %v", key, resp.Header.Get("X-Consul-Index"), err)
	}
	return idx, nil
}
