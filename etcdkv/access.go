package etcdkv

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Access after revocation.
//
// etcd checks a watch's permission once, when the watch is created; after
// a user loses access (a permission or role revoked, the user or role
// deleted, the password changed) the watch goes on streaming. An entry
// therefore confirms its identity's access itself before what it learned
// from the watch reaches anyone:
//
//   - Each change. With AccessCheckStrict (the default), a change from the
//     watch is published only after a count-only linearizable read of the
//     entry's key or range by the entry's identity succeeds. The read starts
//     after the change was seen, and a linearizable read sees every auth
//     change committed before it began, so a change written after a
//     revocation returned is never published: the read fails with
//     "permission denied" (or the identity's token cannot be renewed) and the
//     entry publishes that, fatally, instead. A read confirms only the
//     changes seen before it began; one the watch brings while it runs
//     waits for the next (watchState.confirm). Checks of one identity are
//     batched: entries that changed while a check was in flight share the
//     next one (one read-only transaction of count-only ranges).
//   - Each auth change. A watcher (watchAuth) asks etcd for its auth
//     revision every AuthCheckInterval (at most 1 s). When it moved, the
//     auth epoch is bumped and every entry confirms access at once (its
//     wait wakes, or its next wait begins so): if access is gone it
//     publishes the denial, which cached reads then return and which ends
//     its watchers' streams. Until then, cached reads return a value written
//     before the revocation at most. With AccessCheckBounded this is the
//     only check: a change is confirmed only if the epoch moved since the
//     entry's last confirmation, so for up to AuthCheckInterval after a
//     revocation its writes may still reach the identity (up to twice that
//     when the next poll fails: a poll is trusted for two intervals, and
//     then every change is confirmed, as in strict mode).
//
// A value read from etcd (an entry's first read, a re-read) is its own
// check: the read was made with the identity's token.

// authState is what the source knows of etcd's auth store.
type authState struct {
	// epoch counts the auth store changes the source noticed; a value
	// confirmed in an older epoch must be confirmed again.
	epoch atomic.Uint64
	// off is set while etcd reports authentication disabled: there is no
	// access to lose, so nothing is checked.
	off atomic.Bool
	// checks counts the check requests sent to etcd, for benchmarks;
	// overlapped the batches started while another of the identity's was
	// in flight.
	checks, overlapped atomic.Int64
	// polled is when the last successful poll of the auth status began,
	// in Unix nanoseconds; 0 before the first.
	polled atomic.Int64

	mu      sync.Mutex    // protects changed
	changed chan struct{} // closed and replaced when epoch moves
}

func (a *authState) init() {
	a.changed = make(chan struct{})
}

// current returns the epoch and the channel its end closes.
func (a *authState) current() (uint64, <-chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.epoch.Load(), a.changed
}

// fresh reports whether a poll that began within d succeeded.
func (a *authState) fresh(d time.Duration) bool {
	t := a.polled.Load()
	return t != 0 && time.Since(time.Unix(0, t)) <= d
}

// bump starts a new epoch.
func (a *authState) bump() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.epoch.Add(1)
	close(a.changed)
	a.changed = make(chan struct{})
}

// watchAuth polls etcd's auth status and bumps the epoch when the auth
// revision or the enabled flag moved. AuthStatus goes through Raft, so it
// is asked once per interval for the whole source, not per entry. It is
// asked without a token: it needs none, and the source's own credentials
// may be the ones that were revoked. A failed poll changes nothing but the
// freshness needsCheck relies on: while etcd is unreachable no new value
// can arrive either, and the next successful poll tells what changed.
func (s *Source) watchAuth() {
	t := time.NewTicker(s.cfg.AuthCheckInterval)
	defer t.Stop()
	var (
		known   bool
		enabled bool
		rev     uint64
		failing bool
	)
	for {
		start := time.Now()
		ctx, cancel := context.WithTimeout(s.stopCtx, s.cfg.RequestTimeout)
		resp, err := s.conn.AuthStatus(ctx)
		cancel()
		switch {
		case err != nil:
			if !failing && s.auth.polled.Load() != 0 {
				s.log.Warn("etcdkv: cannot ask etcd whether its auth store changed; confirming every change until it answers", "error", err)
			}
			failing = true
		default:
			failing = false
			s.auth.polled.Store(start.UnixNano())
			if !known || resp.Enabled != enabled || resp.AuthRevision != rev {
				if known {
					s.log.Info("etcdkv: etcd's auth store changed; confirming every identity's access again",
						"enabled", resp.Enabled, "auth_revision", resp.AuthRevision)
				}
				known, enabled, rev = true, resp.Enabled, resp.AuthRevision
				s.auth.off.Store(!enabled)
				s.auth.bump()
			}
		}
		select {
		case <-t.C:
		case <-s.stopJan:
			return
		}
	}
}

