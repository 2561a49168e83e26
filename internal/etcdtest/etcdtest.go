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

	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/etcdserver/api/rafthttp"
	"go.uber.org/zap"
	"google.golang.org/grpc"
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

// isAddrInUse reports whether err comes from binding an address that is
// already taken.
func isAddrInUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) ||
		(err != nil && strings.Contains(err.Error(), "address already in use"))
}
