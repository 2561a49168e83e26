package agent

import (
	"context"
	"encoding/json"
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
// does, from the store's health: the leader's address as a JSON string
// ("" when the store knows none), and the list of peers. A store that does
// not answer is a 503 with the reason, so both serve as health checks.
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
	leader := ""
	if h.Reachable && h.Leader {
		leader = h.Endpoint
	}
	var body any = leader
	if strings.HasSuffix(r.URL.Path, "/peers") {
		peers := []string{}
		if leader != "" {
			peers = append(peers, leader)
		}
		body = peers
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(body)
}

// handleUnsupported answers every path the agent does not serve. Consul
// endpoints (sessions, catalog, health, ...) get a 400 that says so rather
// than a bare 404 that looks like a missing key.
func (a *Agent) handleUnsupported(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/v1/") {
		http.Error(w, "watchcache agent: "+r.URL.Path+" is not served; this agent serves /v1/kv/, /v1/watch/kv/, /v1/status, /v1/status/leader, /v1/status/peers and /metrics", http.StatusBadRequest)
		return
	}
	http.NotFound(w, r)
}
