package etcdkv

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Reads from etcd for an entry's state: the range itself, and the store's
// revision.

// checkRevision returns the store's current revision, from a probe that
// started after the state observed its revision, within the last interval,
// after the state's last failure and after since (see revisionProbe).
func (st *watchState[V]) checkRevision(ctx context.Context, since time.Time) (int64, error) {
	st.mu.Lock()
	if st.revAt.After(since) {
		since = st.revAt
	}
	if t := time.Now().Add(-st.s.cfg.ResetCheckInterval); t.After(since) {
		since = t
	}
	if st.failedAt.After(since) {
		since = st.failedAt // another entry's probe from before the failure proves nothing
	}
	st.mu.Unlock()
	return st.id.probe.check(ctx, since, func(ctx context.Context) (int64, error) {
		ctx, cancel := context.WithTimeout(ctx, st.s.cfg.RequestTimeout)
		defer cancel()
		resp, err := st.s.conn.Get(st.id.ctx(ctx), st.sp.probeKey(), clientv3.WithCountOnly())
		st.s.outage.note(ctx, err)
		if err != nil {
			return 0, st.s.failed(st.id, wrapErr("checking etcd's revision for "+st.sp.describe(), err))
		}
		return resp.Header.Revision, nil
	})
}

// read reads sp's range (linearizably) with id's client, and returns its
// keys sorted and the store's revision.
func (s *Source) read(ctx context.Context, id *identity, sp spec) ([]Entry, int64, error) {
	if h := s.testHookRead; h != nil {
		if err := h(sp); err != nil {
			return nil, 0, err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	resp, err := s.conn.Get(id.ctx(ctx), sp.start(), sp.readOpts()...)
	s.outage.note(ctx, err)
	if err != nil {
		return nil, 0, s.failed(id, wrapErr("read "+sp.describe(), err))
	}
	kvs := make([]Entry, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		kvs[i] = fromPB(kv, sp.keysOnly()) // etcd returns ranges sorted by key
	}
	return kvs, resp.Header.Revision, nil
}

// failed notes what err says about id, and returns err: credentials that
// etcd rejected take the identity out of the pool.
func (s *Source) failed(id *identity, err error) error {
	switch {
	case s.isClosed():
		return fmt.Errorf("%w (%w)", ErrClosed, err)
	case errors.Is(err, ErrAuthFailed):
		s.rejected(id)
	}
	return err
}