// authEnabled reports whether etcd's authentication is on: from the last
// poll if it is fresh, by asking etcd otherwise.
func (s *Source) authEnabled(ctx context.Context) (bool, error) {
	if s.auth.fresh(2 * s.cfg.AuthCheckInterval) {
		return !s.auth.off.Load(), nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	resp, err := s.conn.AuthStatus(ctx)
	if err != nil {
		return false, wrapErr("asking etcd whether its authentication is on", err)
	}
	return resp.Enabled, nil
}

// needsCheck reports whether an entry last confirmed in epoch verified
// must confirm again before it delivers its value; change says the value
// holds changes from a watch that were never confirmed.
//
// Strict mode confirms every change, even while etcd last said its auth
// was off: auth may have been turned on (after a revocation) since that
// poll. Otherwise a value is confirmed when the epoch moved, and every
// change is while the source cannot tell whether it did (no poll
// succeeded for two intervals): the bound of AccessCheckBounded then falls
// back to strict rather than to no check at all.
func (s *Source) needsCheck(verified uint64, change bool) bool {
	switch {
	case change && s.cfg.AccessCheck == AccessCheckStrict:
		return true
	case change && !s.auth.fresh(2*s.cfg.AuthCheckInterval):
		return true
	case s.auth.off.Load():
		return false
	}
	return verified != s.auth.epoch.Load()
}

// accessChecker batches the access checks of one identity's entries and
// consistent reads.
//
// A check serves the requests made before it started. With one check in
// flight at a time, the requests that arrive meanwhile wait for it to end
// and then for their own: one and a half round trips on average, and two
// under load, as clients whose answers came together send their next
// requests together, just after the next check left. So another check
// starts while some are in flight once checkBatchMin requests wait and
// minCheckGap passed since the last one started (up to maxChecksInFlight
// at once), which bounds the checks under load. Requests that do not
// start one wait for the checks in flight; the last of them to end starts
// theirs, so requests wait only while a check is in flight.
type accessChecker struct {
	mu        sync.Mutex // protects the fields below
	pending   []*accessReq
	inFlight  int   // batches being checked; never 0 while pending is not empty
	lastStart int64 // when the last batch started (monoNow)
}

// With 50 clients reading one key (BenchmarkAgentRead), a minimum of 16
// gave 0.08 checks per consistent read; 10 gave 0.11, 24 gave 0.064 and
// fewer reads per second, one check at a time 0.05 and 25-30 % fewer.
// minCheckGap keeps a burst (100 entries of one identity changed by one
// transaction, BenchmarkEtcdAccessCheck) from starting a check per 16 of
// them: 8.5 checks per burst without it, 4.7-5.4 with it, as many as one
// check at a time (4.6-4.9 in the same session); consistent reads then
// take 0.06 checks per read, as many reads per second with etcd in a
// process of its own, 10 % fewer with etcd in the agent's.
const (
	checkBatchMin     = 16
	maxChecksInFlight = 8
	minCheckGap       = 500 * time.Microsecond
)

var monoBase = time.Now()

// monoNow is a monotonic clock reading, in nanoseconds.
func monoNow() int64 { return int64(time.Since(monoBase)) }

// add queues r at time now (monoNow) and returns the batch its caller must
// check now, if any: every request queued, r included. overlap says other
// batches are in flight.
func (c *accessChecker) add(r *accessReq, now int64) (batch []*accessReq, overlap bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pending = append(c.pending, r)
	if c.inFlight > 0 && (len(c.pending) < checkBatchMin || c.inFlight >= maxChecksInFlight || now-c.lastStart < int64(minCheckGap)) {
		return nil, false
	}
	c.inFlight++
	c.lastStart = now
	return c.take(), c.inFlight > 1
}

// next is called at time now when a batch was checked: it returns the
// batch its caller must check next, or nil when it is done.
func (c *accessChecker) next(now int64) []*accessReq {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.pending) == 0 || (c.inFlight > 1 && len(c.pending) < checkBatchMin) {
		c.inFlight--
		return nil
	}
	c.lastStart = now
	return c.take()
}

