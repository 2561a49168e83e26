package etcdkv

import (
	"errors"
	"testing"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/etcdtest"
	"github.com/watchcache/watchcache/kvstore"
)

// A Store without tokens ignores a token while etcd's authentication is
// off (as Consul without ACLs), and refuses it ("ACL not found") once
// authentication is on; a Store with tokens refuses tokens it does not
// list either way.
func TestStoreTokensWithoutTokensFile(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t)
	f := newFixture(t, testConfig(c, 1), watchcache.Options{})
	bare := NewStore(f.src, f.kinds, nil)
	listed := NewStore(f.src, f.kinds, map[string]TokenUser{"t": {User: "u", Password: "p"}})
	ctx := testCtx(t)

	if p, err := bare.Identify(ctx, kvstore.Credentials{Token: "anything"}); err != nil || p != self {
		t.Fatalf("auth off, no tokens: Identify = %+v, %v; want the own identity", p, err)
	}
	if _, err := listed.Identify(ctx, kvstore.Credentials{Token: "unlisted"}); !errors.Is(err, kvstore.ErrAuthFailed) || err.Error() != "ACL not found" {
		t.Fatalf("auth off, tokens listed: an unlisted token = %v, want ACL not found", err)
	}
	c.EnableAuth(t, nil)
	eventually(t, "the source sees auth on", func() bool { on, err := f.src.authEnabled(ctx); return err == nil && on })
	if _, err := bare.Identify(ctx, kvstore.Credentials{Token: "anything"}); !errors.Is(err, kvstore.ErrAuthFailed) {
		t.Fatalf("auth on, no tokens: Identify = %v, want ACL not found", err)
	}
}
