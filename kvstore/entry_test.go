package kvstore

import (
	"sync"
	"sync/atomic"
	"testing"
)

// A value's Memo computes its rendering once however many readers ask at
// once, and copies of the value share it; another kind is not memoized; a
// value made without a Memo computes every time.
func TestMemo(t *testing.T) {
	v := NewPrefix([]Entry{{Key: "a"}})
	var calls atomic.Int64
	render := func() any { calls.Add(1); return "json of a" }
	var wg sync.WaitGroup
	for range 100 {
		copied := v // readers get copies of the published value
		wg.Go(func() {
			if got := copied.Memo().Do("json", render); got != "json of a" {
				t.Errorf("Do = %v", got)
			}
		})
	}
	wg.Wait()
	if n := calls.Load(); n != 1 {
		t.Fatalf("rendered %d times for 100 readers, want once", n)
	}
	v.Memo().Do("other", render)
	v.Memo().Do("other", render)
	if n := calls.Load(); n != 3 {
		t.Fatalf("another kind: %d renderings in all, want 3 (not memoized)", n)
	}
	var bare Prefix
	bare.Memo().Do("json", render)
	bare.Memo().Do("json", render)
	if n := calls.Load(); n != 5 {
		t.Fatalf("a value without a Memo: %d renderings in all, want 5", n)
	}
}
