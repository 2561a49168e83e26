package etcdkv

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/etcdtest"
)

// BenchmarkEtcdAccessCheck measures what confirming access costs per
// change (access.go): a user watches N keys (N entries), and each
// iteration changes all N in one transaction and waits until every watcher
// has the new value. strict confirms each change, bounded only after auth
// changes, and no-auth is etcd without authentication, where nothing is
// confirmed. checks/change is the check requests sent to etcd per
// iteration: strict batches the N entries of one identity that changed
// together.
func BenchmarkEtcdAccessCheck(b *testing.B) {
	for _, n := range []int{1, 100} {
		for _, mode := range []string{"no-auth", "bounded", "strict"} {
			b.Run(fmt.Sprintf("keys=%d/%s", n, mode), func(b *testing.B) { benchAccessCheck(b, n, mode) })
		}
	}
}

func benchAccessCheck(b *testing.B, n int, mode string) {
	c := etcdtest.Start(b)
	writer := c.Client(b)
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("/p/%03d", i)
		put(b, writer, keys[i], "0")
	}
	cfg := testConfig(c, 1)
	p := self
	if mode != "no-auth" {
		c.EnableAuth(b, []etcdtest.User{{Name: "u", Password: "u-pw", Roles: []etcdtest.Role{{Name: "r", Prefix: "/p/", Perm: etcdtest.PermRead}}}})
		writer = c.Client(b, etcdtest.WithCredentials(etcdtest.RootUser, etcdtest.RootPassword))
		if mode == "bounded" {
			cfg.AccessCheck = AccessCheckBounded
		}
	}
	f := newFixture(b, cfg, watchcache.Options{})
	if mode != "no-auth" {
		var err error
		if p, err = f.src.Login(context.Background(), "u", "u-pw"); err != nil {
			b.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var target atomic.Int64
	arrived := make(chan struct{}, n)
	for _, key := range keys {
		reported := int64(-1)
		err := f.kinds.Key.NotifyCallback(ctx, KeyRequest(key, p), key, func(ev watchcache.UpdateEvent[Key]) {
			v, err := strconv.ParseInt(string(ev.Result.Entry.Value), 10, 64)
			if err != nil {
				return
			}
			if t := target.Load(); v >= t && reported < t {
				reported = t
				arrived <- struct{}{}
			}
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	for range n {
		<-arrived // initial values
	}
	ops := make([]clientv3.Op, n)
	checks := f.src.auth.checks.Load()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 1; i <= b.N; i++ {
		target.Store(int64(i))
		for j, key := range keys {
			ops[j] = clientv3.OpPut(key, strconv.Itoa(i))
		}
		if _, err := writer.Txn(ctx).Then(ops...).Commit(); err != nil {
			b.Fatal(err)
		}
		for range n {
			<-arrived
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/change")
	b.ReportMetric(float64(f.src.auth.checks.Load()-checks)/float64(b.N), "checks/change")
}
