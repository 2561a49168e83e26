package etcdkv

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/watchcache/watchcache"
)

// tokenPrefix starts the Partition.Token of identities issued by Login.
const tokenPrefix = "etcd-user:"

// identity is an etcd user and the client that is logged in as it. The
// source's own identity has user Config.Username (or "" for anonymous).
type identity struct {
	user string
	hash []byte // keyed hash of the password the client logged in with; nil for the own identity
	cli  *clientv3.Client

	probe revisionProbe // shared by every entry read with this identity

	// Guarded by Source.mu.
	refs       int       // requests in flight and entry watches using cli
	lastUsed   time.Time // end of the last use, for IdentityIdleTTL
	verifiedAt time.Time // last time etcd accepted the password
	retired    bool      // out of the pool: cli closes when refs drops to 0
}

// Login checks user's password with etcd and returns the Partition that
// requests made as that user carry. Entries are partitioned by it, so
// users never share cached data. Each user has one etcd client, made on
// the first Login, reused by later ones that present the same password,
// and closed after Config.IdentityIdleTTL unused.
//
// A wrong password, an unknown user or an empty one fail with an error
// wrapping ErrAuthFailed, and never reuse the client (or the cached data)
// of a Login that succeeded: passwords are compared as keyed hashes in
// constant time, and a different one is checked with etcd. Within
// Config.LoginTTL a repeated Login with the same password is answered
// without asking etcd.
//
// When etcd's authentication is off, every user is anonymous: Login
// returns the zero Partition, the source's own identity.
//
// Only Partitions returned by Login (and the zero Partition) reach etcd;
// the caller must not forge others, and must Login before each use of a
// Partition on behalf of a client it has not authenticated otherwise.
func (s *Source) Login(ctx context.Context, user, password string) (watchcache.Partition, error) {
	if user == "" || password == "" {
		return watchcache.Partition{}, &etcdError{op: "login", class: ErrAuthFailed, err: errors.New("empty user name or password")}
	}
	hash := s.hashPassword(user, password)
	now := time.Now()
	p := watchcache.Partition{Token: tokenPrefix + user}

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return watchcache.Partition{}, ErrClosed
	}
	if now.Before(s.authOff) {
		s.mu.Unlock()
		return watchcache.Partition{}, nil
	}
	if id := s.pool[user]; id != nil && hmac.Equal(id.hash, hash) && s.cfg.LoginTTL > 0 && now.Sub(id.verifiedAt) < s.cfg.LoginTTL {
		id.lastUsed = now
		s.mu.Unlock()
		return p, nil
	}
	own := s.own
	s.mu.Unlock()

	// Check the password on the connection the source already has: a
	// wrong one costs one request, not a new connection.
	actx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	_, err := own.cli.Authenticate(actx, user, password)
	cancel()
	switch {
	case errors.Is(err, rpctypes.ErrAuthNotEnabled):
		s.mu.Lock()
		s.authOff = time.Now().Add(max(s.cfg.LoginTTL, 0))
		s.mu.Unlock()
		return watchcache.Partition{}, nil
	case err != nil:
		err = wrapErr("login as "+strconv.Quote(user), err)
		if errors.Is(err, ErrAuthFailed) {
			// If this password was good before, it no longer is (changed
			// in etcd): the client made with it must go too.
			s.mu.Lock()
			id := s.pool[user]
			s.mu.Unlock()
			if id != nil && hmac.Equal(id.hash, hash) {
				s.rejected(id)
			}
		}
		return watchcache.Partition{}, err
	}

	verified := time.Now()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return watchcache.Partition{}, ErrClosed
	}
	if id := s.pool[user]; id != nil && hmac.Equal(id.hash, hash) {
		id.verifiedAt, id.lastUsed = verified, verified
		s.mu.Unlock()
		return p, nil
	}
	s.mu.Unlock()

	cli, err := s.newClient(user, password)
	if err != nil {
		return watchcache.Partition{}, wrapErr("login as "+strconv.Quote(user), err)
	}
	id := &identity{user: user, hash: hash, cli: cli, verifiedAt: verified, lastUsed: verified}

	var closeNow []*identity
	s.mu.Lock()
	switch old := s.pool[user]; {
	case s.closed:
		s.mu.Unlock()
		s.closeClients([]*identity{id})
		return watchcache.Partition{}, ErrClosed
	case old != nil && hmac.Equal(old.hash, hash):
		// A concurrent Login with the same password won the race.
		old.verifiedAt, old.lastUsed = verified, verified
		closeNow = append(closeNow, id)
	default:
		if old != nil {
			// The password changed: each entry moves to the new client
			// at its next fetch (see fetchRange).
			closeNow = s.retireLocked(old, closeNow)
		}
		s.pool[user] = id
		s.open[id] = struct{}{}
	}
	s.mu.Unlock()
	s.closeClients(closeNow)
	return p, nil
}

