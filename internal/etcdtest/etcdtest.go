// Package etcdtest runs real etcd servers inside the test process, using
// go.etcd.io/etcd/server/v3/embed, so that tests of code that talks to etcd
// run against the real thing: leader elections, compaction, authentication,
// members that crash and come back, and stores rebuilt from scratch.
//
// Typical use:
//
//	func TestSomething(t *testing.T) {
//		c := etcdtest.Start(t) // one member; etcdtest.WithMembers(3) for a cluster
//		cli := c.Client(t)
//		// ... use cli, or hand c.Endpoints() to the code under test ...
//	}
//
// Everything a Cluster starts is stopped by t.Cleanup, and cleanup waits for
// etcd's last goroutines and peer connections, so tests that check for
// goroutine leaks with go.uber.org/goleak need no ignore rules.
//
// Methods that change the cluster (StopMember, RestartMember, KillLeader,
// Wipe, EnableAuth, Compact) must be called from one goroutine at a time,
// normally the test's. Endpoints, Endpoint and Leader may be called from any
// goroutine.
package etcdtest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/etcdserver/api/rafthttp"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

const (
	// readyTimeout bounds how long members may take to become ready or to
	// agree on a leader. It is generous because the machines that run the
	// tests are small and shared, and the race detector slows etcd down a lot.
	readyTimeout = 30 * time.Second

	// opTimeout bounds each administrative request the harness sends.
	opTimeout = 15 * time.Second

	// rebindTimeout bounds how long RestartMember and Wipe keep trying to
	// bind a member's old ports again.
	rebindTimeout = 10 * time.Second

	// startAttempts is how often Start tries fresh ports when one of the
	// ports it picked was taken before etcd could bind it.
	startAttempts = 3

	// Raft timing. etcd's defaults (100/1000 ms) make a failover take up to
	// two seconds; etcd's own integration tests use 10/100 ms, but with the
	// race detector on two busy cores heartbeats that tight get late and
	// followers start spurious elections, which code under test would see
	// as random "leader changed" errors. 50/500 ms keeps failovers around a
	// second without that.
	tickMs     = 50
	electionMs = 500

	// bcryptMinCost is bcrypt.MinCost. etcd hashes each password when a user
	// is added and again at every login; at its default cost (10) that is
	// slow, more so under the race detector, and tests gain nothing from
	// strong hashes.
	bcryptMinCost = 4
)

// RootUser and RootPassword are the credentials of the root user that
// EnableAuth creates. Tests can use them to get an unrestricted client once
// authentication is on: c.Client(t, etcdtest.WithCredentials(etcdtest.RootUser, etcdtest.RootPassword)).
const (
	RootUser     = "root"
	RootPassword = "etcdtest-root-password"
)

// clusterSeq numbers the clusters of this process, for their tokens.
var clusterSeq atomic.Int64

// Option configures Start.
type Option func(*options)

type options struct {
	members   int
	logger    *zap.Logger
	configure []func(*embed.Config)

	serverTLS *transport.TLSInfo // nil: clients talk plain http
	clientTLS *tls.Config
}

// WithMembers sets the number of members of the cluster (default 1). Use an
// odd number: 3 members survive the loss of one.
func WithMembers(n int) Option {
	return func(o *options) { o.members = n }
}

// WithLogger sends the etcd servers' logs to lg instead of discarding them;
// handy when debugging a test. Beware that etcd logs from its own goroutines
// until the cluster is stopped in cleanup, so a logger that writes to a
// testing.T (zaptest) must belong to the test that called Start.
func WithLogger(lg *zap.Logger) Option {
	return func(o *options) { o.logger = lg }
}

// WithClientTLS makes the members serve clients over TLS only (https://
// endpoints) with server (set ClientCertAuth to require client
// certificates), and the harness's own clients (Client, EnableAuth, ...)
// connect with client. Members talk to each other in plain http.
func WithClientTLS(server transport.TLSInfo, client *tls.Config) Option {
	return func(o *options) { o.serverTLS, o.clientTLS = &server, client }
}

