package etcdkv

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/etcdtest"
)

// authCluster starts a cluster with keys under /a/ and /b/, then turns on
// authentication with alice (read-write on /a/) and bob (on /b/).
func authCluster(t *testing.T) *etcdtest.Cluster {
	t.Helper()
	c := etcdtest.Start(t)
	cli := c.Client(t)
	for _, p := range []string{"/a/", "/b/"} {
		put(t, cli, p+"x", p+"x")
		put(t, cli, p+"y/z", p+"y/z")
	}
	c.EnableAuth(t, []etcdtest.User{
		{Name: "alice", Password: "alice-pw", Roles: []etcdtest.Role{{Name: "a", Prefix: "/a/", Perm: etcdtest.PermReadWrite}}},
		{Name: "bob", Password: "bob-pw", Roles: []etcdtest.Role{{Name: "b", Prefix: "/b/", Perm: etcdtest.PermReadWrite}}},
	})
	return c
}

func login(t *testing.T, src *Source, user, password string) watchcache.Partition {
	t.Helper()
	p, err := src.Login(testCtx(t), user, password)
	if err != nil {
		t.Fatalf("Login(%s): %v", user, err)
	}
	if p.Token == "" {
		t.Fatalf("Login(%s) returned the source's own partition", user)
	}
	return p
}

// TestAuthPartitions has alice and bob read both prefixes concurrently,
// through all three kinds: each reads its own prefix and is denied the
// other's (fatally: no refresh loop), and neither ever sees the other's
// data. The source's own identity is anonymous, which etcd now rejects.
func TestAuthPartitions(t *testing.T) {
	t.Parallel()
	c := authCluster(t)
	f := newFixture(t, testConfig(c, 1), watchcache.Options{})
	parts := map[string]watchcache.Partition{
		"a": login(t, f.src, "alice", "alice-pw"),
		"b": login(t, f.src, "bob", "bob-pw"),
	}

	var wg sync.WaitGroup
	errc := make(chan error, 1000)
	for round := range 4 {
		for user, p := range parts {
			for _, prefix := range []string{"a", "b"} {
				wg.Go(func() {
					errc <- checkRead(testCtx(t), f, p, user, prefix, round)
				})
			}
		}
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Error(err)
		}
	}

	// Writes use the identity too.
	if _, err := f.src.Put(testCtx(t), parts["a"], "/a/new", []byte("1")); err != nil {
		t.Errorf("alice writing /a/new: %v", err)
	}
	if _, err := f.src.Put(testCtx(t), parts["a"], "/b/new", []byte("1")); !errors.Is(err, ErrPermissionDenied) {
		t.Errorf("alice writing /b/new: err = %v, want ErrPermissionDenied", err)
	}
	// The anonymous own identity is refused by an etcd with auth on.
	if _, _, err := f.kinds.Key.Get(testCtx(t), KeyRequest("/a/x", self)); !errors.Is(err, ErrAuthFailed) || !errors.Is(err, watchcache.ErrFatal) {
		t.Errorf("anonymous read: err = %v, want a fatal ErrAuthFailed", err)
	}
	// A watch of a denied key is told so once, fatally.
	ch := watch(t, f.kinds.Prefix, PrefixRequest("/a/", parts["b"]))
	if ev := next(t, ch); !errors.Is(ev.Err, ErrPermissionDenied) || !errors.Is(ev.Err, watchcache.ErrFatal) || len(ev.Result.Entries) != 0 {
		t.Errorf("bob watching /a/: %+v, want a fatal permission error and no data", ev)
	}
}

// checkRead reads prefix's keys as user through every kind, concurrently
// with others, and checks that user sees its own prefix only.
func checkRead(ctx context.Context, f *fixture, p watchcache.Partition, user, prefix string, round int) error {
	own := user == prefix
	where := fmt.Sprintf("round %d: %s reading /%s/", round, user, prefix)
	check := func(kind string, err error, got string, want string) error {
		switch {
		case own && err != nil:
			return fmt.Errorf("%s (%s): %v", where, kind, err)
		case own && got != want:
			return fmt.Errorf("%s (%s): got %q, want %q", where, kind, got, want)
		case !own && (!errors.Is(err, ErrPermissionDenied) || !errors.Is(err, watchcache.ErrFatal)):
			return fmt.Errorf("%s (%s): err = %v, want a fatal ErrPermissionDenied", where, kind, err)
		case !own && got != "" && got != "<missing>" && got != "[]":
			return fmt.Errorf("%s (%s): leaked %q", where, kind, got)
		}
		return nil
	}
	k, _, err := f.kinds.Key.Get(ctx, KeyRequest("/"+prefix+"/x", p))
	if e := check("key", err, string(k.Entry.Value), "/"+prefix+"/x"); e != nil {
		return e
	}
	pr, _, err := f.kinds.Prefix.Get(ctx, PrefixRequest("/"+prefix+"/", p))
	if e := check("prefix", err, fmt.Sprint(prefixKeys(pr)), fmt.Sprintf("[/%s/x /%s/y/z]", prefix, prefix)); e != nil {
		return e
	}
	ks, _, err := f.kinds.Keys.Get(ctx, KeysRequest("/"+prefix+"/", "/", p))
	return check("keys", err, fmt.Sprint(ks.Keys), fmt.Sprintf("[/%s/x /%s/y/]", prefix, prefix))
}

