package etcdtest

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// Clients of a cluster, and compaction through them.

// ClientOption configures a client made by Cluster.Client.
type ClientOption func(*clientv3.Config)

// WithCredentials makes the client authenticate as user with password.
func WithCredentials(user, password string) ClientOption {
	return func(cfg *clientv3.Config) {
		cfg.Username = user
		cfg.Password = password
	}
}

// WithEndpoints makes the client talk to the given endpoints only (for
// example c.Endpoint(i), to read from one member) instead of all members.
func WithEndpoints(endpoints ...string) ClientOption {
	return func(cfg *clientv3.Config) { cfg.Endpoints = endpoints }
}

// Client returns a client of the cluster, closed when the test ends. By
// default it talks to all members, including stopped ones, so that it uses
// them again once they are restarted, and is anonymous. It fails the test
// if it cannot connect or authenticate.
func (c *Cluster) Client(t testing.TB, opts ...ClientOption) *clientv3.Client {
	t.Helper()
	cli, err := c.newClient(opts...)
	if err != nil {
		t.Fatalf("etcdtest: new client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// newClient returns a client that the caller must close.
func (c *Cluster) newClient(opts ...ClientOption) (*clientv3.Client, error) {
	cfg := clientv3.Config{
		Endpoints:   c.allEndpoints(),
		DialTimeout: opTimeout,
		// The client logs every retry at warn level; in tests that stop
		// members on purpose that is only noise.
		Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{
			// gRPC's default reconnect backoff starts at 1s and grows to 2
			// minutes, so a client could idle for seconds after a member
			// comes back. Tests restart members on purpose and want the
			// client back promptly.
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff: backoff.Config{
					BaseDelay:  50 * time.Millisecond,
					Multiplier: 1.6,
					Jitter:     0.2,
					MaxDelay:   time.Second,
				},
				MinConnectTimeout: 5 * time.Second,
			}),
		},
	}
	if c.opts.clientTLS != nil {
		cfg.TLS = c.opts.clientTLS.Clone()
	}
	for _, opt := range opts {
		opt(&cfg)
	}
	return clientv3.New(cfg)
}

// rootClient returns a client that may do anything, whether or not auth is
// enabled; the caller must close it.
func (c *Cluster) rootClient() (*clientv3.Client, error) {
	// With auth disabled the server answers the client's login with "auth
	// not enabled", which the client takes as "proceed anonymously"; so the
	// root credentials are harmless even before EnableAuth created root.
	return c.newClient(WithCredentials(RootUser, RootPassword))
}

// Compact compacts the key-value store at revision rev and waits until the
// compaction has physically removed the old revisions, so that reads and
// watches from before rev fail with rpctypes.ErrCompacted.
func (c *Cluster) Compact(t testing.TB, rev int64) {
	t.Helper()
	cli, err := c.rootClient()
	if err != nil {
		t.Fatalf("etcdtest: Compact(%d): %v", rev, err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("etcdtest: Compact(%d): %v", rev, err)
	}
}

// CompactLatest compacts the store at its current revision, like Compact,
// and returns that revision.
func (c *Cluster) CompactLatest(t testing.TB) int64 {
	t.Helper()
	cli, err := c.rootClient()
	if err != nil {
		t.Fatalf("etcdtest: CompactLatest: %v", err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	// Any read returns the store's revision in its header.
	resp, err := cli.Get(ctx, "etcdtest/revision", clientv3.WithCountOnly())
	if err != nil {
		t.Fatalf("etcdtest: CompactLatest: reading the revision: %v", err)
	}
	rev := resp.Header.Revision
	if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("etcdtest: CompactLatest: Compact(%d): %v", rev, err)
	}
	return rev
}
