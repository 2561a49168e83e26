package etcdkv

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/etcdtest"
)

// Watch creates that etcd (or a proxy in front of it) answers late or
// never: muxcreate.go.

// createdAnswers is a stream interceptor for the source's client that
// hands each watch create answer to alter, which may delay it or drop it
// (return false), as a slow or lossy proxy would.
func createdAnswers(alter func(*pb.WatchResponse) bool) grpc.DialOption {
	return spyWatchStreams(func(r *pb.WatchResponse) bool { return !r.Created || alter(r) }, nil)
}

// spyWatchStreams is a stream interceptor for the source's client: recv
// sees each watch response and may delay it or drop it (return false);
// send, if set, sees each request.
func spyWatchStreams(recv func(*pb.WatchResponse) bool, send func(*pb.WatchRequest)) grpc.DialOption {
	return grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		cs, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil || method != "/etcdserverpb.Watch/Watch" {
			return cs, err
		}
		return &spiedStream{ClientStream: cs, recv: recv, send: send}, nil
	})
}

type spiedStream struct {
	grpc.ClientStream
	recv func(*pb.WatchResponse) bool
	send func(*pb.WatchRequest)
}

func (s *spiedStream) RecvMsg(m any) error {
	for {
		if err := s.ClientStream.RecvMsg(m); err != nil {
			return err
		}
		if r, ok := m.(*pb.WatchResponse); !ok || s.recv(r) {
			return nil
		}
	}
}

func (s *spiedStream) SendMsg(m any) error {
	if r, ok := m.(*pb.WatchRequest); ok && s.send != nil {
		s.send(r)
	}
	return s.ClientStream.SendMsg(m)
}

// loseFirstCreated is a Config for tests against c whose client loses the
// answer to the first watch create (as a lossy proxy would); lost reports
// whether it did.
func loseFirstCreated(c *etcdtest.Cluster) (cfg Config, lost *atomic.Bool) {
	cfg = testConfig(c, 1)
	cfg.RequestTimeout = time.Second
	lost = new(atomic.Bool)
	cfg.ConfigureClient = func(cc *clientv3.Config) {
		fastReconnect(cc)
		cc.DialOptions = append(cc.DialOptions, createdAnswers(func(*pb.WatchResponse) bool {
			return !lost.CompareAndSwap(false, true)
		}))
	}
	return cfg, lost
}

// lossyStream starts a source whose client loses the answer to the first
// watch create (loseFirstCreated), and opens the stream of its own
// identity; queued reports whether that stream has creating creates out
// and deferred ones waiting.
func lossyStream(t *testing.T) (f *fixture, m *watchMux, lost *atomic.Bool, queued func(creating, deferred int) func() bool) {
	t.Helper()
	cfg, lost := loseFirstCreated(etcdtest.Start(t))
	f = newFixture(t, cfg, watchcache.Options{})
	m, err := f.src.muxFor(testCtx(t), f.src.own)
	if err != nil {
		t.Fatal(err)
	}
	queued = func(creating, deferred int) func() bool {
		return func() bool {
			m.mu.Lock()
			defer m.mu.Unlock()
			return len(m.creating) == creating && len(m.deferred) == deferred
		}
	}
	return f, m, lost, queued
}

// A stream whose one create out is never answered (a proxy lost the
// answer) drains when the create's timeout passes: the creates deferred
// behind it go on a new stream, and succeed. Before, they waited behind it,
// and every retry of their entries came back to the same stream.
func TestUnansweredCreateDrainsStream(t *testing.T) {
	t.Parallel()
	f, m, lost, queued := lossyStream(t)
	ctx := testCtx(t)
	errs := make([]chan error, 4)
	for i := range errs {
		errs[i] = make(chan error, 1)
		sp, _ := parseKeyKey(fmt.Sprintf("/u/%d", i))
		go func() {
			_, err := f.src.watch(ctx, f.src.own, sp, 0, nopSink{}, func(*muxWatch) {})
			errs[i] <- err
		}()
		eventually(t, fmt.Sprintf("create %d queued", i), queued(1, i)) // the first out, the others behind it
	}
	if err := <-errs[0]; !errors.Is(err, errCreateTimeout) {
		t.Errorf("the create whose answer was lost: %v, want errCreateTimeout", err)
	}
	for i := 1; i < len(errs); i++ {
		if err := <-errs[i]; err != nil {
			t.Errorf("create %d, deferred behind the lost one: %v", i, err)
		}
	}
	if !lost.Load() {
		t.Fatal("no create answer was lost")
	}
	m.mu.Lock()
	draining, closed := m.draining, m.closed
	m.mu.Unlock()
	if !draining || !closed {
		t.Errorf("the stream of the lost answer: draining %v, closed %v; want both (it has no watch left)", draining, closed)
	}
}

