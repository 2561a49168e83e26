package watchcache_test

import (
	"context"
	"fmt"
	"log"
	"sync"

	"github.com/watchcache/watchcache"
)

// store is a tiny source of truth for the examples: a value with an index
// and a channel closed on every change, so fetches can block.
type store struct {
	mu      sync.Mutex
	value   string
	index   uint64
	changed chan struct{}
}

func newStore(v string) *store { return &store{value: v, index: 1, changed: make(chan struct{})} }

func (s *store) set(v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.value, s.index = v, s.index+1
	close(s.changed)
	s.changed = make(chan struct{})
}

// fetch answers a blocking query: it waits until the index passes MinIndex.
func (s *store) fetch(ctx context.Context, opts watchcache.FetchOptions[string], _ watchcache.Request) (watchcache.FetchResult[string], error) {
	for {
		s.mu.Lock()
		v, idx, changed := s.value, s.index, s.changed
		s.mu.Unlock()
		if idx > opts.MinIndex {
			return watchcache.FetchResult[string]{Value: v, Index: idx}, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return watchcache.FetchResult[string]{}, ctx.Err()
		}
	}
}

func ExampleKind_Get() {
	c, err := watchcache.New(watchcache.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	src := newStore("blue")
	colors, err := watchcache.Register(c, "color", watchcache.FetchFunc[string](src.fetch),
		watchcache.KindOptions{Refresh: true, SupportsBlocking: true})
	if err != nil {
		log.Fatal(err)
	}

	ctx := context.Background()
	req := watchcache.Request{Key: "sky", Partition: watchcache.Partition{Token: "reader"}}
	v, meta, err := colors.Get(ctx, req) // miss: fetches
	fmt.Println(v, meta.Hit, meta.Index, err)
	v, meta, _ = colors.Get(ctx, req) // hit: from the cache
	fmt.Println(v, meta.Hit, meta.Index)

	// A blocking Get returns once the index passes MinIndex.
	go src.set("grey")
	req.MinIndex = meta.Index
	v, meta, _ = colors.Get(ctx, req)
	fmt.Println(v, meta.Index)
	// Output:
	// blue false 1 <nil>
	// blue true 1
	// grey 2
}

func ExampleKind_Notify() {
	c, err := watchcache.New(watchcache.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	src := newStore("blue")
	colors, _ := watchcache.Register(c, "color", watchcache.FetchFunc[string](src.fetch),
		watchcache.KindOptions{Refresh: true, SupportsBlocking: true})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := make(chan watchcache.UpdateEvent[string], 1)
	if err := colors.Notify(ctx, watchcache.Request{Key: "sky"}, "sky-color", events); err != nil {
		log.Fatal(err)
	}
	ev := <-events // the current value first
	fmt.Println(ev.CorrelationID, ev.Result, ev.Meta.Index)
	src.set("grey")
	ev = <-events // then one event per change
	fmt.Println(ev.CorrelationID, ev.Result, ev.Meta.Index)
	// Output:
	// sky-color blue 1
	// sky-color grey 2
}

func ExampleKind_NotifyCallback() {
	c, err := watchcache.New(watchcache.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	src := newStore("blue")
	colors, _ := watchcache.Register(c, "color", watchcache.FetchFunc[string](src.fetch),
		watchcache.KindOptions{Refresh: true, SupportsBlocking: true})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	seen := make(chan string)
	err = colors.NotifyCallback(ctx, watchcache.Request{Key: "sky"}, "sky", func(ev watchcache.UpdateEvent[string]) {
		seen <- fmt.Sprintf("%s=%s@%d", ev.CorrelationID, ev.Result, ev.Meta.Index)
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(<-seen)
	src.set("grey")
	fmt.Println(<-seen)
	// Output:
	// sky=blue@1
	// sky=grey@2
}

// pushStore is a push source: a fetch waiting for a change is a callback
// in a list, not a goroutine, and set answers the waiting ones.
type pushStore struct {
	mu      sync.Mutex
	value   string
	index   uint64
	waiting []func()
}

// Fetch serves requests that bypass the cache (an empty Key).
func (s *pushStore) Fetch(ctx context.Context, opts watchcache.FetchOptions[string], req watchcache.Request) (watchcache.FetchResult[string], error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return watchcache.FetchResult[string]{Value: s.value, Index: s.index}, nil
}

// FetchAsync answers at once if the index passed MinIndex, and otherwise
// when the value changes or ctx is cancelled, whichever comes first.
// (Timeout is left to the cache's deadline here: a real source answers by
// then.)
func (s *pushStore) FetchAsync(ctx context.Context, opts watchcache.FetchOptions[string], _ watchcache.Request, done func(watchcache.FetchResult[string], error)) {
	var once sync.Once
	answer := func(res watchcache.FetchResult[string], err error) { once.Do(func() { done(res, err) }) }
	s.mu.Lock()
	if s.index > opts.MinIndex {
		res := watchcache.FetchResult[string]{Value: s.value, Index: s.index}
		s.mu.Unlock()
		answer(res, nil)
		return
	}
	stop := context.AfterFunc(ctx, func() { answer(watchcache.FetchResult[string]{}, ctx.Err()) })
	s.waiting = append(s.waiting, func() {
		stop()
		answer(watchcache.FetchResult[string]{Value: s.value, Index: s.index}, nil) // called with s.mu held
	})
	s.mu.Unlock()
}

func (s *pushStore) set(v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.value, s.index = v, s.index+1
	for _, f := range s.waiting {
		f()
	}
	s.waiting = nil
}

func ExampleAsyncFetcher() {
	c, err := watchcache.New(watchcache.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	src := &pushStore{value: "blue", index: 1}
	// src implements AsyncFetcher: its entries hold no goroutine while they
	// wait for a change.
	colors, err := watchcache.Register[string](c, "color", src, watchcache.KindOptions{Refresh: true, SupportsBlocking: true})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := make(chan watchcache.UpdateEvent[string], 1)
	if err := colors.Notify(ctx, watchcache.Request{Key: "sky"}, "", events); err != nil {
		log.Fatal(err)
	}
	ev := <-events
	fmt.Println(ev.Result, ev.Meta.Index)
	src.set("grey")
	ev = <-events
	fmt.Println(ev.Result, ev.Meta.Index)
	// Output:
	// blue 1
	// grey 2
}
