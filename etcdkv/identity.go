package etcdkv

import (
	"container/list"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/watchcache/watchcache"
)

// tokenPrefix starts the Partition.Token of identities issued by Login:
// tokenPrefix, the password's fingerprint, ":", the user name.
const tokenPrefix = "etcd-user:"

// partitionOf is the Partition of user with the password of fingerprint fp.
func partitionOf(user, fp string) watchcache.Partition {
	return watchcache.Partition{Token: tokenPrefix + fp + ":" + user}
}

// parsePartition returns the user and fingerprint of a Partition.Token that
// partitionOf made; ok is false for any other.
func parsePartition(token string) (user, fp string, ok bool) {
	rest, ok := strings.CutPrefix(token, tokenPrefix)
	if !ok {
		return "", "", false
	}
	fp, user, ok = strings.Cut(rest, ":")
	return user, fp, ok && len(fp) == fingerprintLen
}

// fingerprintLen is the length of a password's fingerprint in a Partition:
// 16 hex digits of its keyed hash, which tell passwords apart without
// revealing them (the key is the source's own, random).
const fingerprintLen = 16

// identity is an etcd user as the source talks to etcd for it: its
// credentials and its current token, over the source's one connection (see
// token.go). The source's own identity has user Config.Username (or "" and
// no password: anonymous).
type identity struct {
	s        *Source
	user     string
	password string // renews the token; "" for an anonymous identity
	hash     []byte // keyed hash of the password; nil for the own identity
	fp       string // the hash's fingerprint in the identity's Partition

	probe  revisionProbe // shared by every entry read with this identity
	access accessChecker // batches the access checks of its entries

	tokenMu  sync.Mutex // protects the fields below
	token    string
	renewing *renewCall // the renewal in flight, if any

	// Guarded by Source.mu.
	refs       int           // requests in flight and entry watches using it
	lastUsed   time.Time     // end of the last use, for IdentityIdleTTL
	verifiedAt time.Time     // last time etcd accepted the password
	revoked    bool          // etcd rejected its credentials, or a new password replaced them
	lru        *list.Element // its place in Source.lru while pooled; nil once out of the pool
}

// Login checks user's password with etcd and returns the Partition that
// requests made as that user carry. Entries are partitioned by it, so
// users never share cached data. Each user's identity (its credentials and
// etcd token) is made on the first Login, reused by later ones that present
// the same password, and dropped after Config.IdentityIdleTTL unused or
// when more than Config.MaxIdentities are held (least recently used
// first).
//
// A Partition names the password too: when the password changes, a Login
// with the new one returns another Partition, and the old one is refused
// with ErrUnknownIdentity from then on, as are the entries made with it
// (their watchers get a fatal ErrUnknownIdentity, or ErrAuthFailed if etcd
// rejected the old password first). Sessions opened with a password never
// go on with another's credentials.
//
// A wrong password, an unknown user or an empty one fail with an error
// wrapping ErrAuthFailed, and never reuse the identity (or the cached
// data) of a Login that succeeded: passwords are compared as keyed hashes
// in constant time, and a different one is checked with etcd. Within
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
	now := time.Now() // before etcd is asked: a verification after it supersedes this one
	fp := hex.EncodeToString(hash[:fingerprintLen/2])
	p := partitionOf(user, fp)

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return watchcache.Partition{}, ErrClosed
	}
	if id := s.pool[user]; id != nil && hmac.Equal(id.hash, hash) && s.cfg.LoginTTL > 0 && now.Sub(id.verifiedAt) < s.cfg.LoginTTL {
		s.touchLocked(id, now)
		s.mu.Unlock()
		return p, nil
	}
	s.mu.Unlock()

	// One Authenticate checks the password and gives the identity its
	// token; a wrong password costs one request, not a connection.
	actx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	resp, err := s.conn.Authenticate(actx, user, password)
	cancel()
	switch {
	case errors.Is(err, rpctypes.ErrAuthNotEnabled):
		// Not remembered: auth may be turned on at any time, and a Login
		// after that must check the password. etcd answers this at once,
		// without hashing anything.
		return watchcache.Partition{}, nil
	case err != nil:
		err = wrapErr("login as "+strconv.Quote(user), err)
		if errors.Is(err, ErrAuthFailed) {
			// If this password was good before, it no longer is (changed
			// in etcd): the identity made with it must go too.
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
	defer s.mu.Unlock()
	if s.closed {
		return watchcache.Partition{}, ErrClosed
	}
	if id := s.pool[user]; id != nil && hmac.Equal(id.hash, hash) {
		id.verifiedAt = verified
		s.touchLocked(id, verified)
		id.tokenMu.Lock()
		id.token = resp.Token // the newest token is good for longest
		id.tokenMu.Unlock()
		return p, nil
	}
	if old := s.pool[user]; old != nil {
		if old.verifiedAt.After(now) {
			// Another password was verified after this Login asked etcd:
			// this answer may predate a password change, so it proves
			// nothing now.
			return watchcache.Partition{}, &etcdError{op: "login as " + strconv.Quote(user), class: ErrAuthFailed,
				err: errors.New("another password was accepted since; try again")}
		}
		// The password changed: the old identity's Partition, and every
		// entry made with it, are refused from now on.
		s.revokeLocked(old)
	}
	id := &identity{s: s, user: user, password: password, hash: hash, fp: fp, token: resp.Token, verifiedAt: verified, lastUsed: verified}
	s.pool[user] = id
	id.lru = s.lru.PushFront(id)
	s.trimPoolLocked()
	return p, nil
}

func (s *Source) hashPassword(user, password string) []byte {
	m := hmac.New(sha256.New, s.secret)
	m.Write([]byte(user))
	m.Write([]byte{0})
	m.Write([]byte(password))
	return m.Sum(nil)
}

// touchLocked records a use of the pooled identity id at now.
func (s *Source) touchLocked(id *identity, now time.Time) {
	id.lastUsed = now
	if id.lru != nil {
		s.lru.MoveToFront(id.lru)
	}
}

// trimPoolLocked drops the least recently used identities while the pool
// holds more than Config.MaxIdentities. A dropped identity that cache
// entries still use stays theirs (their watches carry its token, and
// MaxEntries bounds them); new requests for its Partition need a Login.
func (s *Source) trimPoolLocked() {
	for len(s.pool) > s.cfg.MaxIdentities && s.lru.Len() > 0 {
		s.unpoolLocked(s.lru.Back().Value.(*identity))
	}
}

// acquire returns the identity of p for one use, which the caller ends
// with release. It fails with ErrUnknownIdentity for a Partition that
// Login did not issue, whose identity was dropped, or whose password is no
// longer the user's.
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
		user, fp, ok := parsePartition(p.Token)
		if id = s.pool[user]; !ok || id == nil || id.fp != fp {
			return nil, ErrUnknownIdentity
		}
	}
	id.refs++
	s.touchLocked(id, time.Now())
	return id, nil
}

