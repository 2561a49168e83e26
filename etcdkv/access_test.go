package etcdkv

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/etcdtest"
)

// Strict mode confirms changes even while etcd last said its auth was off:
// auth turned off, a permission revoked meanwhile and auth turned on again
// within one poll interval must not let the writes that follow through.
func TestStrictChecksWhileAuthLooksOff(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	put(t, cli, "/b/k", "before")
	c.EnableAuth(t, []etcdtest.User{{Name: "u", Password: "u-pw", Roles: []etcdtest.Role{{Name: "rb", Prefix: "/b/", Perm: etcdtest.PermRead}}}})
	root := c.Client(t, etcdtest.WithCredentials(etcdtest.RootUser, etcdtest.RootPassword))
	cfg := testConfig(c, 1)
	cfg.AuthCheckInterval = time.Second                // strict (default); the largest allowed interval
	cfg.ResetCheckInterval = DefaultResetCheckInterval // the default (5s); the revision probe is an access check too
	f := newFixture(t, cfg, watchcache.Options{})
	p := login(t, f.src, "u", "u-pw")
	ch := watch(t, f.kinds.Key, KeyRequest("/b/k", p))
	if ev := next(t, ch); ev.Err != nil {
		t.Fatal(ev.Err)
	}

	if _, err := root.AuthDisable(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "source sees auth off", func() bool { return f.src.auth.off.Load() })
	// The poll just happened: the next is about 1s away.
	if _, err := root.RoleRevokePermission(testCtx(t), "rb", "/b/", clientv3.GetPrefixRangeEnd("/b/")); err != nil {
		t.Fatal(err)
	}
	if _, err := root.AuthEnable(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	// Auth is on again and u may no longer read /b/: the revocation is in force.
	for i := range 5 {
		put(t, root, "/b/k", fmt.Sprint("after-", i))
		time.Sleep(20 * time.Millisecond)
	}
	ev := until(t, ch, "an access error or a leak", func(ev watchcache.UpdateEvent[Key]) bool {
		return ev.Err != nil || strings.HasPrefix(string(ev.Result.Entry.Value), "after-")
	})
	if ev.Err == nil {
		t.Fatalf("LEAK: %q, written after the revocation was in force, reached u", ev.Result.Entry.Value)
	}
}

// Bounded mode keeps its bound when the source's own credentials are
// revoked: the auth status is asked without them, and polls that fail make
// every change be confirmed rather than none.
func TestBoundedWithOwnCredentialsRevoked(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	put(t, cli, "/b/k", "before")
	c.EnableAuth(t, []etcdtest.User{
		{Name: "u", Password: "u-pw", Roles: []etcdtest.Role{{Name: "rb", Prefix: "/b/", Perm: etcdtest.PermRead}}},
		{Name: "src", Password: "src-pw"},
	})
	root := c.Client(t, etcdtest.WithCredentials(etcdtest.RootUser, etcdtest.RootPassword))
	cfg := testConfig(c, 1)
	cfg.Username, cfg.Password = "src", "src-pw"
	cfg.AccessCheck, cfg.AuthCheckInterval = AccessCheckBounded, 200*time.Millisecond
	cfg.ResetCheckInterval = DefaultResetCheckInterval // the default (5s); the revision probe is an access check too
	f := newFixture(t, cfg, watchcache.Options{})
	p := login(t, f.src, "u", "u-pw")
	ch := watch(t, f.kinds.Key, KeyRequest("/b/k", p))
	next(t, ch)
	eventually(t, "first poll", func() bool { return f.src.auth.epoch.Load() > 0 })

	// The source's own credentials are rotated (or its user removed).
	if _, err := root.UserChangePassword(testCtx(t), "src", "src-pw2"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // the poll after the change may still bump once
	epoch := f.src.auth.epoch.Load()

	if _, err := root.RoleRevokePermission(testCtx(t), "rb", "/b/", clientv3.GetPrefixRangeEnd("/b/")); err != nil {
		t.Fatal(err)
	}
	revoked := time.Now()
	bound := cfg.AuthCheckInterval + cfg.RequestTimeout
	var leaks []string
	deadline := time.Now().Add(3 * bound)
	for i := 0; time.Now().Before(deadline); i++ {
		put(t, root, "/b/k", fmt.Sprint("after-", i))
		time.Sleep(50 * time.Millisecond)
	drain:
		for {
			select {
			case ev := <-ch:
				if ev.Err == nil && time.Since(revoked) > bound {
					leaks = append(leaks, string(ev.Result.Entry.Value))
				}
			default:
				break drain
			}
		}
	}
	v, _, err := f.kinds.GetKey(testCtx(t), KeyRequest("/b/k", p))
	t.Logf("epoch before revocation %d, now %d; GetKey after 3x bound: %q, %v", epoch, f.src.auth.epoch.Load(), v.Entry.Value, err)
	if len(leaks) > 0 {
		t.Fatalf("LEAK: %d values written more than %v after the revocation reached u, last %q", len(leaks), bound, leaks[len(leaks)-1])
	}
}

// A caller's context that already carries a token (metadata propagated by
// gRPC middleware) must not make an identity's request someone else's:
// etcd authenticates with the first token it finds.
func TestCallerTokenIsReplaced(t *testing.T) {
	c := authCluster(t)
	f := newFixture(t, testConfig(c, 1), watchcache.Options{})
	bob := login(t, f.src, "bob", "bob-pw")
	aliceCli := c.Client(t)
	resp, err := aliceCli.Authenticate(testCtx(t), "alice", "alice-pw")
	if err != nil {
		t.Fatal(err)
	}
	ctx := metadata.AppendToOutgoingContext(testCtx(t), "token", resp.Token)
	v, _, err := f.kinds.ReadKey(ctx, KeyRequest("/a/x", bob))
	if err == nil {
		t.Fatalf("bob's ReadKey of alice's /a/x succeeded (%q): the request carried alice's token first", v.Entry.Value)
	}
	if !errors.Is(err, ErrPermissionDenied) {
		t.Fatalf("err = %v", err)
	}
}

// Login trusts "auth is off" only briefly: once auth is back on, a Login
// with any name and password must not get the source's own identity.
func TestAuthOffIsNotTrustedAfterAuthIsOn(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	put(t, cli, "/secret", "s3cret")
	c.EnableAuth(t, []etcdtest.User{{Name: "u", Password: "u-pw"}})
	root := c.Client(t, etcdtest.WithCredentials(etcdtest.RootUser, etcdtest.RootPassword))
	cfg := testConfig(c, 1)
	cfg.Username, cfg.Password = etcdtest.RootUser, etcdtest.RootPassword
	f := newFixture(t, cfg, watchcache.Options{})
	if _, err := root.AuthDisable(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.src.Login(testCtx(t), "mallory", "x"); err != nil {
		t.Fatal(err)
	}
	if _, err := root.AuthEnable(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	p, err := f.src.Login(testCtx(t), "mallory", "anything")
	if err != nil {
		return // fine
	}
	v, _, err := f.kinds.GetKey(testCtx(t), KeyRequest("/secret", p))
	t.Fatalf("with auth on, Login(mallory, anything) = %+v and GetKey(/secret) = %q, %v", p, v.Entry.Value, err)
}

// ConfigureClient must not set credentials on the shared client: every
// identity would act as that user.
func TestConfigureClientMustNotSetCredentials(t *testing.T) {
	c := authCluster(t)
	cfg := testConfig(c, 1)
	cfg.ConfigureClient = func(cc *clientv3.Config) {
		fastReconnect(cc)
		cc.Username, cc.Password = etcdtest.RootUser, etcdtest.RootPassword
	}
	if src, err := New(cfg); !errors.Is(err, watchcache.ErrInvalid) {
		if err == nil {
			src.Close()
		}
		t.Fatalf("New with client credentials = %v, want ErrInvalid", err)
	}
}

// A Login with the old password whose answer from etcd comes back after
// the password changed and a Login with the new one succeeded must fail:
// it must neither revoke the new identity nor read what was cached since.
func TestLoginRaceWithPasswordChange(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	put(t, cli, "/b/k", "before")
	c.EnableAuth(t, []etcdtest.User{{Name: "u", Password: "u-pw", Roles: []etcdtest.Role{{Name: "rb", Prefix: "/b/", Perm: etcdtest.PermRead}}}})
	root := c.Client(t, etcdtest.WithCredentials(etcdtest.RootUser, etcdtest.RootPassword))

	var armed atomic.Bool
	passed, release := make(chan struct{}), make(chan struct{})
	cfg := testConfig(c, 1)
	cfg.LoginTTL = -1
	cfg.ResetCheckInterval = DefaultResetCheckInterval
	cfg.ConfigureClient = func(cc *clientv3.Config) {
		fastReconnect(cc)
		cc.DialOptions = append(cc.DialOptions, grpc.WithChainUnaryInterceptor(
			func(ctx context.Context, method string, req, reply any, conn *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
				err := invoker(ctx, method, req, reply, conn, opts...)
				if r, ok := req.(*pb.AuthenticateRequest); ok && r.Password == "u-pw" && armed.CompareAndSwap(true, false) {
					close(passed) // etcd accepted the old password ...
					<-release     // ... and the answer is slow to come back
				}
				return err
			}))
	}
	f := newFixture(t, cfg, watchcache.Options{})
	login(t, f.src, "u", "u-pw")
	eventually(t, "first poll", func() bool { return f.src.auth.epoch.Load() > 0 })

	armed.Store(true)
	type res struct {
		p   watchcache.Partition
		err error
	}
	oldLogin := make(chan res, 1)
	go func() {
		p, err := f.src.Login(context.Background(), "u", "u-pw")
		oldLogin <- res{p, err}
	}()
	<-passed
	epoch := f.src.auth.epoch.Load()
	if _, err := root.UserChangePassword(testCtx(t), "u", "u-pw2"); err != nil {
		t.Fatal(err)
	}
	pNew := login(t, f.src, "u", "u-pw2")
	put(t, root, "/b/k", "after-change")
	eventually(t, "the auth poll sees the change", func() bool { return f.src.auth.epoch.Load() != epoch })
	if v, _, err := f.kinds.GetKey(testCtx(t), KeyRequest("/b/k", pNew)); err != nil || string(v.Entry.Value) != "after-change" {
		t.Fatalf("new password: %q %v", v.Entry.Value, err)
	}
	close(release)
	r := <-oldLogin
	if r.err != nil {
		return // the old password was refused: fine
	}
	v, _, err := f.kinds.GetKey(testCtx(t), KeyRequest("/b/k", r.p))
	t.Fatalf("Login with the password changed before it returned succeeded; GetKey = %q, %v", v.Entry.Value, err)
}
