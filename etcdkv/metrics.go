package etcdkv

import "github.com/prometheus/client_golang/prometheus"

// Collector returns the source's Prometheus metrics, read when they are
// collected (nothing is counted twice on hot paths): register it on the
// registry that exports the cache's.
//
//   - watchcache_etcd_watch_streams: the watch streams that take new
//     watches; watchcache_etcd_watch_streams_draining: those open that
//     stopped taking them because etcd (or a proxy) did not answer a
//     create, and watchcache_etcd_watch_streams_drained_total how many
//     did; watchcache_etcd_watches: the etcd watches on all of them;
//   - watchcache_etcd_identities: users logged in with Login and held;
//   - watchcache_etcd_access_checks_total: access checks sent to etcd
//     (one linearizable read each, shared by the entries and consistent
//     reads of one identity that wait together);
//   - watchcache_etcd_auth_changes_total: changes of etcd's auth store the
//     source noticed (each makes every entry confirm access again);
//   - watchcache_etcd_consistent_reads_total{served}: consistent reads
//     served from the cache ("cache") or read from etcd ("etcd").
func (s *Source) Collector() prometheus.Collector { return sourceCollector{s} }

type sourceCollector struct{ s *Source }

var (
	descStreams = prometheus.NewDesc("watchcache_etcd_watch_streams",
		"etcd watch streams that take new watches.", nil, nil)
	descDraining = prometheus.NewDesc("watchcache_etcd_watch_streams_draining",
		"etcd watch streams open that take no new watches (a create was not answered in time).", nil, nil)
	descWatches = prometheus.NewDesc("watchcache_etcd_watches",
		"etcd watches of the source.", nil, nil)
	descDrained = prometheus.NewDesc("watchcache_etcd_watch_streams_drained_total",
		"Watch streams that stopped taking watches because a create was not answered in time.", nil, nil)
	descIdentities = prometheus.NewDesc("watchcache_etcd_identities",
		"Users logged in with Login and held by the source.", nil, nil)
	descChecks = prometheus.NewDesc("watchcache_etcd_access_checks_total",
		"Access checks sent to etcd (one linearizable read each).", nil, nil)
	descAuthChanges = prometheus.NewDesc("watchcache_etcd_auth_changes_total",
		"Changes of etcd's auth store the source noticed.", nil, nil)
	descConsistent = prometheus.NewDesc("watchcache_etcd_consistent_reads_total",
		"Consistent reads, by where they were served from (cache, etcd).", []string{"served"}, nil)
)

func (c sourceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descStreams, descDraining, descWatches, descDrained, descIdentities, descChecks, descAuthChanges, descConsistent} {
		ch <- d
	}
}

func (c sourceCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	s.muxMu.Lock()
	streams, draining := len(s.muxes), len(s.draining)
	muxes := make([]*watchMux, 0, streams+draining)
	for _, m := range s.muxes {
		muxes = append(muxes, m)
	}
	for m := range s.draining {
		muxes = append(muxes, m)
	}
	s.muxMu.Unlock()
	watches := 0
	for _, m := range muxes { // not under muxMu: a stream may be busy with a large report
		m.mu.Lock()
		watches += len(m.watches)
		m.mu.Unlock()
	}
	s.mu.Lock()
	identities := len(s.pool)
	s.mu.Unlock()
	gauge := func(d *prometheus.Desc, v int, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(descStreams, streams)
	gauge(descDraining, draining)
	gauge(descWatches, watches)
	counter(descDrained, s.drained.Load())
	gauge(descIdentities, identities)
	counter(descChecks, s.auth.checks.Load())
	counter(descAuthChanges, int64(max(s.auth.epoch.Load(), 1)-1)) // the first poll starts epoch 1
	counter(descConsistent, s.consistentCached.Load(), "cache")
	counter(descConsistent, s.consistentDirect.Load(), "etcd")
}
