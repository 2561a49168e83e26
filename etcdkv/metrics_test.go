package etcdkv

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/etcdtest"
)

// metricValues gathers reg into name{label values} -> value.
func metricValues(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.Metric {
			name := mf.GetName()
			for _, l := range m.Label {
				name += "{" + l.GetValue() + "}"
			}
			out[name] = value(m)
		}
	}
	return out
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Counter != nil:
		return m.Counter.GetValue()
	}
	return -1
}

// The source's metrics follow what it does: its watch streams and
// watches, its access checks, logins, auth changes, and where consistent
// reads were served from.
func TestSourceMetrics(t *testing.T) {
	t.Parallel()
	c := authCluster(t)
	f := newFixture(t, testConfig(c, 1), watchcache.Options{})
	reg := prometheus.NewRegistry()
	if err := reg.Register(f.src.Collector()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the first auth poll", func() bool { return f.src.auth.epoch.Load() > 0 })
	if got := metricValues(t, reg); got["watchcache_etcd_watches"] != 0 || got["watchcache_etcd_identities"] != 0 || got["watchcache_etcd_auth_changes_total"] != 0 {
		t.Fatalf("metrics of a new source: %v", got)
	}

	alice := login(t, f.src, "alice", "alice-pw")
	watch(t, f.kinds.Key, KeyRequest("/a/x", alice))
	watch(t, f.kinds.Prefix, PrefixRequest("/a/", alice))
	eventually(t, "two watches", func() bool { return metricValues(t, reg)["watchcache_etcd_watches"] == 2 })
	if _, _, err := f.kinds.ReadKey(testCtx(t), KeyRequest("/a/x", alice)); err != nil {
		t.Fatal(err)
	}
	got := metricValues(t, reg)
	for name, want := range map[string]float64{
		"watchcache_etcd_watch_streams":                 1, // alice's two watches share her stream
		"watchcache_etcd_identities":                    1,
		"watchcache_etcd_consistent_reads_total{cache}": 1,
		"watchcache_etcd_consistent_reads_total{etcd}":  0,
		"watchcache_etcd_watch_streams_drained_total":   0,
	} {
		if got[name] != want {
			t.Errorf("%s = %v, want %v", name, got[name], want)
		}
	}
	if got["watchcache_etcd_access_checks_total"] < 1 {
		t.Errorf("access checks = %v after a consistent read, want at least 1", got["watchcache_etcd_access_checks_total"])
	}

	root := c.Client(t, etcdtest.WithCredentials(etcdtest.RootUser, etcdtest.RootPassword))
	if _, err := root.RoleAdd(testCtx(t), "extra"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the auth change counted", func() bool { return metricValues(t, reg)["watchcache_etcd_auth_changes_total"] == 1 })
}
