package etcdkv

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/etcdtest"
)

// revocations are the ways a user loses access. partial says the user
// keeps reading /a/ (only /b/ is revoked); otherwise all access ends.
var revocations = []struct {
	name    string
	partial bool
	revoke  func(ctx context.Context, root *clientv3.Client) error
}{
	{"revoke-permission", true, func(ctx context.Context, root *clientv3.Client) error {
		_, err := root.RoleRevokePermission(ctx, "rb", "/b/", clientv3.GetPrefixRangeEnd("/b/"))
		return err
	}},
	{"revoke-role", true, func(ctx context.Context, root *clientv3.Client) error {
		_, err := root.UserRevokeRole(ctx, "u", "rb")
		return err
	}},
	{"delete-role", true, func(ctx context.Context, root *clientv3.Client) error {
		_, err := root.RoleDelete(ctx, "rb")
		return err
	}},
	{"delete-user", false, func(ctx context.Context, root *clientv3.Client) error {
		_, err := root.UserDelete(ctx, "u")
		return err
	}},
	{"change-password", false, func(ctx context.Context, root *clientv3.Client) error {
		_, err := root.UserChangePassword(ctx, "u", "u-pw2")
		return err
	}},
}

// TestRevocationIsEnforced reads two keys as user u, whose access to one
// (or both) is then revoked in each of the ways etcd offers, while u
// watches (Notify), blocks on the index (GetKey with MinIndex) and polls
// (GetKey) both. Values written after the revocation returned are tagged
// "after-": none may reach u on a revoked key, by any path, at any time;
// each path ends in an access error; the key u keeps is still followed.
func TestRevocationIsEnforced(t *testing.T) {
	t.Parallel()
	for _, rv := range revocations {
		t.Run(rv.name, func(t *testing.T) {
			t.Parallel()
			c := etcdtest.Start(t)
			cli := c.Client(t)
			put(t, cli, "/a/k", "before")
			put(t, cli, "/b/k", "before")
			c.EnableAuth(t, []etcdtest.User{{Name: "u", Password: "u-pw", Roles: []etcdtest.Role{
				{Name: "ra", Prefix: "/a/", Perm: etcdtest.PermRead},
				{Name: "rb", Prefix: "/b/", Perm: etcdtest.PermRead},
			}}})
			root := c.Client(t, etcdtest.WithCredentials(etcdtest.RootUser, etcdtest.RootPassword))
			f := newFixture(t, testConfig(c, 1), watchcache.Options{})
			p := login(t, f.src, "u", "u-pw")

			revoked := map[string]bool{"/b/k": true, "/a/k": !rv.partial}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var (
				mu     sync.Mutex
				leaks  []string
				denied = map[string]bool{} // path+key that ended in an access error
				latest = map[string]string{}
			)
			saw := func(path, key, value string, err error) {
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err != nil && (errors.Is(err, ErrPermissionDenied) || errors.Is(err, ErrAuthFailed) || errors.Is(err, ErrUnknownIdentity)):
					denied[path+" "+key] = true
				case err != nil:
				case strings.HasPrefix(value, "after-") && revoked[key]:
					leaks = append(leaks, fmt.Sprintf("%s %s: %s", path, key, value))
				default:
					latest[path+" "+key] = value
				}
			}
			var wg sync.WaitGroup
			for _, key := range []string{"/a/k", "/b/k"} {
				req := KeyRequest(key, p)
				ch := make(chan watchcache.UpdateEvent[Key], 16)
				if err := f.kinds.Key.Notify(ctx, req, "w", ch); err != nil {
					t.Fatal(err)
				}
				wg.Go(func() {
					for {
						select {
						case ev := <-ch:
							saw("notify", key, string(ev.Result.Entry.Value), ev.Err)
						case <-ctx.Done():
							return
						}
					}
				})
				wg.Go(func() { // blocking queries, as Consul clients make
					tick := time.NewTicker(time.Millisecond)
					defer tick.Stop()
					var index uint64
					for ctx.Err() == nil {
						r := req
						r.MinIndex, r.Timeout = index, time.Second
						v, meta, err := f.kinds.GetKey(ctx, r)
						saw("blocking", key, string(v.Entry.Value), err)
						if err != nil {
							index = 0
							<-tick.C // a denied client retries, not in a busy loop
							continue
						}
						index = meta.Index
					}
				})
				wg.Go(func() { // plain reads, paced like a busy client
					tick := time.NewTicker(time.Millisecond)
					defer tick.Stop()
					for ctx.Err() == nil {
						v, _, err := f.kinds.GetKey(ctx, req)
						saw("get", key, string(v.Entry.Value), err)
						<-tick.C
					}
				})
			}
			for i := range 3 {
				put(t, root, "/a/k", fmt.Sprint("before-", i))
				put(t, root, "/b/k", fmt.Sprint("before-", i))
			}

			if err := rv.revoke(testCtx(t), root); err != nil {
				t.Fatal(err)
			}
			for i := range 30 {
				put(t, root, "/a/k", fmt.Sprint("after-", i))
				put(t, root, "/b/k", fmt.Sprint("after-", i))
				time.Sleep(20 * time.Millisecond) // spread the writes over the auth check interval
			}
			for key, gone := range revoked {
				for _, path := range []string{"notify", "blocking", "get"} {
					eventually(t, fmt.Sprintf("%s of %s ends in an access error", path, key), func() bool {
						mu.Lock()
						defer mu.Unlock()
						return !gone || denied[path+" "+key]
					})
				}
			}
			if rv.partial {
				for _, path := range []string{"notify", "blocking", "get"} {
					eventually(t, path+" of /a/k follows the key u keeps", func() bool {
						mu.Lock()
						defer mu.Unlock()
						return latest[path+" /a/k"] == "after-29"
					})
				}
			}
			cancel()
			wg.Wait()
			if len(leaks) > 0 {
				t.Fatalf("%d values written after the revocation reached u: %v", len(leaks), leaks)
			}
		})
	}
}

