package upstream

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/watchcache/watchcache/internal/etcdtest"
	"github.com/watchcache/watchcache/internal/pipetest"
)

// BenchmarkChainFanout has 10,000 long-poll clients on an edge agent that
// fronts a regional agent that fronts an agent on etcd. Each iteration is
// one change written to etcd, until every client has it; p50 and p99 are
// the times from the write to a client's answer. upstream-queries is the
// blocking queries the regional agent holds, etcd-watches the watchers
// etcd holds, both while the clients wait. The clients reach the edge over
// in-memory connections (10,000 sockets on each side would pass the
// machine's file limit); the agents talk HTTP over loopback.
func BenchmarkChainFanout(b *testing.B) {
	for _, n := range []int{10_000} {
		b.Run("clients="+strconv.Itoa(n), func(b *testing.B) { benchChain(b, n) })
	}
}

func benchChain(b *testing.B, clients int) {
	c := etcdtest.Start(b)
	cli := c.Client(b)
	ctx := context.Background()
	if _, err := cli.Put(ctx, "cfg", "0"); err != nil {
		b.Fatal(err)
	}
	bottom := etcdNode(b, c)
	regional := consulNode(b, bottom.url, listen(b, "127.0.0.1:0"))
	ln := pipetest.NewListener()
	edge := consulNode(b, regional.url, ln)

	tr := ln.Transport()
	tr.MaxIdleConnsPerHost = clients
	defer tr.CloseIdleConnections()
	cfg := api.DefaultConfig()
	cfg.Address, cfg.Transport = "edge.test:8500", tr
	edgeClient, err := api.NewClient(cfg)
	if err != nil {
		b.Fatal(err)
	}
	kv := edgeClient.KV()
	_, meta, err := kv.Get("cfg", nil)
	if err != nil {
		b.Fatal(err)
	}
	index := meta.LastIndex

	type answer struct {
		at    time.Time
		value string
		index uint64
	}
	var latencies []time.Duration
	var queries, watches int
	b.ReportAllocs()
	b.ResetTimer()
	for i := 1; i <= b.N; i++ {
		b.StopTimer()
		answers := make(chan answer, clients)
		for range clients {
			go func() {
				p, m, err := kv.Get("cfg", &api.QueryOptions{WaitIndex: index, WaitTime: time.Minute})
				if err != nil || p == nil {
					answers <- answer{value: fmt.Sprint(err)}
					return
				}
				answers <- answer{at: time.Now(), value: string(p.Value), index: m.LastIndex}
			}()
		}
		eventually(b, "clients blocked at the edge", func() bool {
			return blockingQueriesVia(b, &http.Client{Transport: tr}, edge.url) == int64(clients)
		})
		queries, watches = int(blockingQueries(b, regional.url)), etcdWatches(b)
		want := strconv.Itoa(i)
		b.StartTimer()
		start := time.Now()
		if _, err := cli.Put(ctx, "cfg", want); err != nil {
			b.Fatal(err)
		}
		for range clients {
			a := <-answers
			if a.value != want {
				b.Fatalf("a client got %q, want %q", a.value, want)
			}
			latencies = append(latencies, a.at.Sub(start))
			index = a.index
		}
	}
	b.StopTimer()
	slices.Sort(latencies)
	pct := func(p float64) float64 {
		return float64(latencies[int(p*float64(len(latencies)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(queries), "upstream-queries")
	b.ReportMetric(float64(watches), "etcd-watches")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/change")
}
