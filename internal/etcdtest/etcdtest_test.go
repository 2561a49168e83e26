package etcdtest_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/watchcache/watchcache/internal/etcdtest"
)

// TestMain fails the package if any goroutine of the harness, of etcd or of
// a client outlives the tests: every test's cleanup must stop everything.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// ctx returns a context that bounds one request of a test.
func ctx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond until it reports true, failing the test with cond's
// last explanation after timeout. It is for cluster state that etcd offers
// no notification for.
func eventually(t *testing.T, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	ticker := time.NewTicker(20 * time.Millisecond)
	defer ticker.Stop()
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %v: %s", timeout, why)
		}
		<-ticker.C
	}
}

func put(t *testing.T, cli *clientv3.Client, key, val string) int64 {
	t.Helper()
	resp, err := cli.Put(ctx(t), key, val)
	if err != nil {
		t.Fatalf("Put(%q): %v", key, err)
	}
	return resp.Header.Revision
}

func TestSingleMemberRoundTrip(t *testing.T) {
	c := etcdtest.Start(t)
	if eps := c.Endpoints(); len(eps) != 1 || eps[0] != c.Endpoint(0) {
		t.Fatalf("Endpoints() = %v, want [%s]", eps, c.Endpoint(0))
	}
	if l := c.Leader(); l != 0 {
		t.Fatalf("Leader() = %d, want 0", l)
	}

	cli := c.Client(t)
	rev := put(t, cli, "/greeting", "hello")
	resp, err := cli.Get(ctx(t), "/greeting")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "hello" {
		t.Fatalf("Get returned %v, want /greeting=hello", resp.Kvs)
	}
	if resp.Kvs[0].ModRevision != rev {
		t.Fatalf("ModRevision = %d, want the Put's revision %d", resp.Kvs[0].ModRevision, rev)
	}
}

// TestStopRestartWithOpenWatch checks that stopping a member is quick even
// while a client watches (etcd's graceful stop would wait for the watch
// stream for seconds), and that the watch resumes once the member is back.
func TestStopRestartWithOpenWatch(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	rev := put(t, cli, "/w/a", "1")

	wctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wch := cli.Watch(wctx, "/w/", clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithCreatedNotify())
	if wr := <-wch; !wr.Created {
		t.Fatalf("first watch response is not the created notification: %+v", wr)
	}

	start := time.Now()
	c.StopMember(0)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("StopMember with an open watch took %v", d)
	}
	if eps := c.Endpoints(); len(eps) != 0 {
		t.Fatalf("Endpoints() after StopMember = %v, want none", eps)
	}

	c.RestartMember(t, 0)
	put(t, cli, "/w/b", "2")
	select {
	case wr, ok := <-wch:
		if !ok || wr.Err() != nil || len(wr.Events) != 1 || string(wr.Events[0].Kv.Key) != "/w/b" {
			t.Fatalf("watch after restart got %+v (open %v, err %v), want the put of /w/b", wr, ok, wr.Err())
		}
	case <-ctx(t).Done():
		t.Fatal("watch did not resume after RestartMember")
	}
}

