package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// remoteAgent is an agent in another process, seen only through its HTTP
// API.
type remoteAgent struct {
	host string
	http *http.Client
}

func (r *remoteAgent) addr() string   { return r.host }
func (r *remoteAgent) String() string { return "at " + r.host + " (another process)" }
func (r *remoteAgent) close() error   { return nil }

// waitBlocked returns once n GETs wait in the agent (see waitBlocked).
func (r *remoteAgent) waitBlocked(ctx context.Context, n int) error {
	return waitBlocked(ctx, r.http, r.host, n)
}

func (r *remoteAgent) watches() (int, bool, error) { return 0, false, nil }

// memory reads the agent's own process and Go metrics from its /metrics.
func (r *remoteAgent) memory(ctx context.Context) (memSample, error) {
	var s memSample
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+r.host+"/metrics", nil)
	if err != nil {
		return s, err
	}
	resp, err := r.http.Do(req)
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(val, 64)
		if err != nil {
			continue
		}
		switch name {
		case "process_resident_memory_bytes":
			s.RSS = uint64(v)
		case "go_memstats_heap_alloc_bytes":
			s.Heap = uint64(v)
		case "go_memstats_stack_inuse_bytes":
			s.StackInuse = uint64(v)
		case "go_goroutines":
			s.Goroutines = int(v)
		}
	}
	return s, sc.Err()
}

// waitBlocked polls the agent's /v1/status until its count of blocking
// queries waiting in the cache reaches n. A write before that could find
// some requests still on their way, and they would answer at once rather
// than on the change.
func waitBlocked(ctx context.Context, hc *http.Client, host string, n int) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		got, err := blockingQueries(ctx, hc, host)
		if err != nil {
			return err
		}
		if got >= int64(n) {
			return nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("%d of %d GETs were waiting in the agent: %w", got, n, context.Cause(ctx))
		}
	}
}

// blockingQueries reads blocking_queries from the agent's /v1/status.
func blockingQueries(ctx context.Context, hc *http.Client, host string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+host+"/v1/status", nil)
	if err != nil {
		return 0, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET /v1/status: %s", resp.Status)
	}
	var st struct {
		Blocking *int64 `json:"blocking_queries"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil || st.Blocking == nil {
		return 0, fmt.Errorf("GET /v1/status: no blocking_queries in the answer (%v)", err)
	}
	return *st.Blocking, nil
}
