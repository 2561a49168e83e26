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

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/watchcache/watchcache/internal/etcdtest"
)

// BenchmarkAgentRead measures reads through an agent on real embedded etcd,
// over HTTP on loopback, from 50 keep-alive clients (b.RunParallel):
//
//   - key: GET of one key; prefix100: GET ?recurse of a prefix of 100 keys;
//   - cached: a plain GET; consistent: GET ?consistent; etcd: the same read
//     made to etcd directly, linearizable, by 50 goroutines on one client,
//     for comparison in the same run;
//   - after-writes=65536: the same reads after 65,536 writes through the
//     agent to other keys (which the read-your-writes log remembers).
//
// req/s is reads per second; etcd-reqs/read is the ranges etcd served per
// read (its own counter etcd_mvcc_range_total).
func BenchmarkAgentRead(b *testing.B) {
	c := etcdtest.Start(b)
	cli := c.Client(b)
	ctx := context.Background()
	if _, err := cli.Put(ctx, "k", "value of k"); err != nil {
		b.Fatal(err)
	}
	for i := range 100 {
		if _, err := cli.Put(ctx, fmt.Sprintf("p/%03d", i), strings.Repeat("v", 64)); err != nil {
			b.Fatal(err)
		}
	}
	n := etcdNode(b, c)
	tr := &http.Transport{MaxIdleConnsPerHost: 100}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}

	reads := []struct{ name, path, etcdKey string }{
		{"key", "/v1/kv/k", "k"},
		{"prefix100", "/v1/kv/p/?recurse", "p/"},
	}
	run := func(b *testing.B, path string) {
		get(b, hc, n.url+path) // warm: the entry exists
		ranges := etcdRanges(b)
		b.SetParallelism(25) // 50 clients on 2 Ps
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				get(b, hc, n.url+path)
			}
		})
		b.StopTimer()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
		b.ReportMetric(float64(etcdRanges(b)-ranges)/float64(b.N), "etcd-reqs/read")
	}
	direct := func(b *testing.B, key string) {
		var opts []clientv3.OpOption
		if strings.HasSuffix(key, "/") {
			opts = append(opts, clientv3.WithPrefix())
		}
		ranges := etcdRanges(b)
		b.SetParallelism(25)
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := cli.Get(ctx, key, opts...); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.StopTimer()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
		b.ReportMetric(float64(etcdRanges(b)-ranges)/float64(b.N), "etcd-reqs/read")
	}
	suite := func(b *testing.B) {
		for _, r := range reads {
			b.Run(r.name+"/cached", func(b *testing.B) { run(b, r.path) })
			b.Run(r.name+"/consistent", func(b *testing.B) { run(b, r.path+sep(r.path)+"consistent") })
			b.Run(r.name+"/etcd", func(b *testing.B) { direct(b, r.etcdKey) })
		}
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

// etcdRanges reads the embedded etcd's counter of the ranges it served.
func etcdRanges(b *testing.B) int64 {
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "etcd_mvcc_range_total" {
			return int64(mf.GetMetric()[0].GetCounter().GetValue())
		}
	}
	b.Fatal("etcd_mvcc_range_total not found")
	return 0
}
