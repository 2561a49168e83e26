package etcdtest

import (
	"fmt"
	"os"
	"testing"
	"time"
)

// Changing a running cluster: stopping, restarting and killing members,
// finding the leader, wiping the store.

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