func (c *accessChecker) take() []*accessReq {
	batch := c.pending
	c.pending = nil
	return batch
}

// accessReq is one range to check. rev and err are written before done is
// closed and read only after.
type accessReq struct {
	sp   spec
	done chan struct{}
	rev  int64 // the store's revision when the check ran
	err  error
}

// maxCheckOps bounds the ranges of one check transaction; etcd refuses
// transactions of more than --max-txn-ops (128 by default) operations.
const maxCheckOps = 64

// checkAccess confirms that id may read sp now: nil, or an error wrapping
// ErrPermissionDenied or ErrAuthFailed when it may not, or another error
// when etcd could not tell. The check starts after the call: whatever the
// caller saw before is covered. It returns the epoch the check began in and
// the store's revision when it ran, which every write completed before the
// call is at or below (the check is a linearizable read).
func (s *Source) checkAccess(ctx context.Context, id *identity, sp spec) (uint64, int64, error) {
	epoch := s.auth.epoch.Load()
	r := &accessReq{sp: sp, done: make(chan struct{})}
	if batch, overlap := id.access.add(r, monoNow()); batch != nil {
		if overlap {
			s.auth.overlapped.Add(1)
		}
		if !s.goBackground(func() { s.runChecks(id, batch) }) {
			// Closed: so are the requests queued behind this one.
			for ; batch != nil; batch = id.access.next(monoNow()) {
				for _, r := range batch {
					r.err = ErrClosed
					close(r.done)
				}
			}
		}
	}
	select {
	case <-r.done:
		return epoch, r.rev, r.err
	case <-ctx.Done():
		return epoch, 0, ctx.Err()
	}
}

// runChecks checks batch, and then the batches next hands it, on a
// goroutine of its own (the callers wait on their results, each bounded
// by its context).
func (s *Source) runChecks(id *identity, batch []*accessReq) {
	for ; batch != nil; batch = id.access.next(monoNow()) {
		for len(batch) > 0 {
			n := min(len(batch), maxCheckOps)
			s.checkBatch(id, batch[:n])
			batch = batch[n:]
		}
	}
}

// checkBatch checks the ranges of reqs with one read-only transaction. If
// etcd denies it, some range is denied: each request is checked on its own
// to tell which.
func (s *Source) checkBatch(id *identity, reqs []*accessReq) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.RequestTimeout)
	defer cancel()
	// One operation per distinct range: concurrent consistent reads of a
	// hot key share it.
	ops := make([]clientv3.Op, 0, len(reqs))
	seen := make(map[spec]bool, len(reqs))
	for _, r := range reqs {
		if !seen[r.sp] {
			seen[r.sp] = true
			ops = append(ops, r.sp.checkOp())
		}
	}
	s.auth.checks.Add(1)
	resp, err := s.conn.Txn(id.ctx(ctx)).Then(ops...).Commit()
	if h := s.testHookAfterCheck; h != nil {
		h()
	}
	if err != nil && len(reqs) > 1 && errors.Is(accessClass(err), ErrPermissionDenied) {
		for _, r := range reqs {
			s.auth.checks.Add(1)
			resp, err := s.conn.Txn(id.ctx(ctx)).Then(r.sp.checkOp()).Commit()
			if err == nil {
				r.rev = resp.Header.Revision
			}
			r.err = s.failed(id, wrapErr("confirming access to "+r.sp.describe(), err))
			close(r.done)
		}
		return
	}
	var rev int64
	if err != nil {
		err = s.failed(id, wrapErr("confirming access", err))
	} else {
		rev = resp.Header.Revision
	}
	for _, r := range reqs {
		r.rev, r.err = rev, err
		close(r.done)
	}
}

// checkOp is a count-only read of sp's key or range: etcd checks the
// identity's permission for it, and answers with little more than a
// header.
func (sp spec) checkOp() clientv3.Op {
	if sp.isRange() {
		return clientv3.OpGet(sp.start(), clientv3.WithRange(sp.end()), clientv3.WithCountOnly())
	}
	return clientv3.OpGet(sp.start(), clientv3.WithCountOnly())
}