// The same through the cache: entries whose creates wait behind a lost
// answer start their watches and follow their keys.
func TestUnansweredCreateEntriesRecover(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t)
	cli := c.Client(t)
	put(t, cli, "/u/a", "a0")
	put(t, cli, "/u/b", "b0")
	cfg, lost := loseFirstCreated(c)
	f := newFixture(t, cfg, watchcache.Options{})
	chs := map[string]<-chan watchcache.UpdateEvent[Key]{
		"/u/a": watch(t, f.kinds.Key, KeyRequest("/u/a", self)),
		"/u/b": watch(t, f.kinds.Key, KeyRequest("/u/b", self)),
	}
	put(t, cli, "/u/a", "a1")
	put(t, cli, "/u/b", "b1")
	for key, ch := range chs {
		want := strings.TrimPrefix(key, "/u/") + "1"
		until(t, ch, key+"="+want, func(ev watchcache.UpdateEvent[Key]) bool {
			return ev.Err == nil && keyValue(ev) == want
		})
	}
	if !lost.Load() {
		t.Fatal("no create answer was lost")
	}
}

// A create that the caller gave up on before its answer (lost) came still
// drains its stream when its timeout passes: the create behind it does not
// wait for its own context to end.
func TestAbandonedCreateDrainsStream(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t)
	cfg, _ := loseFirstCreated(c)
	f := newFixture(t, cfg, watchcache.Options{})
	spA, _ := parseKeyKey("/ra")
	spB, _ := parseKeyKey("/rb")
	actx, cancel := context.WithCancel(testCtx(t))
	gaveUp := make(chan error, 1)
	go func() {
		_, err := f.src.watch(actx, f.src.own, spA, 0, nopSink{}, func(*muxWatch) { cancel() })
		gaveUp <- err
	}()
	if err := <-gaveUp; !errors.Is(err, context.Canceled) {
		t.Fatalf("create whose caller gave up: %v", err)
	}
	// Its create is out, unanswered, and the next one waits behind it.
	if _, err := f.src.watch(testCtx(t), f.src.own, spB, 0, nopSink{}, func(*muxWatch) {}); err != nil {
		t.Fatalf("create behind an abandoned one: %v", err)
	}
}

// Behind the proxy (a stream never verified), a create answered late
// drains its stream but ends none of the stream's live watches: they go on
// taking their events.
func TestSlowCreateKeepsLiveWatches(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t)
	cli := c.Client(t)
	cfg := testConfig(c, 1)
	cfg.Endpoints = []string{startGRPCProxy(t, c.Endpoint(0))}
	cfg.RequestTimeout = time.Second
	var slow atomic.Bool
	cfg.ConfigureClient = func(cc *clientv3.Config) {
		fastReconnect(cc)
		cc.DialOptions = append(cc.DialOptions, createdAnswers(func(*pb.WatchResponse) bool {
			if slow.Load() {
				time.Sleep(1500 * time.Millisecond) // an answer past the timeout: what the test is about
			}
			return true
		}))
	}
	f := newFixture(t, cfg, watchcache.Options{})
	ctx := testCtx(t)
	sinks := make([]*eventSink, 3)
	for i := range sinks {
		sinks[i] = &eventSink{ch: make(chan muxEvent, 16)}
		sp, _ := parseKeyKey(fmt.Sprintf("/live/%d", i))
		if _, err := f.src.watch(ctx, f.src.own, sp, 0, sinks[i], func(*muxWatch) {}); err != nil {
			t.Fatal(err)
		}
	}
	m := onlyStream(t, f.src)
	slow.Store(true)
	sp, _ := parseKeyKey("/slow")
	if _, err := f.src.watch(ctx, f.src.own, sp, 0, nopSink{}, func(*muxWatch) {}); !errors.Is(err, errCreateTimeout) {
		t.Fatalf("slow create: %v, want errCreateTimeout", err)
	}
	eventually(t, "the stream drains", func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.draining
	})
	reg := prometheus.NewRegistry()
	reg.MustRegister(f.src.Collector())
	got := metricValues(t, reg)
	for name, want := range map[string]float64{
		"watchcache_etcd_watch_streams":               0,
		"watchcache_etcd_watch_streams_draining":      1,
		"watchcache_etcd_watch_streams_drained_total": 1,
		"watchcache_etcd_watches":                     float64(len(sinks)),
	} {
		if got[name] != want {
			t.Errorf("%s = %v, want %v", name, got[name], want)
		}
	}
	for i, s := range sinks {
		put(t, cli, fmt.Sprintf("/live/%d", i), "v")
		select {
		case ev := <-s.ch:
			if ev.end || len(ev.events) != 1 {
				t.Fatalf("live watch %d after the stream drained: %+v", i, ev)
			}
		case <-ctx.Done():
			t.Fatalf("live watch %d took no event after the stream drained", i)
		}
	}
}