// WithConfig lets a test adjust the embed configuration of every member, for
// example to set WatchProgressNotifyInterval. fn runs after the harness has
// filled in the configuration, each time a member is (re)started; changing
// names, directories or URLs breaks the harness.
func WithConfig(fn func(cfg *embed.Config)) Option {
	return func(o *options) { o.configure = append(o.configure, fn) }
}

// Cluster is a set of embedded etcd members started by Start.
type Cluster struct {
	opts  options
	base  string // temporary directory that holds every data directory
	token string // initial cluster token, unique per cluster

	mu             sync.Mutex // guards the fields below and each member's srv
	members        []*member
	initialCluster string // name=peerURL,... as given to every member
	authEnabled    bool
}

// member is one etcd member. Its name, URLs and (except after Wipe) data
// directory stay the same across restarts, as they would for a real member.
type member struct {
	name      string
	clientURL url.URL
	peerURL   url.URL
	dir       string
	srv       *server // nil while the member is stopped
}

// server is one run of an embedded etcd.
type server struct {
	e *embed.Etcd

	mu      sync.Mutex
	grpc    []*grpc.Server // client-facing gRPC servers, see register
	stopped bool
}

// Start starts a cluster of one member, or of as many as WithMembers says, on
// free ports of 127.0.0.1, each with its own data directory under
// t.TempDir(). It returns once every member is ready to serve clients and a
// leader has been elected; it fails the test if that takes longer than 30s.
// The cluster is stopped when the test and its subtests are done.
func Start(t testing.TB, opts ...Option) *Cluster {
	t.Helper()
	o := options{members: 1, logger: zap.NewNop()}
	for _, opt := range opts {
		opt(&o)
	}
	if o.members < 1 {
		t.Fatalf("etcdtest: WithMembers(%d): a cluster needs at least one member", o.members)
	}
	c := &Cluster{
		opts: o,
		base: t.TempDir(),
		// A per-cluster token keeps members of different clusters of the same
		// test process from ever accepting each other as peers.
		token: fmt.Sprintf("etcdtest-%d-%d", os.Getpid(), clusterSeq.Add(1)),
	}
	// Registered after t.TempDir, so it runs before the directory is removed
	// (cleanups run last-in first-out).
	t.Cleanup(c.stopAll)

	for attempt := 1; ; attempt++ {
		err := c.bootstrap()
		if err == nil {
			break
		}
		c.stopAll()
		if !isAddrInUse(err) || attempt == startAttempts {
			t.Fatalf("etcdtest: starting a %d-member cluster: %v", o.members, err)
		}
		// Another process took one of the ports between our probe and etcd's
		// bind: bootstrap again with fresh ports and directories.
	}
	c.waitReady(t, c.members...)
	c.WaitLeader(t)
	return c
}

// bootstrap picks ports and data directories for a new cluster and starts
// all its members. Members of a multi-member cluster cannot become ready
// before a quorum of them runs, so they are all started before waiting.
func (c *Cluster) bootstrap() error {
	c.mu.Lock()
	defer c.mu.Unlock()

	members := make([]*member, c.opts.members)
	peers := make([]string, len(members))
	for i := range members {
		clientPort, err := freePort()
		if err != nil {
			return err
		}
		peerPort, err := freePort()
		if err != nil {
			return err
		}
		name := "m" + strconv.Itoa(i)
		dir, err := os.MkdirTemp(c.base, name+"-")
		if err != nil {
			return err
		}
		members[i] = &member{
			name:      name,
			clientURL: url.URL{Scheme: c.clientScheme(), Host: "127.0.0.1:" + strconv.Itoa(clientPort)},
			peerURL:   url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(peerPort)},
			dir:       dir,
		}
		peers[i] = name + "=" + members[i].peerURL.String()
	}
	c.members = members
	c.initialCluster = strings.Join(peers, ",")

	for _, m := range members {
		if err := c.startMember(m); err != nil {
			return err
		}
	}
	return nil
}