// TestWrongPassword checks that a wrong password never reaches data that
// alice's correct one cached, and that a password changed in etcd stops
// alice's old password and entries here too.
func TestWrongPassword(t *testing.T) {
	t.Parallel()
	c := authCluster(t)
	cfg := testConfig(c, 1)
	cfg.LoginTTL = -1 // check every Login with etcd
	f := newFixture(t, cfg, watchcache.Options{})

	alice := login(t, f.src, "alice", "alice-pw")
	ch := watch(t, f.kinds.Key, KeyRequest("/a/x", alice))
	if ev := next(t, ch); ev.Err != nil || keyValue(ev) != "/a/x" {
		t.Fatalf("alice's first event: %+v", ev)
	}

	for _, tc := range []struct{ user, password string }{
		{"alice", "wrong"},
		{"alice", ""},
		{"alice", "alice-pw "},
		{"", "alice-pw"},
		{"nobody", "alice-pw"},
	} {
		p, err := f.src.Login(testCtx(t), tc.user, tc.password)
		if !errors.Is(err, ErrAuthFailed) || p != (watchcache.Partition{}) {
			t.Errorf("Login(%q, %q) = %+v, %v; want ErrAuthFailed and no partition", tc.user, tc.password, p, err)
		}
	}
	// alice's client survived the wrong attempts.
	if v, _, err := f.kinds.Key.Get(testCtx(t), KeyRequest("/a/x", login(t, f.src, "alice", "alice-pw"))); err != nil || !v.Exists {
		t.Fatalf("alice after wrong passwords: %+v, %v", v, err)
	}

	// The password changes in etcd: the entry's revision checks fail
	// fatally, the old password is refused, the new one works.
	root := c.Client(t, etcdtest.WithCredentials(etcdtest.RootUser, etcdtest.RootPassword))
	if _, err := root.UserChangePassword(testCtx(t), "alice", "alice-pw2"); err != nil {
		t.Fatal(err)
	}
	ev := until(t, ch, "an authentication error", func(ev watchcache.UpdateEvent[Key]) bool { return ev.Err != nil })
	if !errors.Is(ev.Err, ErrAuthFailed) || !errors.Is(ev.Err, watchcache.ErrFatal) {
		t.Fatalf("alice's watcher after the password changed: %v, want a fatal ErrAuthFailed", ev.Err)
	}
	if _, err := f.src.Login(testCtx(t), "alice", "alice-pw"); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("Login with the old password: %v, want ErrAuthFailed", err)
	}
	// Until alice logs in again her partition is unknown.
	if _, _, err := f.kinds.Key.Get(testCtx(t), KeyRequest("/a/y/z", alice)); !errors.Is(err, ErrUnknownIdentity) {
		t.Fatalf("alice's partition after her credentials were rejected: %v, want ErrUnknownIdentity", err)
	}
	alice2 := login(t, f.src, "alice", "alice-pw2")
	if alice2 == alice {
		t.Fatalf("alice's partition stayed the same with a new password: %+v", alice2)
	}
	if _, _, err := f.kinds.Key.Get(testCtx(t), KeyRequest("/a/x", alice)); !errors.Is(err, ErrUnknownIdentity) {
		t.Fatalf("alice's old partition after she logged in with the new password: %v, want ErrUnknownIdentity", err)
	}
	// A Get after the fatal error tries again, with the new client.
	if v, _, err := f.kinds.Key.Get(testCtx(t), KeyRequest("/a/x", alice2)); err != nil || !v.Exists {
		t.Fatalf("alice with the new password: %+v, %v", v, err)
	}
}