// eventSink passes a watch's responses on.
type eventSink struct{ ch chan muxEvent }

func (s *eventSink) watchEvent(_ *muxWatch, ev muxEvent) { s.ch <- ev }

// A create cancelled while it waited behind one that is never answered
// (its entry's state closed) is answered so when the stream drains: it is
// not made again on another stream for a state that is gone.
func TestCancelledDeferredCreateNotMoved(t *testing.T) {
	t.Parallel()
	f, m, _, queued := lossyStream(t)
	ctx := testCtx(t)
	spA, _ := parseKeyKey("/ca")
	headDone := make(chan error, 1)
	go func() {
		_, err := f.src.watch(ctx, f.src.own, spA, 0, nopSink{}, func(*muxWatch) {})
		headDone <- err
	}()
	eventually(t, "the head create out", queued(1, 0))
	spB, _ := parseKeyKey("/cb")
	var registered []*muxWatch // written by the watch's goroutine, read after done
	done := make(chan error, 1)
	go func() {
		_, err := f.src.watch(ctx, f.src.own, spB, 0, nopSink{}, func(w *muxWatch) { registered = append(registered, w) })
		done <- err
	}()
	eventually(t, "the second create deferred", queued(1, 1))
	m.mu.Lock()
	w := m.deferred[0].w
	m.mu.Unlock()
	w.cancelWatch() // as its state's Close
	if err := <-done; !errors.Is(err, errWatchCancelled) {
		t.Errorf("the cancelled create: %v, want errWatchCancelled", err)
	}
	if len(registered) != 1 {
		t.Errorf("the cancelled create was registered %d times, want once", len(registered))
	}
	if err := <-headDone; !errors.Is(err, errCreateTimeout) {
		t.Errorf("the unanswered create: %v, want errCreateTimeout", err)
	}
}

// Behind the proxy, a create answered after its stream drained (its
// timeout passed) makes a watch nobody takes: the source cancels it when
// the answer comes, rather than leave its events coming for as long as
// the stream's live watches keep it open.
func TestLateCreatedWatchCancelled(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t)
	cfg := testConfig(c, 1)
	cfg.Endpoints = []string{startGRPCProxy(t, c.Endpoint(0))}
	cfg.RequestTimeout = time.Second
	var slow atomic.Bool
	late := make(chan int64, 1)
	cancelled := make(chan int64, 16)
	cfg.ConfigureClient = func(cc *clientv3.Config) {
		fastReconnect(cc)
		cc.DialOptions = append(cc.DialOptions, spyWatchStreams(func(r *pb.WatchResponse) bool {
			if r.Created && slow.CompareAndSwap(true, false) {
				time.Sleep(1500 * time.Millisecond) // an answer past the timeout: what the test is about
				late <- r.WatchId
			}
			return true
		}, func(r *pb.WatchRequest) {
			if cr := r.GetCancelRequest(); cr != nil {
				select {
				case cancelled <- cr.WatchId:
				default: // not the one the test waits for: it comes first
				}
			}
		}))
	}
	f := newFixture(t, cfg, watchcache.Options{})
	ctx := testCtx(t)
	sp0, _ := parseKeyKey("/live/0")
	live, err := f.src.watch(ctx, f.src.own, sp0, 0, nopSink{}, func(*muxWatch) {})
	if err != nil {
		t.Fatal(err)
	}
	defer live.cancelWatch()
	slow.Store(true)
	sp, _ := parseKeyKey("/slow")
	if _, err := f.src.watch(ctx, f.src.own, sp, 0, nopSink{}, func(*muxWatch) {}); !errors.Is(err, errCreateTimeout) {
		t.Fatalf("slow create: %v, want errCreateTimeout", err)
	}
	id := <-late
	for {
		select {
		case got := <-cancelled:
			if got == id {
				return
			}
		case <-ctx.Done():
			t.Fatalf("the late-created watch %d was never cancelled", id)
		}
	}
}

// Behind the proxy a stream has one create out at a time; a create's
// timeout starts when it is sent, not while it waits its turn. Here each
// answer takes 150 ms and 12 watches are made at once: the last is sent
// 1.65 s after the first, past the 1 s timeout, and still none fails.
func TestDeferredCreatesTimeOutFromTheirSend(t *testing.T) {
	t.Parallel()
	followKeysBehindProxy(t, 12, func(cfg *Config) {
		cfg.RequestTimeout = time.Second
		cfg.ConfigureClient = func(cc *clientv3.Config) {
			fastReconnect(cc)
			cc.DialOptions = append(cc.DialOptions, createdAnswers(func(*pb.WatchResponse) bool {
				time.Sleep(150 * time.Millisecond) // a slow proxy: what the test is about
				return true
			}))
		}
	})
}