func TestThreeMembersFailover(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.WithMembers(3))
	if eps := c.Endpoints(); len(eps) != 3 {
		t.Fatalf("Endpoints() = %v, want 3", eps)
	}
	cli := c.Client(t)
	put(t, cli, "/before", "1")

	killed := c.KillLeader(t)
	lead := c.Leader()
	if lead < 0 || lead == killed {
		t.Fatalf("after KillLeader killed member %d, Leader() = %d, want another member", killed, lead)
	}
	if eps := c.Endpoints(); len(eps) != 2 {
		t.Fatalf("Endpoints() after KillLeader = %v, want 2", eps)
	}

	// The cluster keeps accepting writes with one member down; the killed
	// member misses them and has to catch up later.
	var rev int64
	for i := range 10 {
		rev = put(t, cli, fmt.Sprintf("/during/%d", i), "x")
	}

	c.RestartMember(t, killed)
	if eps := c.Endpoints(); len(eps) != 3 {
		t.Fatalf("Endpoints() after RestartMember = %v, want 3", eps)
	}
	// A serializable read is answered from the member's own store, so its
	// header shows how far that member has applied the log.
	mcli := c.Client(t, etcdtest.WithEndpoints(c.Endpoint(killed)))
	eventually(t, 30*time.Second, func() (bool, string) {
		rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := mcli.Get(rctx, "/during/9", clientv3.WithSerializable())
		if err != nil {
			return false, fmt.Sprintf("serializable Get from member %d: %v", killed, err)
		}
		if resp.Header.Revision < rev || len(resp.Kvs) != 1 {
			return false, fmt.Sprintf("member %d is at revision %d with %d kvs, want revision %d and the key", killed, resp.Header.Revision, len(resp.Kvs), rev)
		}
		return true, ""
	})
	// The restarted member rejoins as a follower without disturbing the
	// cluster: all three agree on a leader.
	c.WaitLeader(t)
}

func TestCompact(t *testing.T) {
	c := etcdtest.Start(t)
	cli := c.Client(t)
	r1 := put(t, cli, "/k", "v1")
	r2 := put(t, cli, "/k", "v2")
	r3 := put(t, cli, "/k", "v3")

	c.Compact(t, r2)
	if _, err := cli.Get(ctx(t), "/k", clientv3.WithRev(r1)); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Fatalf("Get at revision %d after Compact(%d): err = %v, want %v", r1, r2, err, rpctypes.ErrCompacted)
	}
	resp, err := cli.Get(ctx(t), "/k", clientv3.WithRev(r2))
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v2" {
		t.Fatalf("Get at the compaction revision %d: %v, %v; want v2", r2, resp, err)
	}

	if rev := c.CompactLatest(t); rev != r3 {
		t.Fatalf("CompactLatest() = %d, want %d", rev, r3)
	}
	if _, err := cli.Get(ctx(t), "/k", clientv3.WithRev(r2)); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Fatalf("Get at revision %d after CompactLatest: err = %v, want %v", r2, err, rpctypes.ErrCompacted)
	}
	// A watch from before the compaction is cancelled with the compaction
	// revision, which is what a cache has to recover from.
	wctx, cancel := context.WithCancel(ctx(t))
	defer cancel()
	wr := <-cli.Watch(wctx, "/k", clientv3.WithRev(r1))
	if !errors.Is(wr.Err(), rpctypes.ErrCompacted) || wr.CompactRevision != r3 {
		t.Fatalf("watch from %d: err %v, CompactRevision %d; want %v at %d", r1, wr.Err(), wr.CompactRevision, rpctypes.ErrCompacted, r3)
	}
}

