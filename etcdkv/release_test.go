package etcdkv

import (
	"testing"
	"time"

	"github.com/watchcache/watchcache"
)

// watchesHeld counts the etcd watches the source holds on its streams.
func watchesHeld(s *Source) int {
	s.muxMu.Lock()
	defer s.muxMu.Unlock()
	n := 0
	for _, m := range s.muxes {
		m.mu.Lock()
		n += len(m.watches)
		m.mu.Unlock()
	}
	return n
}

// A one-off read does not hold an etcd watch for long: once nobody read the
// key for ReleaseAfter its watch is cancelled (and the stream closed with
// its last watch), and the next read revalidates: it sees a write made
// meanwhile, and watches again.
func TestIdleEntryReleasesItsWatch(t *testing.T) {
	t.Parallel()
	c, _, cli := start(t)
	cfg := testConfig(c, 1)
	cfg.ReleaseAfter = time.Second
	f := newFixture(t, cfg, watchcache.Options{})
	ctx := testCtx(t)
	put(t, cli, "/idle/k", "v1")
	k, meta, err := f.kinds.GetKey(ctx, KeyRequest("/idle/k", self))
	if err != nil || keyOf(k) != "v1" {
		t.Fatalf("GetKey = %q %v, want v1", keyOf(k), err)
	}
	if n := watchesHeld(f.src); n != 1 {
		t.Fatalf("etcd watches after a read = %d, want 1", n)
	}
	eventually(t, "the idle entry's watch is cancelled", func() bool { return watchesHeld(f.src) == 0 })
	f.src.muxMu.Lock()
	streams := len(f.src.muxes)
	f.src.muxMu.Unlock()
	if streams != 0 {
		t.Fatalf("watch streams with no watch = %d, want 0", streams)
	}

	rev := put(t, cli, "/idle/k", "v2")
	k, meta2, err := f.kinds.GetKey(ctx, KeyRequest("/idle/k", self))
	if err != nil || keyOf(k) != "v2" || meta2.Index != uint64(rev) || meta2.Hit {
		t.Fatalf("GetKey after release = %q %+v %v, want v2 at %d (was %d), not a hit", keyOf(k), meta2, err, rev, meta.Index)
	}
	if n := watchesHeld(f.src); n != 1 {
		t.Fatalf("etcd watches after revalidation = %d, want 1", n)
	}
}

// keyOf is k's value, or "<missing>".
func keyOf(k Key) string {
	if !k.Exists {
		return "<missing>"
	}
	return string(k.Entry.Value)
}
