package watchcache_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/fakeupstream"
)

// benchKind returns a kind over a fake source holding keys, all fetched.
func benchKind(b *testing.B, keys []string, opts watchcache.KindOptions) (*watchcache.Kind[string], *fakeupstream.Source) {
	b.Helper()
	src := fakeupstream.New()
	for _, k := range keys {
		src.Set(k, "value of "+k)
	}
	c := newCache(b, watchcache.Options{})
	k := register(b, c, "kv", src, opts)
	for _, key := range keys {
		get(b, k, watchcache.Request{Key: key, Partition: watchcache.Partition{Token: "bench"}})
	}
	return k, src
}

// BenchmarkGetHit is one warm key read serially: the cost of a cache hit,
// for a refresh kind (kept fresh in the background, Age 0: no clock read)
// and an on-demand kind (whose Age needs a monotonic clock read).
func BenchmarkGetHit(b *testing.B) {
	for _, kind := range []struct {
		name string
		opts watchcache.KindOptions
	}{
		{"refresh", blockingRefresh},
		{"on-demand", watchcache.KindOptions{SupportsBlocking: true}},
	} {
		b.Run(kind.name, func(b *testing.B) {
			k, _ := benchKind(b, []string{"service/web/config"}, kind.opts)
			ctx := context.Background()
			r := watchcache.Request{Key: "service/web/config", Partition: watchcache.Partition{Token: "bench"}}
			b.ReportAllocs()
			for b.Loop() {
				if _, meta, err := k.Get(ctx, r); err != nil || !meta.Hit {
					b.Fatal("not a hit")
				}
			}
		})
	}
}

// BenchmarkGetHitParallel is one warm key of a refresh kind read from
// every P at once.
func BenchmarkGetHitParallel(b *testing.B) {
	k, _ := benchKind(b, []string{"service/web/config"}, blockingRefresh)
	ctx := context.Background()
	r := watchcache.Request{Key: "service/web/config", Partition: watchcache.Partition{Token: "bench"}}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, meta, err := k.Get(ctx, r); err != nil || !meta.Hit {
				b.Error("not a hit")
				return
			}
		}
	})
}

// BenchmarkGetHitManyKeys reads 100,000 warm keys of a refresh kind at
// random: hits whose entries are not in the CPU cache.
func BenchmarkGetHitManyKeys(b *testing.B) {
	keys := make([]string, 100_000)
	for i := range keys {
		keys[i] = fmt.Sprintf("service/%06d/config", i)
	}
	k, _ := benchKind(b, keys, blockingRefresh)
	ctx := context.Background()
	reqs := make([]watchcache.Request, len(keys))
	for i, key := range keys {
		reqs[i] = watchcache.Request{Key: key, Partition: watchcache.Partition{Token: "bench"}}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	b.ReportAllocs()
	for b.Loop() {
		if _, meta, err := k.Get(ctx, reqs[rng.IntN(len(reqs))]); err != nil || !meta.Hit {
			b.Fatal("not a hit")
		}
	}
}
