package etcdkv

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/proxy/grpcproxy"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/etcdtest"
)

// startGRPCProxy serves etcd's gRPC proxy (as `etcd grpc-proxy` runs it)
// in front of the etcd at endpoint, until the test ends, and returns its
// client URL.
func startGRPCProxy(t *testing.T, endpoint string) string {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: []string{endpoint},
		Logger:    zap.NewNop(),
		DialOptions: []grpc.DialOption{
			grpc.WithUnaryInterceptor(grpcproxy.AuthUnaryClientInterceptor),
			grpc.WithStreamInterceptor(grpcproxy.AuthStreamClientInterceptor),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	kvp, _ := grpcproxy.NewKvProxy(cli)
	watchp, _ := grpcproxy.NewWatchProxy(cli.Ctx(), zap.NewNop(), cli)
	clusterp, _ := grpcproxy.NewClusterProxy(zap.NewNop(), cli, "", "")
	srv := grpc.NewServer()
	pb.RegisterKVServer(srv, kvp)
	pb.RegisterWatchServer(srv, watchp)
	pb.RegisterClusterServer(srv, clusterp)
	pb.RegisterMaintenanceServer(srv, grpcproxy.NewMaintenanceProxy(cli))
	pb.RegisterAuthServer(srv, grpcproxy.NewAuthProxy(cli))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-served
		cli.Close()
	})
	return "http://" + ln.Addr().String()
}

// Behind etcd's gRPC proxy, which numbers the watches of a stream itself
// whatever IDs the client asks for, each entry gets its own range's
// events, also when the proxy answers their creates out of order: a stream
// has one create out at a time until the server shows it uses the
// source's IDs, which the proxy never does. Before, the proxy's IDs were
// one below the source's, and /b/'s events reached the entry of /a/,
// unchecked for its identity.
func TestWatchesThroughGRPCProxy(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t)
	cli := c.Client(t)
	put(t, cli, "/a/k", "a0")
	put(t, cli, "/b/k", "b0")
	cfg := testConfig(c, 1)
	cfg.Endpoints = []string{startGRPCProxy(t, c.Endpoint(0))}
	f := newFixture(t, cfg, watchcache.Options{})
	values := func(ev watchcache.UpdateEvent[Prefix]) string {
		var kv []string
		for _, e := range ev.Result.Entries {
			kv = append(kv, e.Key+"="+string(e.Value))
		}
		return strings.Join(kv, ",")
	}
	// Both at once: the proxy answers the creates of concurrent watches
	// in the order its own upstream watches start (see mux.go's notes).
	chA := watch(t, f.kinds.Prefix, PrefixRequest("/a/", self))
	chB := watch(t, f.kinds.Prefix, PrefixRequest("/b/", self))
	for _, w := range []struct {
		ch   <-chan watchcache.UpdateEvent[Prefix]
		want string
	}{{chA, "/a/k=a0"}, {chB, "/b/k=b0"}} {
		if ev := next(t, w.ch); ev.Err != nil || values(ev) != w.want {
			t.Fatalf("first event %q, %v; want %q", values(ev), ev.Err, w.want)
		}
	}
	for i, step := range []struct{ key, value, wantA, wantB string }{
		{"/b/k", "b1", "", "/b/k=b1"},
		{"/a/k", "a1", "/a/k=a1", ""},
		{"/b/k", "b2", "", "/b/k=b2"},
	} {
		put(t, cli, step.key, step.value)
		for _, w := range []struct {
			name string
			ch   <-chan watchcache.UpdateEvent[Prefix]
			want string
		}{{"/a/", chA, step.wantA}, {"/b/", chB, step.wantB}} {
			if w.want == "" {
				continue
			}
			until(t, w.ch, w.want, func(ev watchcache.UpdateEvent[Prefix]) bool {
				if strings.Contains(values(ev), otherPrefix(w.name)) {
					t.Fatalf("step %d: the entry of %s got %q", i, w.name, values(ev))
				}
				return ev.Err == nil && values(ev) == w.want
			})
		}
	}
	// The entry of /a/ never saw a /b/ key, nor /b/ an /a/ key, in what is
	// left on their channels either.
	for name, ch := range map[string]<-chan watchcache.UpdateEvent[Prefix]{"/a/": chA, "/b/": chB} {
		for len(ch) > 0 {
			ev := <-ch
			if strings.Contains(values(ev), otherPrefix(name)) {
				t.Fatalf("the entry of %s got %q", name, values(ev))
			}
		}
	}
}

func otherPrefix(p string) string {
	if p == "/a/" {
		return "/b/"
	}
	return "/a/"
}