// With AccessCheckBounded, access ends within AuthCheckInterval of a
// revocation: values written later than that (plus the time to confirm)
// never reach the user; each path still ends in an access error.
func TestRevocationBounded(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t)
	cli := c.Client(t)
	put(t, cli, "/b/k", "before")
	c.EnableAuth(t, []etcdtest.User{{Name: "u", Password: "u-pw", Roles: []etcdtest.Role{{Name: "rb", Prefix: "/b/", Perm: etcdtest.PermRead}}}})
	root := c.Client(t, etcdtest.WithCredentials(etcdtest.RootUser, etcdtest.RootPassword))
	cfg := testConfig(c, 1)
	cfg.AccessCheck, cfg.AuthCheckInterval = AccessCheckBounded, 200*time.Millisecond
	f := newFixture(t, cfg, watchcache.Options{})
	p := login(t, f.src, "u", "u-pw")
	ch := watch(t, f.kinds.Key, KeyRequest("/b/k", p))
	next(t, ch)

	if _, err := root.RoleRevokePermission(testCtx(t), "rb", "/b/", clientv3.GetPrefixRangeEnd("/b/")); err != nil {
		t.Fatal(err)
	}
	revoked := time.Now()
	bound := cfg.AuthCheckInterval + cfg.RequestTimeout // noticed, then confirmed
	var late []string
	for i := 0; time.Since(revoked) < 2*bound; i++ {
		v := fmt.Sprint("after-", i)
		put(t, root, "/b/k", v)
		if time.Since(revoked) > bound {
			late = append(late, v)
		}
		time.Sleep(20 * time.Millisecond)
	}
	ev := until(t, ch, "an access error", func(ev watchcache.UpdateEvent[Key]) bool {
		for _, v := range late {
			if string(ev.Result.Entry.Value) == v {
				t.Fatalf("%s, written %v after the revocation, reached u", v, bound)
			}
		}
		return ev.Err != nil
	})
	if !errors.Is(ev.Err, ErrPermissionDenied) {
		t.Fatalf("watcher's error = %v, want ErrPermissionDenied", ev.Err)
	}
	if _, _, err := f.kinds.GetKey(testCtx(t), KeyRequest("/b/k", p)); !errors.Is(err, ErrPermissionDenied) {
		t.Fatalf("GetKey after the revocation = %v, want ErrPermissionDenied", err)
	}
}

