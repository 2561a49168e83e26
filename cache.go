package watchcache

import (
	"context"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// Options configure a Cache. The zero value is valid: no metrics are
// registered, logs go to slog.Default, fetches are not rate limited and the
// number of entries is not bounded.
type Options struct {
	// Logger receives the cache's logs; nil means slog.Default().
	Logger *slog.Logger

	// Registerer, if set, receives the cache's Prometheus metrics. The
	// cache never registers on the global registry by itself.
	Registerer prometheus.Registerer

	// EntryFetchRate limits each entry's fetches (a token bucket per
	// entry); 0 means no limit. EntryFetchBurst is the bucket size; 0 means
	// 2. Both can be changed later with SetEntryFetchRate.
	EntryFetchRate  rate.Limit
	EntryFetchBurst int

	// MaxEntries bounds the number of entries. When it is exceeded, the
	// least recently used unwatched entry among a random sample is evicted.
	// 0 means no bound.
	MaxEntries int

	// CallbackWorkers bounds the goroutines that run NotifyCallback
	// callbacks; 0 means 4.
	CallbackWorkers int
}

// Cache is a set of kinds and their entries. Create one with New; the zero
// value is not usable. Its methods are safe for concurrent use.
type Cache struct {
	opts    Options
	log     *slog.Logger
	metrics *metrics

	// base is the context every fetch runs under. It is stored, unlike a
	// caller's context, because it is the cache's own lifetime: Close
	// cancels it. done is closed by Close too, for selects.
	base   context.Context
	cancel context.CancelFunc
	done   chan struct{}

	rate  atomic.Pointer[rateSetting] // current per-entry fetch limit
	count atomic.Int64                // entries in all kinds

	// useClock counts entry creations. Hits stamp it on their entry, which
	// orders entries by last use at the resolution capacity eviction needs
	// (it runs on creations) without reading the clock.
	useClock atomic.Uint64

	exp      expiry
	deliver  deliverer
	callback workPool // NotifyCallback callbacks
	runs     workPool // async entries' runs (async.go)

	deadlines fetchDeadlines // of async fetches in flight (asyncctx.go)
	watches   ctxWatches

	// mu protects kinds, closed and noSpawn. Goroutines are started under
	// its read side (see goTracked) so that none is added to wg once Close
	// waits.
	mu      sync.RWMutex
	kinds   map[string]kindHandle
	closed  bool // Close began: no new kinds; done is closed right after
	noSpawn bool // Close waits on wg: no new goroutines

	wg sync.WaitGroup // every goroutine the cache starts
}

// New returns a Cache. It fails when the options are invalid or the
// metrics cannot be registered.
func New(opts Options) (*Cache, error) {
	switch {
	case opts.EntryFetchRate < 0:
		return nil, invalidf("negative EntryFetchRate %v", opts.EntryFetchRate)
	case opts.EntryFetchBurst < 0:
		return nil, invalidf("negative EntryFetchBurst %d", opts.EntryFetchBurst)
	case opts.MaxEntries < 0:
		return nil, invalidf("negative MaxEntries %d", opts.MaxEntries)
	case opts.CallbackWorkers < 0:
		return nil, invalidf("negative CallbackWorkers %d", opts.CallbackWorkers)
	}
	if opts.CallbackWorkers == 0 {
		opts.CallbackWorkers = 4
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	c := &Cache{
		opts:    opts,
		log:     log,
		metrics: m,
		done:    make(chan struct{}),
		kinds:   make(map[string]kindHandle),
	}
	c.base, c.cancel = context.WithCancel(context.Background())
	c.rate.Store(newRateSetting(opts.EntryFetchRate, opts.EntryFetchBurst))
	c.exp.init(c)
	c.deliver.init(c)
	c.callback.init(c, opts.CallbackWorkers, false)
	c.runs.init(c, max(2, runtime.GOMAXPROCS(0)), true)
	if !c.goTracked(c.exp.run) {
		panic("unreachable: new cache is closed")
	}
	return c, nil
}

// SetEntryFetchRate changes the per-entry fetch limit of every entry, now
// and later: limit fetches per second (0 means no limit) with bursts of
// burst (0 means 2).
func (c *Cache) SetEntryFetchRate(limit rate.Limit, burst int) error {
	if limit < 0 {
		return invalidf("negative fetch rate %v", limit)
	}
	if burst < 0 {
		return invalidf("negative fetch burst %d", burst)
	}
	r := newRateSetting(limit, burst)
	c.rate.Store(r)
	for _, k := range c.kindList() {
		k.setRate(*r)
	}
	return nil
}

// Close stops all background work and ends every watch: each channel
// watcher gets a final event whose Err is ErrClosed if its channel has
// room; callbacks are not called again. It returns once every goroutine the cache started has
// returned, which includes fetches and callbacks in progress: they must
// honour their context. Calls after Close return ErrClosed.
func (c *Cache) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return ErrClosed
	}
	c.closed = true
	c.mu.Unlock()

	// done first: a fetch that returns because of the cancel must find the
	// cache closed and discard its context.Canceled, not publish it.
	close(c.done)
	c.cancel()
	c.watches.close()
	c.deliver.stop() // queues stop sending before watchers get their final event
	for _, k := range c.kindList() {
		k.closeAll()
	}

	c.mu.Lock()
	c.noSpawn = true
	c.mu.Unlock()
	c.wg.Wait()
	return nil
}

func (c *Cache) isClosed() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

func (c *Cache) kindList() []kindHandle {
	c.mu.RLock()
	defer c.mu.RUnlock()
	ks := make([]kindHandle, 0, len(c.kinds))
	for _, k := range c.kinds {
		ks = append(ks, k)
	}
	return ks
}

// goTracked starts f in a goroutine joined to c.wg, unless Close is
// waiting for them. It reports whether it started f.
func (c *Cache) goTracked(f func()) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.noSpawn {
		return false
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		f()
	}()
	return true
}

// track adds one to c.wg for work that is not one goroutine (an async
// entry's run), unless Close is waiting. The work calls c.wg.Done when it
// ends.
func (c *Cache) track() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.noSpawn {
		return false
	}
	c.wg.Add(1)
	return true
}

// closeState closes s if it is an io.Closer, logging failures.
func (c *Cache) closeState(s any) {
	if cl, ok := s.(io.Closer); ok {
		if err := cl.Close(); err != nil {
			c.log.Warn("watchcache: closing entry state", "error", err)
		}
	}
}

// rateSetting is a per-entry fetch limit.
type rateSetting struct {
	limit rate.Limit
	burst int
}

func newRateSetting(limit rate.Limit, burst int) *rateSetting {
	if limit == 0 {
		limit = rate.Inf
	}
	if burst == 0 {
		burst = 2
	}
	return &rateSetting{limit, burst}
}

func (r rateSetting) apply(l *rate.Limiter) {
	l.SetLimit(r.limit)
	l.SetBurst(r.burst)
}
