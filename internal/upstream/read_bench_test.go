package upstream

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/watchcache/watchcache/internal/etcdtest"
)

// BenchmarkAgentRead measures reads through an agent on real etcd, over
// HTTP on loopback, from 50 keep-alive clients (b.RunParallel):
//
//   - etcd=in-process: etcd runs in the benchmark's process, as in the
//     agent's -dev mode; etcd=child: in a process of its own, as deployed
//     (its goroutines do not queue behind the agent's on the Go
//     scheduler, and the OS shares the two cores between the processes);
//   - key: GET of one key; prefix100: GET ?recurse of a prefix of 100 keys;
//   - cached: a plain GET; consistent: GET ?consistent; etcd: the same read
//     made to etcd directly, linearizable, by 50 goroutines sharing one
//     client (one connection, whose HTTP/2 frames carry many reads per
//     system call); etcd-own-clients: by 50 clients with a connection
//     each, as the agent's clients have;
//   - the agent's clients are loadClients (loadclient_test.go), which take
//     as little of the shared CPU as a client can; key/cached-net-http is
//     the cached read with net/http's client instead, for comparison;
//   - after-writes=65536: the same reads after 65,536 writes through the
//     agent to other keys (which the read-your-writes log remembers).
//
// req/s is reads per second; etcd-reqs/read is the ranges etcd served per
// read (its own counter etcd_mvcc_range_total).
//
//	go test -run '^$' -bench AgentRead -benchtime 3s ./internal/upstream/
func BenchmarkAgentRead(b *testing.B) {
	b.Run("etcd=in-process", func(b *testing.B) {
		benchAgentRead(b, etcdtest.Start(b).Endpoints()[0])
	})
	b.Run("etcd=child", func(b *testing.B) {
		benchAgentRead(b, etcdtest.StartChild(b))
	})
}

func benchAgentRead(b *testing.B, endpoint string) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	defer cli.Close()
	ctx := context.Background()
	if _, err := cli.Put(ctx, "k", "value of k"); err != nil {
		b.Fatal(err)
	}
	for i := range 100 {
		if _, err := cli.Put(ctx, fmt.Sprintf("p/%03d", i), strings.Repeat("v", 64)); err != nil {
			b.Fatal(err)
		}
	}
	n := etcdNodeAt(b, []string{endpoint})
	tr := &http.Transport{MaxIdleConnsPerHost: 100}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	ranges := func() float64 { return etcdtest.Metric(b, endpoint, "etcd_mvcc_range_total") }

	reads := []struct{ name, path, etcdKey string }{
		{"key", "/v1/kv/k", "k"},
		{"prefix100", "/v1/kv/p/?recurse", "p/"},
	}
	viaNetHTTP := func(b *testing.B, path string) {
		get(b, hc, n.url+path)
		b.SetParallelism(25)
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				get(b, hc, n.url+path)
			}
		})
		b.StopTimer()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
	}
	run := func(b *testing.B, path string) {
		get(b, hc, n.url+path) // warm: the entry exists
		before := ranges()
		b.SetParallelism(25) // 50 clients on 2 Ps
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			lc, err := dialLoad(n.url + path)
			if err != nil {
				b.Error(err)
				return
			}
			defer lc.Close()
			for pb.Next() {
				if code, err := lc.get(); err != nil || code != http.StatusOK {
					b.Errorf("GET %s: %d %v", path, code, err)
					return
				}
			}
		})
		b.StopTimer()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
		b.ReportMetric(float64(ranges()-before)/float64(b.N), "etcd-reqs/read")
	}
	direct := func(b *testing.B, key string, own bool) {
		var opts []clientv3.OpOption
		if strings.HasSuffix(key, "/") {
			opts = append(opts, clientv3.WithPrefix())
		}
		before := ranges()
		b.SetParallelism(25)
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			cli := cli
			if own {
				c, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second})
				if err != nil {
					b.Error(err)
					return
				}
				defer c.Close()
				cli = c
			}
			for pb.Next() {
				if _, err := cli.Get(ctx, key, opts...); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.StopTimer()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
		b.ReportMetric(float64(ranges()-before)/float64(b.N), "etcd-reqs/read")
	}
	suite := func(b *testing.B) {
		for _, r := range reads {
			b.Run(r.name+"/cached", func(b *testing.B) { run(b, r.path) })
			b.Run(r.name+"/consistent", func(b *testing.B) { run(b, r.path+sep(r.path)+"consistent") })
			b.Run(r.name+"/etcd", func(b *testing.B) { direct(b, r.etcdKey, false) })
			b.Run(r.name+"/etcd-own-clients", func(b *testing.B) { direct(b, r.etcdKey, true) })
		}
		b.Run("key/cached-net-http", func(b *testing.B) { viaNetHTTP(b, reads[0].path) })
	}
	suite(b)
	b.Run("after-writes=65536", func(b *testing.B) {
		writeMany(b, hc, n.url, 65536)
		suite(b)
	})
}

// sep is what appends a parameter to path.
func sep(path string) string {
	if strings.Contains(path, "?") {
		return "&"
	}
	return "?"
}

func get(b *testing.B, hc *http.Client, url string) {
	resp, err := hc.Get(url)
	if err != nil {
		b.Error(err)
		return
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b.Errorf("GET %s: %d", url, resp.StatusCode)
	}
}

// writeMany writes n distinct keys through the agent, 50 at a time.
func writeMany(b *testing.B, hc *http.Client, url string, n int) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			for i := next.Add(1); i <= int64(n); i = next.Add(1) {
				req, _ := http.NewRequest(http.MethodPut, fmt.Sprintf("%s/v1/kv/w/%06d", url, i), strings.NewReader("x"))
				resp, err := hc.Do(req)
				if err != nil {
					b.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
}
