package etcdkv

import (
	"testing"

	"github.com/watchcache/watchcache"
)

// Direct reads bypass the cache: they see writes made behind the cache's
// back at once, and keep the kinds' index rules.
func TestDirectReadsAndHealth(t *testing.T) {
	c, f, cli := start(t)
	ctx := testCtx(t)
	p := watchcache.Partition{}
	put(t, cli, "/d/a", "1")
	if _, meta := getKey(t, f, KeyRequest("/d/a", p)); meta.Index == 0 {
		t.Fatal("index 0")
	}
	rev := put(t, cli, "/d/a", "2") // the cache may not have seen it yet; a direct read has
	k, meta, err := f.kinds.ReadKey(ctx, KeyRequest("/d/a", p))
	if err != nil || string(k.Entry.Value) != "2" || meta.Index != uint64(rev) || meta.Hit {
		t.Fatalf("ReadKey = %+v %+v %v, want 2 at %d", k, meta, err, rev)
	}
	put(t, cli, "/d/b", "3")
	pr, _, err := f.kinds.ReadPrefix(ctx, PrefixRequest("/d/", p))
	if err != nil || len(pr.Entries) != 2 {
		t.Fatalf("ReadPrefix = %+v %v", pr, err)
	}
	kl, _, err := f.kinds.ReadKeys(ctx, KeysRequest("/", "/", p))
	if err != nil || len(kl.Keys) != 1 || kl.Keys[0] != "/d/" {
		t.Fatalf("ReadKeys = %+v %v", kl, err)
	}
	h, err := f.src.Health(ctx)
	if err != nil || !h.Leader || h.Revision < rev {
		t.Fatalf("Health = %+v %v", h, err)
	}
	c.StopMember(0)
	if _, err := f.src.Health(ctx); err == nil {
		t.Fatal("Health of a stopped etcd succeeded")
	}
}