// config returns the embed configuration for a run of member m.
func (c *Cluster) config(m *member) *embed.Config {
	cfg := embed.NewConfig()
	cfg.Name = m.name
	cfg.Dir = m.dir
	cfg.ListenClientUrls = []url.URL{m.clientURL}
	cfg.AdvertiseClientUrls = []url.URL{m.clientURL}
	cfg.ListenPeerUrls = []url.URL{m.peerURL}
	cfg.AdvertisePeerUrls = []url.URL{m.peerURL}
	// Only used when the data directory is empty: a restarted member finds
	// its cluster in its WAL, a wiped one bootstraps a new cluster.
	cfg.InitialCluster = c.initialCluster
	cfg.InitialClusterToken = c.token
	cfg.ClusterState = embed.ClusterStateFlagNew

	if c.opts.serverTLS != nil {
		cfg.ClientTLSInfo = *c.opts.serverTLS
	}

	cfg.TickMs = tickMs
	cfg.ElectionMs = electionMs
	cfg.BcryptCost = bcryptMinCost
	// Data only has to outlive a member's stop within this process, and the
	// page cache keeps it; fsync would just make every write slow.
	cfg.UnsafeNoFsync = true
	// The HTTP/JSON gateway is not needed (clients use gRPC) and would add a
	// loopback gRPC connection per member that takes time to tear down.
	cfg.EnableGRPCGateway = false

	// Logs go to the configured logger (discarded by default) rather than
	// to stderr, so that passing tests stay quiet. Handing etcd a logger is
	// also better than pointing LogOutputs at /dev/null: etcd would open
	// that file on every start and never close it.
	cfg.Logger = "zap"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(c.opts.logger)

	for _, fn := range c.opts.configure {
		fn(cfg)
	}
	return cfg
}

// clientScheme is the scheme of the members' client URLs.
func (c *Cluster) clientScheme() string {
	if c.opts.serverTLS != nil {
		return "https"
	}
	return "http"
}

// startMember starts a run of member m. It does not wait for it to be ready.
// The caller holds c.mu.
func (c *Cluster) startMember(m *member) error {
	s := &server{}
	cfg := c.config(m)
	cfg.ServiceRegister = s.register
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("member %s (client %s, peer %s): %w", m.name, m.clientURL.Host, m.peerURL.Host, err)
	}
	s.e = e
	m.srv = s
	return nil
}

// restartMember starts member m again on its old ports. The ports were ours a
// moment ago and lie outside the kernel's ephemeral range (see ports.go), so
// they are normally free; if another process grabbed one meanwhile, wait a
// little for it to go away. The caller holds c.mu.
func (c *Cluster) restartMember(m *member) error {
	deadline := time.Now().Add(rebindTimeout)
	for {
		err := c.startMember(m)
		if err == nil || !isAddrInUse(err) || time.Now().After(deadline) {
			return err
		}
		// There is no event to wait for when another process holds a port.
		time.Sleep(100 * time.Millisecond)
	}
}

// register is embed's ServiceRegister hook, called with each client-facing
// gRPC server when it is created. stop needs those servers: embed.Etcd.Close
// stops them gracefully, which waits for open streams such as watches to end
// and so, with a client watching, takes the full request timeout (seconds)
// per member. Stopping them hard first cuts client connections at once, the
// way a crashed etcd process would.
func (s *server) register(gs *grpc.Server) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		gs.Stop() // created while stopping: make its Serve return at once
		return
	}
	s.grpc = append(s.grpc, gs)
}

// stop stops the run like a crash (client connections are cut and, if the
// member leads, leadership is not handed over) but leaves its data
// consistent on disk, and waits until all of its goroutines and listeners
// are gone.
func (s *server) stop() {
	s.mu.Lock()
	s.stopped = true
	servers := s.grpc
	s.grpc = nil
	s.mu.Unlock()

	for _, gs := range servers {
		gs.Stop()
	}
	// Close would call Server.Stop, which first transfers leadership away.
	// HardStop skips that, so a stopped leader leaves its followers to notice
	// the missing heartbeats and elect a new leader, as after a crash. Close
	// then finds the server stopped and only releases the rest.
	s.e.Server.HardStop()
	s.e.Close()
}

