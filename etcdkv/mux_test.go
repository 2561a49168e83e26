package etcdkv

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/etcdtest"
)

// streamCounts returns the source's open watch streams and how many of
// them have no watch.
func streamCounts(s *Source) (streams, empty int) {
	s.muxMu.Lock()
	defer s.muxMu.Unlock()
	for _, m := range s.muxes {
		streams++
		m.mu.Lock()
		if len(m.watches) == 0 {
			empty++
		}
		m.mu.Unlock()
	}
	return streams, empty
}

// onlyStream returns the source's one watch stream.
func onlyStream(t *testing.T, s *Source) *watchMux {
	t.Helper()
	s.muxMu.Lock()
	defer s.muxMu.Unlock()
	if len(s.muxes) != 1 {
		t.Fatalf("%d watch streams, want 1", len(s.muxes))
	}
	for _, m := range s.muxes {
		return m
	}
	return nil
}

// A watch etcd refuses at its create (the user lost access between the
// entry's read and its watch) is a denial, fatal for the entry, and the
// stream it was the only watch of is closed rather than kept open forever.
func TestRefusedWatchCreate(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t)
	cli := c.Client(t)
	put(t, cli, "/a/x", "v1")
	c.EnableAuth(t, []etcdtest.User{{Name: "u", Password: "u-pw", Roles: []etcdtest.Role{{Name: "ra", Prefix: "/a/", Perm: etcdtest.PermRead}}}})
	root := c.Client(t, etcdtest.WithCredentials(etcdtest.RootUser, etcdtest.RootPassword))
	src, err := New(testConfig(c, 1))
	if err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	src.testHookBeforeWatch = func(sp spec, from int64) {
		if calls.Add(1) != 1 {
			return
		}
		// On a work goroutine of the source: errors are reported, not fatal.
		if _, err := root.RoleRevokePermission(testCtx(t), "ra", "/a/", clientv3.GetPrefixRangeEnd("/a/")); err != nil {
			t.Errorf("hook: %v", err)
		}
	}
	f := fixtureFor(t, src)
	p := login(t, src, "u", "u-pw")
	_, _, err = f.kinds.GetKey(testCtx(t), KeyRequest("/a/x", p))
	if !errors.Is(err, ErrPermissionDenied) || !errors.Is(err, watchcache.ErrFatal) {
		t.Fatalf("GetKey after the watch was refused: %v, want a fatal ErrPermissionDenied", err)
	}
	// The stream's reader closes it once it handed the refusal over, which
	// may be after the Get returned.
	eventually(t, "the stream of the refused watch is closed", func() bool {
		streams, _ := streamCounts(src)
		return streams == 0
	})
}

// A progress report answers the progress requests etcd took before it; a
// watch created later on the same stream must not take its revision (its
// events up to there may still be on their way), or a consistent read of
// its entry would return a value older than a write acknowledged before
// the read began. Here another entry's consistent read asks for progress
// right after each new entry read its key and before its watch exists,
// and a write lands in between.
func TestProgressReportsOnlyCoverOlderWatches(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t)
	cli := c.Client(t)
	src, err := New(testConfig(c, 1))
	if err != nil {
		t.Fatal(err)
	}
	src.testHookBeforeWatch = func(sp spec, from int64) {
		if !strings.HasPrefix(sp.requestKey(), "/b/") {
			return
		}
		if _, err := cli.Put(testCtx(t), sp.requestKey(), "v2"); err != nil {
			t.Errorf("hook: %v", err)
		}
		src.muxMu.Lock()
		var m *watchMux
		for _, x := range src.muxes {
			m = x
		}
		src.muxMu.Unlock()
		if m != nil {
			m.requestProgress()
		}
	}
	f := fixtureFor(t, src)
	put(t, cli, "/a", "x")
	watch(t, f.kinds.Key, KeyRequest("/a", self)) // keeps the stream open
	getKey(t, f, KeyRequest("/a", self))
	const n = 20
	for i := range n {
		key := "/b/" + strconv.Itoa(i)
		put(t, cli, key, "v1")
		getKey(t, f, KeyRequest(key, self)) // reads v1; the hook writes v2
		v, _, err := f.kinds.ReadKey(testCtx(t), KeyRequest(key, self))
		if err != nil {
			t.Fatal(err)
		}
		if keyOf(v) != "v2" {
			t.Fatalf("consistent read of %s = %q, want v2, written before the read began", key, keyOf(v))
		}
	}
}

type nopSink struct{}

func (nopSink) watchEvent(*muxWatch, muxEvent) {}

