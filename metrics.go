package watchcache

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// metrics are the cache's Prometheus collectors, labelled by kind. They
// count whether or not a registry was given, so that registering is the
// only difference.
type metrics struct {
	hits, misses   *prometheus.CounterVec
	fetches        *prometheus.CounterVec
	fetchSeconds   *prometheus.HistogramVec
	entries        *prometheus.GaugeVec
	watchers       *prometheus.GaugeVec
	evictions      *prometheus.CounterVec
	releases       *prometheus.CounterVec
	callbackPanics *prometheus.CounterVec
	closedChans    *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	kind := []string{"kind"}
	m := &metrics{
		hits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "watchcache_hits_total", Help: "Gets answered from the cache without waiting for a fetch.",
		}, kind),
		misses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "watchcache_misses_total", Help: "Gets that waited for a fetch or bypassed the cache.",
		}, kind),
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "watchcache_fetches_total", Help: "Upstream fetches by outcome (success, error, fatal).",
		}, []string{"kind", "outcome"}),
		fetchSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "watchcache_fetch_duration_seconds",
			Help:    "Upstream fetch latency, blocking waits included.",
			Buckets: []float64{.001, .005, .025, .1, .5, 1, 5, 30, 120, 600},
		}, kind),
		entries: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "watchcache_entries", Help: "Entries in the cache.",
		}, kind),
		watchers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "watchcache_watchers", Help: "Active Notify and NotifyCallback watches.",
		}, kind),
		evictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "watchcache_evictions_total", Help: "Entries evicted, by reason (ttl, capacity).",
		}, []string{"kind", "reason"}),
		releases: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "watchcache_releases_total", Help: "Idle entries that let their upstream subscription go (KindOptions.ReleaseAfter).",
		}, kind),
		callbackPanics: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "watchcache_callback_panics_total", Help: "NotifyCallback callbacks that panicked.",
		}, kind),
		closedChans: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "watchcache_closed_channel_watches_total",
			Help: "Notify watches ended because their consumer closed the channel (cancelling the context is the supported way).",
		}, kind),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.hits, m.misses, m.fetches, m.fetchSeconds, m.entries, m.watchers, m.evictions, m.releases, m.callbackPanics, m.closedChans} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// kindMetrics are one kind's children of metrics, resolved once so that the
// hot paths do no label lookups.
type kindMetrics struct {
	hits, misses                  prometheus.Counter
	fetchOK, fetchErr, fetchFatal prometheus.Counter
	fetchSeconds                  prometheus.Observer
	entries, watchers             prometheus.Gauge
	evictedTTL, evictedCapacity   prometheus.Counter
	released                      prometheus.Counter
	callbackPanics, closedChans   prometheus.Counter
}

func (m *metrics) forKind(kind string) *kindMetrics {
	return &kindMetrics{
		hits:            m.hits.WithLabelValues(kind),
		misses:          m.misses.WithLabelValues(kind),
		fetchOK:         m.fetches.WithLabelValues(kind, "success"),
		fetchErr:        m.fetches.WithLabelValues(kind, "error"),
		fetchFatal:      m.fetches.WithLabelValues(kind, "fatal"),
		fetchSeconds:    m.fetchSeconds.WithLabelValues(kind),
		entries:         m.entries.WithLabelValues(kind),
		watchers:        m.watchers.WithLabelValues(kind),
		evictedTTL:      m.evictions.WithLabelValues(kind, "ttl"),
		evictedCapacity: m.evictions.WithLabelValues(kind, "capacity"),
		released:        m.releases.WithLabelValues(kind),
		callbackPanics:  m.callbackPanics.WithLabelValues(kind),
		closedChans:     m.closedChans.WithLabelValues(kind),
	}
}

func (m *kindMetrics) observeFetch(d time.Duration, err error) {
	m.fetchSeconds.Observe(d.Seconds())
	switch {
	case err == nil:
		m.fetchOK.Inc()
	case errors.Is(err, ErrFatal):
		m.fetchFatal.Inc()
	default:
		m.fetchErr.Inc()
	}
}

func (m *kindMetrics) evicted(reason string) {
	if reason == "capacity" {
		m.evictedCapacity.Inc()
		return
	}
	m.evictedTTL.Inc()
}

// Stats is a summary of the cache's metrics, for status pages.
type Stats struct {
	Entries  int // entries in the cache
	Watchers int // active watches
	Hits     uint64
	Misses   uint64
	Fetches  uint64 // upstream fetches, any outcome
	Failures uint64 // of which failed (fatal included)
}

// Stats returns the cache's counters summed over its kinds. It reads the
// same values the Prometheus metrics export, whether or not they are
// registered.
func (c *Cache) Stats() Stats {
	var s Stats
	s.Entries = int(c.count.Load())
	for _, k := range c.kindList() {
		m := k.metrics()
		s.Watchers += int(metricValue(m.watchers))
		s.Hits += uint64(metricValue(m.hits))
		s.Misses += uint64(metricValue(m.misses))
		ok, failed := uint64(metricValue(m.fetchOK)), uint64(metricValue(m.fetchErr)+metricValue(m.fetchFatal))
		s.Fetches += ok + failed
		s.Failures += failed
	}
	return s
}

// metricValue reads a counter's or gauge's current value.
func metricValue(m prometheus.Metric) float64 {
	var pb dto.Metric
	if err := m.Write(&pb); err != nil {
		return 0
	}
	switch {
	case pb.Counter != nil:
		return pb.Counter.GetValue()
	case pb.Gauge != nil:
		return pb.Gauge.GetValue()
	}
	return 0
}