func (s *Source) hashPassword(user, password string) []byte {
	m := hmac.New(sha256.New, s.secret)
	m.Write([]byte(user))
	m.Write([]byte{0})
	m.Write([]byte(password))
	return m.Sum(nil)
}

// acquire returns the identity of p for one use, which the caller ends
// with release. It fails with ErrUnknownIdentity for a Partition that
// Login did not issue or whose client is gone.
func (s *Source) acquire(p watchcache.Partition) (*identity, error) {
	if p.Datacenter != "" {
		return nil, invalidf("partition datacenter %q: etcdkv serves one cluster and has no datacenters", p.Datacenter)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	id := s.own
	if p.Token != "" {
		user, ok := strings.CutPrefix(p.Token, tokenPrefix)
		if id = s.pool[user]; !ok || id == nil {
			return nil, ErrUnknownIdentity
		}
	}
	id.refs++
	id.lastUsed = time.Now()
	return id, nil
}

// release ends a use of id that acquire began.
func (s *Source) release(id *identity) {
	s.mu.Lock()
	id.refs--
	id.lastUsed = time.Now()
	var closeNow []*identity
	if id.retired && id.refs == 0 {
		if _, ok := s.open[id]; ok {
			delete(s.open, id)
			closeNow = append(closeNow, id)
		}
	}
	s.mu.Unlock()
	s.closeClients(closeNow)
}

// stale reports whether id was replaced or dropped: entries using it
// should move to the identity's current client.
func (s *Source) stale(id *identity) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return id.retired || s.closed
}

// rejected is called when etcd rejected id's credentials: the identity
// leaves the pool, so that the next Login checks the password with etcd,
// and requests for it fail with ErrUnknownIdentity until then.
func (s *Source) rejected(id *identity) {
	if id.hash == nil {
		return // the own identity stays: its configuration is what it is
	}
	s.mu.Lock()
	if id.retired {
		s.mu.Unlock()
		return
	}
	closeNow := s.retireLocked(id, nil)
	s.mu.Unlock()
	s.closeClients(closeNow)
	s.log.Warn("etcdkv: etcd rejected the credentials of an identity; it must log in again", "user", id.user)
}

// retireLocked takes id out of the pool; its client is appended to
// closeNow if no one uses it, and closed by the last release otherwise.
func (s *Source) retireLocked(id *identity, closeNow []*identity) []*identity {
	if s.pool[id.user] == id {
		delete(s.pool, id.user)
	}
	id.retired = true
	if _, ok := s.open[id]; ok && id.refs == 0 {
		delete(s.open, id)
		closeNow = append(closeNow, id)
	}
	return closeNow
}

// janitor closes the clients of identities unused for IdentityIdleTTL.
// Close stops it.
func (s *Source) janitor() {
	defer s.janitorW.Done()
	every := max(s.cfg.IdentityIdleTTL/2, 100*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.stopJan:
			return
		case now := <-t.C:
			s.mu.Lock()
			var closeNow []*identity
			for _, id := range s.pool {
				if id.refs == 0 && now.Sub(id.lastUsed) > s.cfg.IdentityIdleTTL {
					closeNow = s.retireLocked(id, closeNow)
				}
			}
			s.mu.Unlock()
			for _, id := range closeNow {
				s.log.Debug("etcdkv: closing the client of an idle identity", "user", id.user)
			}
			s.closeClients(closeNow)
		}
	}
}
