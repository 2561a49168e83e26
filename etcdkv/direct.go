package etcdkv

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/watchcache/watchcache"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/connectivity"
)

// ReadKey is a consistent read of req's key, for callers that must see the
// store's current state (Consul's ?consistent, Cache-Control:
// must-revalidate): it reflects every write completed before it began. It
// is served from the cache once the entry is confirmed to have caught up
// with the store's revision, which one linearizable request shared by
// every consistent read of the identity in flight tells, and from etcd
// directly otherwise (consistent.go). The index follows the kind's rules.
func (k *Kinds) ReadKey(ctx context.Context, req watchcache.Request) (Key, watchcache.ResultMeta, error) {
	sp, err := parseKeyKey(req.Key)
	if err != nil {
		return Key{}, watchcache.ResultMeta{}, err
	}
	return consistentRead(ctx, k.s, k.Key, sp, deriveKey, req)
}

// ReadPrefix is ReadKey for a prefix request.
func (k *Kinds) ReadPrefix(ctx context.Context, req watchcache.Request) (Prefix, watchcache.ResultMeta, error) {
	sp, err := parsePrefixKey(req.Key)
	if err != nil {
		return Prefix{}, watchcache.ResultMeta{}, err
	}
	return consistentRead(ctx, k.s, k.Prefix, sp, derivePrefix, req)
}

// ReadKeys is ReadKey for a keys request.
func (k *Kinds) ReadKeys(ctx context.Context, req watchcache.Request) (KeyList, watchcache.ResultMeta, error) {
	sp, err := parseKeysKey(req.Key)
	if err != nil {
		return KeyList{}, watchcache.ResultMeta{}, err
	}
	return consistentRead(ctx, k.s, k.Keys, sp, deriveKeys, req)
}

// Health reports whether etcd answers: it asks for a member's status on
// the source's own connection, whose balancer skips members it cannot
// reach (so one member down does not fail it), and returns that member's
// view of the store's revision and leader, with the cluster's members.
//
// When no member answers, the error says why, endpoint by endpoint (a name
// that does not resolve, a refused connection, TLS), rather than the
// client's "context deadline exceeded". When the source's own credentials
// have not been accepted yet, Health logs in, and an error says if etcd
// refuses them.
func (s *Source) Health(ctx context.Context) (Health, error) {
	if s.isClosed() {
		return Health{}, ErrClosed
	}
	// Half of the caller's time at most, so that the other half can tell
	// why etcd did not answer.
	timeout := s.cfg.RequestTimeout
	if d, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(d)/2)
	}
	if s.conn.ActiveConnection().GetState() == connectivity.TransientFailure {
		// No member is reachable now: say why at once rather than after
		// the client's retries (a readiness probe may not wait that long).
		dctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
		cause := s.diagnose(dctx)
		cancel()
		if cause != nil {
			return Health{}, wrapErr("status", cause)
		}
	}
	sctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	mt := clientv3.NewMaintenanceFromMaintenanceClient(pb.NewMaintenanceClient(s.conn.ActiveConnection()), s.conn)
	st, err := mt.Status(s.own.ctx(sctx), "")
	if err != nil && s.own.password == "" && errors.Is(rpctypes.Error(err), rpctypes.ErrUserEmpty) {
		return Health{}, wrapErr("status", fmt.Errorf("etcd's authentication is on and requires a user even for its status; give the source its own (Config.Username, with no permissions needed): %w", err))
	}
	if err != nil {
		dctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
		defer cancel()
		if cause := s.diagnose(dctx); cause != nil {
			err = fmt.Errorf("%w: %w", err, cause)
		}
		return Health{}, wrapErr("status", err)
	}
	h := Health{Revision: st.Header.GetRevision(), Leader: st.Leader != 0}
	// The members as the member that answered knows them, without asking
	// the leader: a cluster without one still lists its peers.
	ml, err := s.conn.MemberList(s.own.ctx(sctx), clientv3.WithSerializable())
	if err != nil {
		return Health{}, wrapErr("member list", err)
	}
	for _, m := range ml.Members {
		if m.ID == st.Header.GetMemberId() && len(m.ClientURLs) > 0 {
			h.Endpoint = m.ClientURLs[0]
		}
		if m.IsLearner || len(m.PeerURLs) == 0 {
			continue // not a voter, or not started yet
		}
		addr := peerAddr(m.PeerURLs[0])
		h.Peers = append(h.Peers, addr)
		if m.ID == st.Leader {
			h.LeaderAddr = addr
		}
	}
	if h.Endpoint == "" {
		h.Endpoint = fmt.Sprintf("member %x", st.Header.GetMemberId())
	}
	return h, nil
}

// peerAddr is the host:port of a member's peer URL, as Consul names its
// raft peers; the URL itself if it has no host.
func peerAddr(u string) string {
	if pu, err := url.Parse(u); err == nil && pu.Host != "" {
		return pu.Host
	}
	return u
}

// Health is what Source.Health found.
type Health struct {
	Endpoint string // the member that answered
	Revision int64  // the store's revision as that member knows it
	Leader   bool   // the member knows a leader

	// LeaderAddr is the leader's peer address (host:port), "" when the
	// member knows none; Peers are every voting member's.
	LeaderAddr string
	Peers      []string
}