// release ends a use of id that acquire began.
func (s *Source) release(id *identity) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id.refs--
	id.lastUsed = time.Now()
}

// reacquire is acquire for an identity an entry already used, which may
// have left the pool since (idle, or beyond MaxIdentities): the entry goes
// on with it unless its credentials were revoked.
func (s *Source) reacquire(id *identity) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if id.revoked || s.closed {
		return false
	}
	id.refs++
	return true
}

// stale reports whether id's credentials were revoked: entries using it
// read again, with the identity their Partition names now, if any (the
// same password, verified again).
func (s *Source) stale(id *identity) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return id.revoked || s.closed
}

// rejected is called when etcd rejected id's credentials: the identity
// leaves the pool, so that the next Login checks the password with etcd,
// and requests for it fail with ErrUnknownIdentity until then.
func (s *Source) rejected(id *identity) {
	if id.hash == nil {
		return // the own identity stays: its configuration is what it is
	}
	s.mu.Lock()
	if id.revoked {
		s.mu.Unlock()
		return
	}
	s.revokeLocked(id)
	s.mu.Unlock()
	s.log.Warn("etcdkv: etcd rejected the credentials of an identity; it must log in again", "user", id.user)
}

// unpoolLocked takes id out of the pool: a request for its Partition
// needs a Login again. Entries that use it carry on with it.
func (s *Source) unpoolLocked(id *identity) {
	if s.pool[id.user] == id {
		delete(s.pool, id.user)
	}
	if id.lru != nil {
		s.lru.Remove(id.lru)
		id.lru = nil
	}
}

// revokeLocked takes id out of the pool for good: entries that use it
// fail with ErrUnknownIdentity at their next fetch, unless the same
// password was verified again meanwhile (a new identity with the same
// Partition).
func (s *Source) revokeLocked(id *identity) {
	s.unpoolLocked(id)
	id.revoked = true
}

// janitor drops identities unused for IdentityIdleTTL. Close stops it.
func (s *Source) janitor() {
	every := max(s.cfg.IdentityIdleTTL/2, 100*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.stopJan:
			return
		case now := <-t.C:
			s.mu.Lock()
			n := 0
			for e := s.lru.Back(); e != nil; {
				id := e.Value.(*identity)
				e = e.Prev()
				if now.Sub(id.lastUsed) <= s.cfg.IdentityIdleTTL {
					break // the rest were used more recently
				}
				if id.refs == 0 {
					s.unpoolLocked(id)
					n++
				}
			}
			s.mu.Unlock()
			if n > 0 {
				s.log.Debug("etcdkv: dropped idle identities", "count", n)
			}
		}
	}
}