// waitReady waits until each member in ms is ready to serve clients, which
// for a member of a multi-member cluster means it has joined a quorum.
func (c *Cluster) waitReady(t testing.TB, ms ...*member) {
	t.Helper()
	timer := time.NewTimer(readyTimeout)
	defer timer.Stop()
	for _, m := range ms {
		e := m.srv.e
		select {
		case <-e.Server.ReadyNotify():
		case err := <-e.Err():
			t.Fatalf("etcdtest: member %s failed before it was ready: %v", m.name, err)
		case <-e.Server.StopNotify():
			t.Fatalf("etcdtest: member %s stopped before it was ready", m.name)
		case <-timer.C:
			t.Fatalf("etcdtest: member %s (client %s) not ready after %v (a member of a multi-member cluster needs a quorum of members running)",
				m.name, m.clientURL.String(), readyTimeout)
		}
	}
}

// stopAll stops every running member, concurrently since each stop waits for
// its own goroutines to end, and then waits for connections between members
// to be gone.
func (c *Cluster) stopAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	var wg sync.WaitGroup
	for _, m := range c.members {
		if m.srv == nil {
			continue
		}
		wg.Go(m.srv.stop)
	}
	wg.Wait()
	peerPorts := map[int]bool{}
	for _, m := range c.members {
		m.srv = nil
		if p, err := strconv.Atoi(m.peerURL.Port()); err == nil {
			peerPorts[p] = true
		}
	}
	if len(c.members) > 1 {
		waitPeerConnsClosed(peerPorts)
	}
}

// waitPeerConnsClosed waits until no connection to or from a peer port of
// the stopped cluster is open, which takes up to rafthttp.ConnReadTimeout (5s).
//
// embed.Etcd.Close leaves connections between members behind. The leader
// polls every follower's version over an HTTP client (EtcdServer.peerRt)
// whose idle keep-alive connections nobody ever closes. On the follower's
// side, net/http cannot abort its background read of such a connection,
// because etcd's timeout listener resets the read deadline on every read, so
// the connection stays "active" until that deadline passes (up to 5s after
// the last request); the peer server's Shutdown only closes idle
// connections and gives up after a second. Meanwhile a few net/http
// goroutines live on at both ends. They look like any HTTP client's or
// server's, so goleak cannot be told to ignore just these, and a package
// that checks for leaks right after its tests would fail. etcd offers no way
// to close those connections, and its read timeout should not be lowered
// below 5s (etcd's own main enforces that minimum), so wait for the kernel
// to show them closed. Single-member clusters have no such connections.
func waitPeerConnsClosed(ports map[int]bool) {
	deadline := time.Now().Add(rafthttp.ConnReadTimeout + 2*time.Second)
	for {
		open, ok := openConns(ports)
		if !open || !ok || time.Now().After(deadline) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// member returns member i, panicking with a clear message on a bad index
// (a bug in the calling test). The caller holds c.mu.
func (c *Cluster) member(i int) *member {
	if i < 0 || i >= len(c.members) {
		panic(fmt.Sprintf("etcdtest: no member %d in a cluster of %d", i, len(c.members)))
	}
	return c.members[i]
}

// Endpoints returns the client URLs (http://127.0.0.1:port) of the members
// that are running, in member order.
func (c *Cluster) Endpoints() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var eps []string
	for _, m := range c.members {
		if m.srv != nil {
			eps = append(eps, m.clientURL.String())
		}
	}
	return eps
}

// Endpoint returns the client URL of member i, running or not. It stays the
// same across StopMember, RestartMember and Wipe.
func (c *Cluster) Endpoint(i int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.member(i).clientURL.String()
}

// PeerAddr returns the host:port member i's peers reach it at.
func (c *Cluster) PeerAddr(i int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.member(i).peerURL.Host
}

// allEndpoints returns the client URLs of all members, running or not.
func (c *Cluster) allEndpoints() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	eps := make([]string, len(c.members))
	for i, m := range c.members {
		eps[i] = m.clientURL.String()
	}
	return eps
}

// StopMember stops member i, keeping its data directory, as if its process
// had crashed: client connections to it are cut and, if it was the leader,
// it does not hand leadership over. In a multi-member cluster it takes about
// a second (embed's shutdown of the connections to other members). Stopping
// a stopped member does nothing. It panics if there is no member i.
func (c *Cluster) StopMember(i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.member(i)
	if m.srv == nil {
		return
	}
	m.srv.stop()
	m.srv = nil
}