// An access check that etcd answered before a revocation may return after
// a change written after the revocation reached the entry's watch. The
// check covers only what the entry held when it was asked for: that change
// waits for a check of its own, which fails. Here the check of the change
// to "before" is held, once etcd answered it, until u is deleted, "after"
// is written and the entry's watch has taken it.
func TestCheckCoversOnlyWhatItWasAskedFor(t *testing.T) {
	t.Parallel()
	f, root, p := userOfB(t, "initial")
	req := KeyRequest("/b/k", p)
	ch := watch(t, f.kinds.Key, req)
	until(t, ch, "the initial value", func(ev watchcache.UpdateEvent[Key]) bool { return string(ev.Result.Entry.Value) == "initial" })

	held, release := make(chan struct{}), make(chan struct{})
	defer close(release)
	var armed atomic.Bool
	armed.Store(true)
	f.src.testHookAfterCheck = func() {
		if armed.CompareAndSwap(true, false) {
			close(held)
			<-release
		}
	}
	put(t, root, "/b/k", "before")
	select {
	case <-held:
	case <-time.After(waitFor):
		t.Fatal("the change to \"before\" was never checked")
	}
	if _, err := root.UserDelete(testCtx(t), "u"); err != nil {
		t.Fatal(err)
	}
	after := put(t, root, "/b/k", "after")
	sp, _ := parseKeyKey("/b/k")
	if err := viewReaches(f.src, p, sp, after); err != nil {
		t.Fatal(err)
	}
	release <- struct{}{}
	ev := until(t, ch, "an access error", func(ev watchcache.UpdateEvent[Key]) bool {
		if string(ev.Result.Entry.Value) == "after" {
			t.Fatalf("\"after\", written once u was deleted, reached u")
		}
		return ev.Err != nil
	})
	if !errors.Is(ev.Err, ErrAuthFailed) && !errors.Is(ev.Err, ErrUnknownIdentity) {
		t.Fatalf("the watcher's error = %v, want an authentication error", ev.Err)
	}
}

// A read answers a fetch with what it read, not with what the watch it
// starts brought by the time the fetch returns: a watch created before a
// revocation streams what is written after it, unchecked. Here, once the
// first read of /b/k started its watch, u loses the role that grants it,
// "after" is written, and the watch takes it before the fetch returns.
func TestReadAnswersWithWhatItRead(t *testing.T) {
	t.Parallel()
	f, root, p := userOfB(t, "before")
	sp, _ := parseKeyKey("/b/k")
	var armed atomic.Bool
	armed.Store(true)
	f.src.testHookAfterWatch = func(got spec) {
		if got != sp || !armed.CompareAndSwap(true, false) {
			return
		}
		// On a work goroutine of the source: errors are reported, not fatal.
		if _, err := root.UserRevokeRole(testCtx(t), "u", "rb"); err != nil {
			t.Errorf("hook: %v", err)
			return
		}
		after, err := root.Put(testCtx(t), "/b/k", "after")
		if err != nil {
			t.Errorf("hook: %v", err)
			return
		}
		if err := viewReaches(f.src, p, sp, after.Header.Revision); err != nil {
			t.Errorf("hook: %v", err)
		}
	}
	v, _, err := f.kinds.GetKey(testCtx(t), KeyRequest("/b/k", p))
	if err == nil && string(v.Entry.Value) == "after" {
		t.Fatal("\"after\", written once u lost its role, reached u")
	}
	if err == nil && string(v.Entry.Value) != "before" {
		t.Fatalf("GetKey = %q, want \"before\" (what the read read)", v.Entry.Value)
	}
	if armed.Load() {
		t.Fatal("the hook never ran")
	}
}

// viewReaches waits, within waitFor, until the entry of sp for p has
// taken revision rev from its watch.
func viewReaches(s *Source, p watchcache.Partition, sp spec, rev int64) error {
	v, ok := s.views.Load(viewKey{p, sp})
	if !ok {
		return fmt.Errorf("no entry for %s", sp.describe())
	}
	sv := v.(*stateView)
	timeout := time.After(waitFor)
	for {
		moved := sv.changed()
		if sv.rev.Load() >= rev {
			return nil
		}
		select {
		case <-moved:
		case <-timeout:
			return fmt.Errorf("the entry of %s did not take revision %d within %v", sp.describe(), rev, waitFor)
		}
	}
}

// userOfB starts etcd with auth, /b/k set to value and user u (password
// u-pw) granted read of /b/ by role rb, and a fixture on it. It returns
// the fixture, a root client and u's Partition.
func userOfB(t *testing.T, value string) (*fixture, *clientv3.Client, watchcache.Partition) {
	t.Helper()
	c := etcdtest.Start(t)
	put(t, c.Client(t), "/b/k", value)
	c.EnableAuth(t, []etcdtest.User{{Name: "u", Password: "u-pw", Roles: []etcdtest.Role{{Name: "rb", Prefix: "/b/", Perm: etcdtest.PermRead}}}})
	root := c.Client(t, etcdtest.WithCredentials(etcdtest.RootUser, etcdtest.RootPassword))
	f := newFixture(t, testConfig(c, 1), watchcache.Options{})
	return f, root, login(t, f.src, "u", "u-pw")
}