// A watch cancelled before its create was queued (its entry's state
// closed while the watch was being made) is never created: a cancel sent
// ahead of its create would leave etcd's watch running, and the stream
// with it. The stream goes on matching creates to answers in order.
func TestWatchCancelledWhileCreated(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t)
	put(t, c.Client(t), "/cw/a", "1")
	f := newFixture(t, testConfig(c, 1), watchcache.Options{})
	ctx := testCtx(t)
	if _, _, err := f.kinds.Key.Get(ctx, KeyRequest("/cw/a", self)); err != nil {
		t.Fatal(err)
	}
	m := onlyStream(t, f.src)
	sp, _ := parseKeyKey("/cw/b")
	var cancelled *muxWatch
	_, _, err := m.create(sp, 0, nopSink{}, func(w *muxWatch) {
		cancelled = w
		w.cancelWatch() // as the state's Close, between registering and queueing
	})
	if !errors.Is(err, errWatchCancelled) {
		t.Fatalf("create of a watch cancelled meanwhile = %v, want errWatchCancelled", err)
	}
	m.mu.Lock()
	kept := false
	for _, w := range m.watches {
		kept = kept || w == cancelled
	}
	creating, queued, closed := len(m.creating), cancelled.queued, m.closed
	m.mu.Unlock()
	if kept || creating != 0 || queued || closed {
		t.Fatalf("after the cancelled create: kept %v, %d creates waiting, queued %v, stream closed %v; want none of it", kept, creating, queued, closed)
	}
	// The next create on the stream is answered as its own.
	w, err := f.src.watch(ctx, m.key.id, sp, 0, nopSink{}, func(*muxWatch) {})
	if err != nil {
		t.Fatalf("a watch after the cancelled one: %v", err)
	}
	if w.m != m {
		t.Fatalf("the next watch went to another stream")
	}
	w.cancelWatch()
}

// A new stream whose only watch is cancelled while it is being created is
// closed, not kept with no watch.
func TestOnlyWatchCancelledWhileCreatedClosesStream(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t)
	f := newFixture(t, testConfig(c, 1), watchcache.Options{})
	ctx := testCtx(t)
	m, err := f.src.muxFor(ctx, f.src.own)
	if err != nil {
		t.Fatal(err)
	}
	sp, _ := parseKeyKey("/only")
	if _, _, err := m.create(sp, 0, nopSink{}, func(w *muxWatch) { w.cancelWatch() }); !errors.Is(err, errWatchCancelled) {
		t.Fatalf("create = %v, want errWatchCancelled", err)
	}
	if streams, _ := streamCounts(f.src); streams != 0 {
		t.Fatalf("%d streams open after the only watch was cancelled while it was created", streams)
	}
}

// An answer to a create that the stream cannot match (an ID of the
// server's own while several creates are out) ends the stream, and every
// create waiting on it hears why, the one answered too.
func TestUnmatchedCreateAnswerFailsEveryCreate(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t)
	f := newFixture(t, testConfig(c, 1), watchcache.Options{})
	m := &watchMux{s: f.src, cancel: func() {}, watches: map[int64]*muxWatch{}, verified: true}
	ws := []*muxWatch{
		{m: m, id: watchIDBase, queued: true, sink: nopSink{}, created: make(chan error, 1)},
		{m: m, id: watchIDBase + 1, queued: true, sink: nopSink{}, created: make(chan error, 1)},
	}
	m.creating = append(m.creating, ws...)
	m.dispatch(&pb.WatchResponse{Header: &pb.ResponseHeader{}, Created: true, WatchId: 7})
	for i, w := range ws {
		select {
		case err := <-w.created:
			if err == nil || !strings.Contains(err.Error(), "with ID 7") {
				t.Errorf("create %d: %v, want the stream's error", i, err)
			}
		default:
			t.Errorf("create %d got no answer", i)
		}
	}
	if !m.closed {
		t.Error("the stream is still open")
	}
}

// Entries of one identity that start together (at startup, after a
// stream drained) share the one stream the first of them opens: the
// others wait for it rather than open streams closed at once.
func TestConcurrentWatchesOpenOneStream(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t)
	cfg := testConfig(c, 1)
	var opened atomic.Int32
	cfg.ConfigureClient = func(cc *clientv3.Config) {
		fastReconnect(cc)
		cc.DialOptions = append(cc.DialOptions, grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, conn *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			if method == "/etcdserverpb.Watch/Watch" {
				opened.Add(1)
			}
			return streamer(ctx, desc, conn, method, opts...)
		}))
	}
	f := newFixture(t, cfg, watchcache.Options{})
	ctx := testCtx(t)
	const n = 32
	start := make(chan struct{})
	got := make(chan *watchMux, n)
	for range n {
		go func() {
			<-start
			m, err := f.src.muxFor(ctx, f.src.own)
			if err != nil {
				t.Error(err)
			}
			got <- m
		}()
	}
	close(start)
	first := <-got
	for range n - 1 {
		if m := <-got; m != first {
			t.Fatalf("concurrent callers got different streams")
		}
	}
	if n := opened.Load(); n != 1 {
		t.Fatalf("%d watch streams opened for one identity, want 1", n)
	}
}