func TestEnableAuth(t *testing.T) {
	c := etcdtest.Start(t)
	anon := c.Client(t) // made before auth is on
	put(t, anon, "/a/x", "ax")
	put(t, anon, "/b/x", "bx")

	c.EnableAuth(t, []etcdtest.User{
		{Name: "alice", Password: "alice-pw", Roles: []etcdtest.Role{{Name: "a-reader", Prefix: "/a/", Perm: etcdtest.PermRead}}},
		{Name: "bob", Password: "bob-pw", Roles: []etcdtest.Role{{Name: "b-writer", Prefix: "/b/", Perm: etcdtest.PermReadWrite}}},
		{Name: "carol", Password: "carol-pw", Roles: []etcdtest.Role{{Name: "all-reader", Perm: etcdtest.PermRead}}},
	})

	alice := c.Client(t, etcdtest.WithCredentials("alice", "alice-pw"))
	if resp, err := alice.Get(ctx(t), "/a/x"); err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("alice reading /a/x: %v, %v", resp, err)
	}
	if _, err := alice.Get(ctx(t), "/b/x"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("alice reading /b/x: err = %v, want %v", err, rpctypes.ErrPermissionDenied)
	}
	if _, err := alice.Get(ctx(t), "/", clientv3.WithPrefix()); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("alice reading every key: err = %v, want %v", err, rpctypes.ErrPermissionDenied)
	}
	if _, err := alice.Put(ctx(t), "/a/y", "y"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("alice writing /a/y with a read-only role: err = %v, want %v", err, rpctypes.ErrPermissionDenied)
	}

	bob := c.Client(t, etcdtest.WithCredentials("bob", "bob-pw"))
	put(t, bob, "/b/y", "by")

	carol := c.Client(t, etcdtest.WithCredentials("carol", "carol-pw"))
	if resp, err := carol.Get(ctx(t), "/", clientv3.WithPrefix()); err != nil || len(resp.Kvs) != 3 {
		t.Fatalf("carol (role on every key) reading /: %v, %v; want 3 keys", resp, err)
	}

	// A wrong password fails when the client logs in, which clientv3.New
	// does right away.
	bad, err := clientv3.New(clientv3.Config{
		Endpoints:   c.Endpoints(),
		Username:    "alice",
		Password:    "wrong",
		DialTimeout: 10 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err == nil {
		bad.Close()
		t.Fatal("client with a wrong password: no error")
	}
	if !errors.Is(err, rpctypes.ErrAuthFailed) {
		t.Fatalf("client with a wrong password: err = %v, want %v", err, rpctypes.ErrAuthFailed)
	}

	// Anonymous requests are rejected, from old and new clients alike.
	for name, cli := range map[string]*clientv3.Client{"old": anon, "new": c.Client(t)} {
		if _, err := cli.Get(ctx(t), "/a/x"); !errors.Is(err, rpctypes.ErrUserEmpty) {
			t.Fatalf("%s anonymous client reading /a/x: err = %v, want %v", name, err, rpctypes.ErrUserEmpty)
		}
	}

	root := c.Client(t, etcdtest.WithCredentials(etcdtest.RootUser, etcdtest.RootPassword))
	put(t, root, "/c/x", "cx")
	// The harness keeps working with auth on.
	c.CompactLatest(t)
}

func TestWipe(t *testing.T) {
	c := etcdtest.Start(t)
	ep := c.Endpoint(0)
	cli := c.Client(t, etcdtest.WithEndpoints(ep))
	var before *clientv3.PutResponse
	for i := range 20 {
		var err error
		if before, err = cli.Put(ctx(t), fmt.Sprintf("/old/%d", i), "x"); err != nil {
			t.Fatalf("Put: %v", err)
		}
	}

	c.Wipe(t)
	if got := c.Endpoint(0); got != ep {
		t.Fatalf("endpoint changed by Wipe: %s, was %s", got, ep)
	}
	// The client made before the wipe reconnects to the new store by itself.
	resp, err := cli.Get(ctx(t), "/old/", clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("Get after Wipe: %v", err)
	}
	if resp.Header.Revision >= before.Header.Revision {
		t.Fatalf("revision after Wipe = %d, want lower than %d", resp.Header.Revision, before.Header.Revision)
	}
	// Like a store restored from a snapshot, the new one keeps the identity
	// of the old: nothing but the revision tells a client what happened.
	if resp.Header.ClusterId != before.Header.ClusterId || resp.Header.MemberId != before.Header.MemberId {
		t.Fatalf("Wipe changed cluster/member ID from %x/%x to %x/%x",
			before.Header.ClusterId, before.Header.MemberId, resp.Header.ClusterId, resp.Header.MemberId)
	}
	if len(resp.Kvs) != 0 {
		t.Fatalf("Wipe left %d old keys", len(resp.Kvs))
	}
	if rev := put(t, cli, "/new", "x"); rev != resp.Header.Revision+1 {
		t.Fatalf("first Put after Wipe at revision %d, want %d", rev, resp.Header.Revision+1)
	}
}
