package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// statusReport is the body of GET /v1/status.
type statusReport struct {
	Entries  int     `json:"entries"`
	Watchers int     `json:"watchers"`
	Hits     uint64  `json:"hits"`
	Misses   uint64  `json:"misses"`
	HitRatio float64 `json:"hit_ratio"`
	Blocking int64   `json:"blocking_queries"`
	Fetches  uint64  `json:"fetches"`
	Failures uint64  `json:"fetch_failures"`
	Upstream struct {
		Store    string `json:"store"` // what the agent fronts, e.g. "etcd http://..."
		Healthy  bool   `json:"healthy"`
		Endpoint string `json:"endpoint,omitempty"` // the member or server that answered
		Index    uint64 `json:"index,omitempty"`
		Leader   bool   `json:"leader"`
		Error    string `json:"error,omitempty"`
	} `json:"upstream"`
}

// handleStatus serves GET /v1/status: the cache's size and hit ratio and
// whether the store answers. It answers 200 either way; Upstream.Healthy
// says.
func (a *Agent) handleStatus(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		a.writeError(w, r, errMethod)
		return
	}
	st := a.cache.Stats()
	rep := statusReport{
		Entries: st.Entries, Watchers: st.Watchers, Hits: st.Hits, Misses: st.Misses,
		Fetches: st.Fetches, Failures: st.Failures, Blocking: a.blocked.Load(),
	}
	if total := st.Hits + st.Misses; total > 0 {
		rep.HitRatio = float64(st.Hits) / float64(total)
	}
	rep.Upstream.Store = a.store.Describe()
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if h, err := a.store.Health(ctx); err != nil {
		rep.Upstream.Error = err.Error()
	} else {
		rep.Upstream.Healthy = h.Reachable && h.Leader
		rep.Upstream.Endpoint, rep.Upstream.Index, rep.Upstream.Leader = h.Endpoint, h.Index, h.Leader
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(rep)
}

// handleLeader serves /v1/status/leader and /v1/status/peers as Consul
// does, from the store's members: the leader's address as a JSON string
// ("" when the store knows none), and the list of voting members'. A store
// that does not answer is a 503 with the reason, so both serve as health
// checks.
func (a *Agent) handleLeader(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		a.writeError(w, r, errMethod)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	h, err := a.store.Health(ctx)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	var body any = h.LeaderAddr
	if strings.HasSuffix(r.URL.Path, "/peers") {
		body = append([]string{}, h.Peers...) // [] rather than null
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(body)
}

// handleLive serves GET /livez, a liveness check: 200 "ok" as long as the
// agent serves, at once, whatever the store does (an orchestrator must not
// restart agents because etcd is down).
func (a *Agent) handleLive(w http.ResponseWriter, r *http.Request) {
	if a.startCheck(w, r) {
		io.WriteString(w, "ok\n")
	}
}

// startCheck begins the answer to a health check: GET or HEAD, plain text,
// never cached. It reports false if it answered already (another method).
func (a *Agent) startCheck(w http.ResponseWriter, r *http.Request) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		a.writeError(w, r, errMethod)
		return false
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	return true
}

// handleReady serves GET /readyz, a readiness check for load balancers and
// orchestrators: 200 "ok" while the store answers and has a leader, and
// 503 with the reason otherwise, and from the moment Shutdown begins (so
// that traffic drains to other agents).
func (a *Agent) handleReady(w http.ResponseWriter, r *http.Request) {
	if !a.startCheck(w, r) {
		return
	}
	if a.isStopping() {
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, "not ready: the agent is shutting down\n")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	h, err := a.store.Health(ctx)
	switch {
	case err != nil:
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "not ready: %s does not answer: %v\n", a.store.Describe(), err)
	case !h.Leader:
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "not ready: %s has no leader (%s answered)\n", a.store.Describe(), h.Endpoint)
	default:
		io.WriteString(w, "ok\n")
	}
}

// handleUnsupported answers every path the agent does not serve. Consul
// endpoints (sessions, catalog, health, ...) get a 400 that says so rather
// than a bare 404 that looks like a missing key.
func (a *Agent) handleUnsupported(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/v1/") {
		http.Error(w, "watchcache agent: "+r.URL.Path+" is not served; this agent serves /v1/kv/, /v1/watch/kv/, /v1/status, /v1/status/leader, /v1/status/peers, /readyz, /livez and /metrics", http.StatusBadRequest)
		return
	}
	http.NotFound(w, r)
}