// TestNewPasswordEndsOldSessions checks that a session opened with a
// password ends when the password changes, even when the user logs in with
// the new one before the source noticed the change and the session's entry
// fetches again meanwhile: the entry never goes on with the new password's
// credentials.
func TestNewPasswordEndsOldSessions(t *testing.T) {
	t.Parallel()
	c := authCluster(t)
	cfg := testConfig(c, 1)
	cfg.LoginTTL = -1
	f := newFixture(t, cfg, watchcache.Options{})
	root := c.Client(t, etcdtest.WithCredentials(etcdtest.RootUser, etcdtest.RootPassword))

	old := login(t, f.src, "alice", "alice-pw")
	req := KeyRequest("/a/x", old)
	req.Timeout = 20 * time.Millisecond // the entry's fetch ends often with nothing to confirm
	ch := watch(t, f.kinds.Key, req)
	if ev := next(t, ch); ev.Err != nil || keyValue(ev) != "/a/x" {
		t.Fatalf("first event: %+v", ev)
	}
	if _, err := root.UserChangePassword(testCtx(t), "alice", "alice-pw2"); err != nil {
		t.Fatal(err)
	}
	current := login(t, f.src, "alice", "alice-pw2")
	ev := until(t, ch, "the end of the old session", func(ev watchcache.UpdateEvent[Key]) bool { return ev.Err != nil || keyValue(ev) != "/a/x" })
	if !errors.Is(ev.Err, watchcache.ErrFatal) || !(errors.Is(ev.Err, ErrUnknownIdentity) || errors.Is(ev.Err, ErrAuthFailed)) {
		t.Fatalf("old session after the password changed: %+v, want a fatal ErrUnknownIdentity or ErrAuthFailed", ev)
	}
	put(t, root, "/a/x", "after")
	if v, _, err := f.kinds.Key.Get(testCtx(t), KeyRequest("/a/x", old)); err == nil || v.Exists {
		t.Fatalf("Get with the old session's partition: %q, %v; want an error", keyValue(watchcache.UpdateEvent[Key]{Result: v}), err)
	}
	if v, _, err := f.kinds.Key.Get(testCtx(t), KeyRequest("/a/x", current)); err != nil || string(v.Entry.Value) != "after" {
		t.Fatalf("Get with the new password: %q, %v", v.Entry.Value, err)
	}
}

// TestIdleIdentity checks that an identity nobody uses is dropped after
// IdentityIdleTTL, and that its partition then needs a Login.
func TestIdleIdentity(t *testing.T) {
	t.Parallel()
	c := authCluster(t)
	cfg := testConfig(c, 1)
	cfg.IdentityIdleTTL = 200 * time.Millisecond
	f := newFixture(t, cfg, watchcache.Options{})
	alice := login(t, f.src, "alice", "alice-pw")
	eventually(t, "alice's identity dropped", func() bool {
		f.src.mu.Lock()
		defer f.src.mu.Unlock()
		return f.src.pool["alice"] == nil && f.src.lru.Len() == 0
	})
	if _, _, err := f.kinds.Key.Get(testCtx(t), KeyRequest("/a/x", alice)); !errors.Is(err, ErrUnknownIdentity) || !errors.Is(err, watchcache.ErrFatal) {
		t.Fatalf("Get with an idle identity's partition: %v, want a fatal ErrUnknownIdentity", err)
	}
	alice = login(t, f.src, "alice", "alice-pw")
	if v, _, err := f.kinds.Key.Get(testCtx(t), KeyRequest("/a/x", alice)); err != nil || !v.Exists {
		t.Fatalf("Get after logging in again: %+v, %v", v, err)
	}
	// The entry's watch holds the identity: it is not idle.
	f.src.mu.Lock()
	refs := f.src.pool["alice"].refs
	f.src.mu.Unlock()
	if refs != 1 {
		t.Fatalf("alice's identity has %d users, want 1 (the entry's watch)", refs)
	}
}

// TestLoginWithoutAuth checks that, while etcd's authentication is off,
// every user is the source's own (anonymous) identity: there is nothing
// to partition by.
func TestLoginWithoutAuth(t *testing.T) {
	t.Parallel()
	_, f, _ := start(t)
	p, err := f.src.Login(testCtx(t), "alice", "any")
	if err != nil || p != self {
		t.Fatalf("Login with auth off = %+v, %v; want the zero partition", p, err)
	}
	if _, err := f.src.Login(testCtx(t), "alice", ""); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("Login with an empty password: %v, want ErrAuthFailed", err)
	}
}