// RestartMember starts the stopped member i again with its old data
// directory, name and ports, and waits until it is ready to serve clients.
// In a multi-member cluster that means it has rejoined a quorum; it may
// still be catching up on the log it missed when RestartMember returns.
func (c *Cluster) RestartMember(t testing.TB, i int) {
	t.Helper()
	m, err := func() (*member, error) {
		c.mu.Lock()
		defer c.mu.Unlock()
		m := c.member(i)
		if m.srv != nil {
			return nil, fmt.Errorf("member %d is running", i)
		}
		return m, c.restartMember(m)
	}()
	if err != nil {
		t.Fatalf("etcdtest: RestartMember(%d): %v", i, err)
	}
	c.waitReady(t, m)
}

// Leader returns the index of the member that all running members currently
// agree is the leader, or -1 while there is none (during an election, when
// the leader was just stopped, or when no quorum runs).
func (c *Cluster) Leader() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	var lead uint64
	idx := -1
	for i, m := range c.members {
		if m.srv == nil {
			continue
		}
		l := m.srv.e.Server.Lead()
		switch {
		case l == 0: // raft.None: this member knows no leader
			return -1
		case lead == 0:
			lead = l
		case l != lead:
			return -1
		}
		if uint64(m.srv.e.Server.MemberID()) == l {
			idx = i
		}
	}
	return idx
}

// WaitLeader waits until the running members agree on a leader and returns
// its index. It fails the test after 30s.
func (c *Cluster) WaitLeader(t testing.TB) int {
	t.Helper()
	// Raft exposes no notification of leader changes through embed, so poll;
	// an election takes at least one election timeout (500ms).
	ticker := time.NewTicker(10 * time.Millisecond)
	defer ticker.Stop()
	deadline := time.NewTimer(readyTimeout)
	defer deadline.Stop()
	for {
		if l := c.Leader(); l >= 0 {
			return l
		}
		select {
		case <-ticker.C:
		case <-deadline.C:
			t.Fatalf("etcdtest: no leader after %v (running members: %v)", readyTimeout, c.Endpoints())
		}
	}
}

// KillLeader stops the current leader like StopMember and returns its index.
// If the members still running form a quorum, it waits until they have
// elected a new leader.
func (c *Cluster) KillLeader(t testing.TB) int {
	t.Helper()
	l := c.WaitLeader(t)
	c.StopMember(l)
	c.mu.Lock()
	running := 0
	for _, m := range c.members {
		if m.srv != nil {
			running++
		}
	}
	quorum := running > len(c.members)/2
	c.mu.Unlock()
	if quorum {
		c.WaitLeader(t)
	}
	return l
}

// Wipe replaces the store of a single-member cluster by an empty one: it
// stops the member, deletes its data directory and starts a brand-new etcd
// with a new, empty directory on the same ports. Clients that stay connected
// (they reconnect by themselves) then see revisions start over from 1, lower
// than before, and none of the old keys, as after the store was rebuilt from
// scratch or restored from an older snapshot. The new store has the same
// member and cluster IDs as the old one, and authentication is off again.
func (c *Cluster) Wipe(t testing.TB) {
	t.Helper()
	m, err := func() (*member, error) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if len(c.members) != 1 {
			return nil, fmt.Errorf("only supported for a single-member cluster, this one has %d", len(c.members))
		}
		m := c.members[0]
		if m.srv != nil {
			m.srv.stop()
			m.srv = nil
		}
		// A fresh directory rather than emptying the old one, so that
		// nothing of the old store can possibly survive.
		dir, err := os.MkdirTemp(c.base, m.name+"-")
		if err != nil {
			return nil, err
		}
		if err := os.RemoveAll(m.dir); err != nil {
			return nil, err
		}
		m.dir = dir
		c.authEnabled = false
		return m, c.restartMember(m)
	}()
	if err != nil {
		t.Fatalf("etcdtest: Wipe: %v", err)
	}
	c.waitReady(t, m)
}

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

// isAddrInUse reports whether err comes from binding an address that is
// already taken.
func isAddrInUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) ||
		(err != nil && strings.Contains(err.Error(), "address already in use"))
}