// An event for a key outside an entry's range never reaches the entry's
// value: the state drops its watch and reads the range again.
func TestEventOutsideRangeIsRefused(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t)
	cli := c.Client(t)
	put(t, cli, "/a/k", "a0")
	f := newFixture(t, testConfig(c, 1), watchcache.Options{})
	ch := watch(t, f.kinds.Prefix, PrefixRequest("/a/", self))
	next(t, ch)
	sp, _ := parsePrefixKey("/a/*")
	v, ok := f.src.views.Load(viewKey{self, sp})
	if !ok {
		t.Fatal("no entry for /a/")
	}
	sv := v.(*stateView)
	sv.mu.Lock()
	st := sv.owner.(*watchState[Prefix])
	sv.mu.Unlock()
	st.mu.Lock()
	w, rev := st.w, st.rev
	st.mu.Unlock()
	st.watchEvent(w, muxEvent{rev: rev + 1, events: []*mvccpb.Event{{Type: mvccpb.PUT, Kv: &mvccpb.KeyValue{Key: []byte("/b/secret"), Value: []byte("x"), ModRevision: rev + 1}}}})
	st.mu.Lock()
	dropped, kvs := st.w != w, st.kvs
	st.mu.Unlock()
	if !dropped {
		t.Error("the state kept the watch that delivered a key outside its range")
	}
	for _, e := range kvs {
		if e.Key == "/b/secret" {
			t.Fatalf("the state of /a/ took /b/secret")
		}
	}
	put(t, cli, "/a/k", "a1")
	until(t, ch, "a1 from the new watch", func(ev watchcache.UpdateEvent[Prefix]) bool {
		for _, e := range ev.Result.Entries {
			if e.Key == "/b/secret" {
				t.Fatalf("the entry of /a/ delivered /b/secret")
			}
		}
		return len(ev.Result.Entries) == 1 && string(ev.Result.Entries[0].Value) == "a1"
	})
}

// Many watches made at once through the proxy each follow their own key.
func TestManyWatchesThroughGRPCProxy(t *testing.T) {
	t.Parallel()
	followKeysBehindProxy(t, 16, nil)
}

// followKeysBehindProxy makes n watches at once, each of its own key,
// through etcd's gRPC proxy (with the source's Config adjusted by
// configure, if set), and checks that each entry delivers its key's value,
// and then its change, with no error and no other key's event.
func followKeysBehindProxy(t *testing.T, n int, configure func(*Config)) {
	t.Helper()
	c := etcdtest.Start(t)
	cli := c.Client(t)
	key := func(i int) string { return fmt.Sprintf("/m%02d/k", i) }
	for i := range n {
		put(t, cli, key(i), "v0")
	}
	cfg := testConfig(c, 1)
	cfg.Endpoints = []string{startGRPCProxy(t, c.Endpoint(0))}
	if configure != nil {
		configure(&cfg)
	}
	f := newFixture(t, cfg, watchcache.Options{})
	chs := make([]<-chan watchcache.UpdateEvent[Key], n)
	for i := range n {
		chs[i] = watch(t, f.kinds.Key, KeyRequest(key(i), self))
	}
	for i, ch := range chs {
		if ev := next(t, ch); ev.Err != nil || ev.Result.Entry.Key != key(i) || string(ev.Result.Entry.Value) != "v0" {
			t.Fatalf("first event of %s: %+v, %v", key(i), ev.Result.Entry, ev.Err)
		}
	}
	for i := range n {
		put(t, cli, key(i), "v1")
	}
	for i, ch := range chs {
		until(t, ch, key(i)+"=v1", func(ev watchcache.UpdateEvent[Key]) bool {
			switch {
			case ev.Err != nil:
				t.Fatalf("the entry of %s failed: %v", key(i), ev.Err)
			case ev.Result.Entry.Key != key(i):
				t.Fatalf("the entry of %s got %s", key(i), ev.Result.Entry.Key)
			}
			return string(ev.Result.Entry.Value) == "v1"
		})
	}
}

// etcd's gRPC proxy drops progress requests, so an idle entry behind it
// never learns that the store moved on: a consistent read of it reads
// etcd at once rather than waiting ConsistentWait for a report that never
// comes.
func TestConsistentReadThroughGRPCProxy(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t)
	cli := c.Client(t)
	put(t, cli, "/p/k", "v1")
	cfg := testConfig(c, 1)
	cfg.Endpoints = []string{startGRPCProxy(t, c.Endpoint(0))}
	cfg.ConsistentWait = time.Minute
	f := newFixture(t, cfg, watchcache.Options{})
	if k, _ := getKey(t, f, KeyRequest("/p/k", self)); keyOf(k) != "v1" {
		t.Fatalf("GetKey = %q", keyOf(k))
	}
	put(t, cli, "/p/other", "x") // the store moves on; the entry's range does not
	ctx, cancel := context.WithTimeout(testCtx(t), 10*time.Second)
	defer cancel()
	k, _, err := f.kinds.ReadKey(ctx, KeyRequest("/p/k", self))
	if err != nil || keyOf(k) != "v1" {
		t.Fatalf("consistent read behind the proxy = %q, %v", keyOf(k), err)
	}
	if f.src.consistentDirect.Load() != 1 {
		t.Fatalf("consistent reads from etcd = %d, want 1", f.src.consistentDirect.Load())
	}
}
