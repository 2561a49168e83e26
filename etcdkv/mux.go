package etcdkv

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Watches multiplexed on shared streams.
//
// clientv3 multiplexes the watches of one context's metadata on one gRPC
// stream too, but runs a goroutine and a buffered channel for each watch:
// at 10^5 watched keys that is most of an entry's cost. The source talks
// to etcd's Watch service itself instead, as etcd's gRPC proxy does: one
// stream per identity token (etcd authenticates a stream by the token it
// was opened with), read by one goroutine that hands each response to its
// watch's entry state (watchSink) by watch ID. A watch costs a map entry
// and a small struct; the goroutines are two per stream (the reader and
// gRPC's own), whatever the number of watches, and a third while requests
// wait to be sent: requests are queued, so no caller waits on the
// stream's flow control.
//
// Creating a watch sends a create request with an ID the source chose,
// which etcd uses for the watch. etcd answers every create, in order, with
// a created response (a refused one, permission denied, carries ID -1), so
// answers are matched to creates by order, which the queue keeps, and
// responses to watches by ID. etcd's gRPC proxy is different: it numbers
// the watches of a stream itself, and answers the creates of watches made
// at the same time in the order its own upstream watches start. So a
// stream sends one create at a time until etcd answered one with the ID
// the source chose (verified), and then as many as come; behind the proxy
// it never is, each answer belongs to the one create out, and the watch
// takes the ID the answer gives. The source's IDs start at watchIDBase,
// far from the proxy's, so an answer never looks verified by chance.
// (Behind the proxy a create's request timeout starts when it is sent,
// and a stream whose one create out gets no answer in time drains: it
// takes no more watches, and the creates behind it go on another. The
// proxy also drops progress requests: consistent reads do not wait for
// reports on a stream that was never verified.)
// Cancelling forgets the ID at once, so late responses for it are
// dropped, and tells etcd; a watch cancelled before etcd answered its
// create is cancelled when the answer comes. As a second guard, an
// entry's state takes no event for a key outside its range
// (watchState.watchEvent). Streams are opened with WithRequireLeader: a
// member cut off from its cluster ends them (ErrNoLeader) instead of
// keeping them silently; the client's keepalive ends them with their
// connection when nothing comes back on it (New). When a stream breaks
// every watch on it ends, and each entry reads its range again and
// watches from there, on a new stream. A stream is closed when its last
// watch is cancelled.

// watchIDBase is the first watch ID the source chooses on a stream.
const watchIDBase = 1 << 40

// muxKey names a stream: an identity and the token it was opened with.
type muxKey struct {
	id    *identity
	token string
}

// watchMux is one watch stream and its watches.
type watchMux struct {
	s   *Source
	key muxKey

	mu       sync.Mutex // protects the fields below; taken under Source.muxMu, never the reverse
	stream   pb.Watch_WatchClient
	cancel   context.CancelFunc  // ends the stream
	closed   bool                // no new watches: broken, or closed when it became empty
	watches  map[int64]*muxWatch // the watches etcd created, by their IDs
	creating []*muxWatch         // creates queued and not answered yet, in order
	// deferred holds creates not queued yet: until etcd answered one
	// create with the ID the source chose (verified), a stream has one
	// create out at a time (see the notes above).
	deferred []deferredCreate
	verified bool
	answered bool // etcd created a watch (with the chosen ID or not)
	// headTimer ends the wait for the answer to the one create out of a
	// stream not verified (see headTimedOut); draining is set once it
	// did: the stream takes no more watches, and closes when its last
	// watch is cancelled.
	headTimer *time.Timer
	draining  bool
	nextID    int64 // the next ID to choose
	// queue holds the requests to send, in order. One goroutine sends
	// them (gRPC allows one sender at a time), and runs only while the
	// queue is not empty: no one who creates, cancels or asks for
	// progress waits on the stream's flow control, which a member that
	// stopped reading would never open again (a cache worker closing an
	// entry, a consistent read asking for progress).
	queue   []*pb.WatchRequest
	sending bool // the sending goroutine runs
	// progressSent and progressRecv count the progress requests queued
	// and the reports received. etcd answers progress requests in order
	// (merging some), and a report covers only the watches that existed
	// when etcd took its request: a watch takes reports only once more
	// have come than requests were queued before its create
	// (progressBase), which may skip some but never takes one that
	// predates it.
	progressSent int64
	progressRecv int64
}

// deferredCreate is a create waiting its turn; sent is closed when it is
// queued.
type deferredCreate struct {
	w    *muxWatch
	sent chan struct{}
}

// muxWatch is one watch on a stream.
type muxWatch struct {
	m            *watchMux
	progressBase int64 // progress requests queued before its create (see progressRecv)
	sink         watchSink
	created      chan error // the create's answer; capacity 1

	// Guarded by m.mu. A watch is made (new), queued (its create was
	// queued, or deferred: req waits in m.deferred), live (etcd created it:
	// id is its ID, which etcd chose if it ignored the source's), and ends
	// cancelled (by the source, or etcd ended it).
	id                      int64
	req                     *pb.WatchRequest // the create, until it is queued
	queued, live, cancelled bool
}

// watchSink receives a watch's responses on the stream's goroutine; it
// must not block.
type watchSink interface {
	watchEvent(w *muxWatch, ev muxEvent)
}

// muxEvent is a response for one watch: events, a progress report (no
// events), or its end.
type muxEvent struct {
	events []*mvccpb.Event
	rev    int64 // the response's header revision
	end    bool  // the watch ended; err says why
	err    error
}

var (
	// errMuxClosed is a create on a stream that was closed meanwhile.
	errMuxClosed = errors.New("etcdkv: watch stream closed")
	// errWatchCancelled is a create whose watch was cancelled before its
	// request was queued: its entry's state closed meanwhile.
	errWatchCancelled = errors.New("etcdkv: watch cancelled while it was being created")
)

// watch starts a watch of sp from revision from, with id's token, and
// waits (within ctx) until etcd confirmed it. registered is called with the
// watch before its create is sent, so the sink knows it before any
// response can come.
//
// Opening a stream and etcd's answer to the create are each bounded by
// RequestTimeout; a create deferred behind another (see the notes above)
// starts its timeout when it is queued, not while it waits its turn, and
// goes on another stream if the one ahead of it is never answered
// (headTimedOut).
func (s *Source) watch(ctx context.Context, id *identity, sp spec, from int64, sink watchSink, registered func(*muxWatch)) (*muxWatch, error) {
	for range 3 {
		octx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
		m, err := s.muxFor(octx, id)
		cancel()
		if err != nil {
			if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
				err = errCreateTimeout
			}
			return nil, err
		}
		w, sent, err := m.create(sp, from, sink, registered)
		if err == nil {
			err = s.awaitCreated(ctx, w, sent)
		}
		if errors.Is(err, errMuxClosed) {
			continue // closed, or draining, before the create was sent: use another
		}
		if err != nil {
			return nil, err
		}
		return w, nil
	}
	return nil, errMuxClosed
}

// awaitCreated waits for etcd's answer to w's create, for RequestTimeout
// from when it is queued (sent closes then, if it was deferred).
func (s *Source) awaitCreated(ctx context.Context, w *muxWatch, sent <-chan struct{}) error {
	d := s.cfg.RequestTimeout
	timer := time.NewTimer(d)
	defer timer.Stop()
	timeout := timer.C
	if sent != nil {
		timeout = nil // from when it is queued
	}
	for {
		select {
		case err := <-w.created:
			if err != nil {
				return err
			}
			w.created = nil // answered: the only send is done; a watch is kept for long
			return nil
		case <-sent:
			sent = nil
			timer.Reset(d)
			timeout = timer.C
		case <-timeout:
			w.cancelWatch()
			return errCreateTimeout
		case <-ctx.Done():
			w.cancelWatch()
			return ctx.Err()
		}
	}
}

// errCreateTimeout is a watch that etcd did not confirm within the
// request timeout.
var errCreateTimeout = fmt.Errorf("etcdkv: watch not confirmed in time: %w", context.DeadlineExceeded)

// muxFor returns the open stream of id's current token, opening one if
// needed.
func (s *Source) muxFor(ctx context.Context, id *identity) (*watchMux, error) {
	key := muxKey{id, id.currentToken()}
	s.muxMu.Lock()
	if m := s.muxes[key]; m != nil {
		s.muxMu.Unlock()
		return m, nil
	}
	s.muxMu.Unlock()

	sctx, cancel := context.WithCancel(clientv3.WithRequireLeader(s.stopCtx))
	sctx = id.ctxWithToken(sctx, key.token)
	// The stream outlives ctx, but opening it (which waits while the
	// connection is being made) is bounded by ctx.
	stop := context.AfterFunc(ctx, cancel)
	stream, err := pb.NewWatchClient(s.conn.ActiveConnection()).Watch(sctx)
	if !stop() {
		cancel()
		return nil, ctx.Err()
	}
	if err != nil {
		cancel()
		return nil, s.failed(id, wrapErr("opening a watch stream", err))
	}
	m := &watchMux{s: s, key: key, stream: stream, cancel: cancel, watches: make(map[int64]*muxWatch)}

	s.muxMu.Lock()
	if other := s.muxes[key]; other != nil { // opened meanwhile
		s.muxMu.Unlock()
		cancel()
		return other, nil
	}
	if !s.goBackground(m.recv) {
		s.muxMu.Unlock()
		cancel()
		return nil, ErrClosed
	}
	s.muxes[key] = m
	s.muxMu.Unlock()
	return m, nil
}

// create queues the create request of a watch, or defers it (see the
// notes above) and returns a channel closed when it is queued. A cancel
// while registered runs (the entry's state closing) keeps its create from
// being queued.
func (m *watchMux) create(sp spec, from int64, sink watchSink, registered func(*muxWatch)) (*muxWatch, <-chan struct{}, error) {
	m.mu.Lock()
	if m.closed || m.draining {
		m.mu.Unlock()
		return nil, nil, errMuxClosed
	}
	w := &muxWatch{m: m, sink: sink, created: make(chan error, 1)}
	m.mu.Unlock()
	registered(w) // before etcd can answer
	cr := &pb.WatchCreateRequest{Key: []byte(sp.start()), StartRevision: from}
	if sp.isRange() {
		cr.RangeEnd = []byte(sp.end())
	}
	m.mu.Lock()
	switch {
	case w.cancelled:
		m.mu.Unlock()
		m.closeIfIdle() // it may have been a new stream's only watch
		return nil, nil, errWatchCancelled
	case m.closed || m.draining:
		m.mu.Unlock()
		return nil, nil, errMuxClosed
	}
	if m.nextID == 0 {
		m.nextID = watchIDBase
	}
	w.id = m.nextID
	m.nextID++
	cr.WatchId = w.id
	w.req = &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: cr}}
	w.queued = true
	var start bool
	var sent chan struct{}
	if !m.verified && len(m.creating) > 0 {
		sent = make(chan struct{})
		m.deferred = append(m.deferred, deferredCreate{w, sent})
	} else {
		start = m.sendCreateLocked(w)
	}
	m.mu.Unlock()
	if start {
		m.startSending()
	}
	return w, sent, nil
}

// sendCreateLocked queues w's create, in the order of m.creating, which
// etcd's answers follow. It reports whether the caller must start the
// sending goroutine.
func (m *watchMux) sendCreateLocked(w *muxWatch) bool {
	w.progressBase = m.progressSent
	m.creating = append(m.creating, w)
	if !m.verified {
		m.headTimer = time.AfterFunc(m.s.cfg.RequestTimeout, func() { m.headTimedOut(w) })
	}
	req := w.req
	w.req = nil
	return m.enqueueLocked(req)
}

// nextCreatesLocked queues the deferred creates that may go now: all of
// them once the stream is verified, else the first (once none is out).
// Cancelled ones are answered instead; it returns them, for the caller to
// answer once it released m.mu, and whether to start the sender.
func (m *watchMux) nextCreatesLocked() (cancelled []*muxWatch, start bool) {
	for len(m.deferred) > 0 && (m.verified || len(m.creating) == 0) {
		d := m.deferred[0]
		m.deferred[0] = deferredCreate{}
		m.deferred = m.deferred[1:]
		if d.w.cancelled {
			cancelled = append(cancelled, d.w)
			continue
		}
		start = m.sendCreateLocked(d.w) || start
		close(d.sent)
	}
	if len(m.deferred) == 0 {
		m.deferred = nil
	}
	return cancelled, start
}

// headTimedOut is called when the create w, the one out on a stream that
// is not verified, got no answer within the request timeout (its waiter
// may have left). The creates deferred behind it would wait for good: the
// stream drains. It takes no more watches (it leaves Source.muxes, and
// the deferred creates go on another stream), keeps its live watches, and
// closes with the last of them. A late answer to w is dropped.
func (m *watchMux) headTimedOut(w *muxWatch) {
	s := m.s
	s.muxMu.Lock()
	m.mu.Lock()
	if m.closed || m.draining || len(m.creating) == 0 || m.creating[0] != w {
		m.mu.Unlock()
		s.muxMu.Unlock()
		return // answered, or the stream ended, meanwhile
	}
	m.draining = true
	if s.muxes[m.key] == m {
		delete(s.muxes, m.key)
	}
	w.cancelled = true
	m.creating, m.headTimer = nil, nil
	deferred := m.deferred
	m.deferred = nil
	m.mu.Unlock()
	s.muxMu.Unlock()
	s.log.Warn("etcdkv: no answer to a watch create within the request timeout; its stream takes no more watches",
		"timeout", s.cfg.RequestTimeout, "deferred", len(deferred))
	w.created <- errCreateTimeout
	for _, d := range deferred {
		d.w.created <- fmt.Errorf("etcdkv: watch stream draining: %w", errMuxClosed)
	}
	m.closeIfIdle()
}

// cancelWatch ends w: its responses are dropped from now on. A live watch
// is cancelled with etcd, or its stream closed if it was the last; a
// queued one once etcd answers its create (dispatch).
func (w *muxWatch) cancelWatch() {
	m := w.m
	m.mu.Lock()
	if w.cancelled {
		m.mu.Unlock()
		return // ended already
	}
	w.cancelled = true
	live, id := w.live, w.id
	if live {
		delete(m.watches, id)
	}
	m.mu.Unlock()
	if !live || m.closeIfIdle() {
		return // etcd never created it (yet), or the stream's end cancels it
	}
	m.send(cancelRequest(id))
}

func cancelRequest(id int64) *pb.WatchRequest {
	return &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: id}}}
}

// recv is the stream's goroutine: it reads responses until the stream
// ends, and hands each to its watch.
func (m *watchMux) recv() {
	for {
		resp, err := m.stream.Recv()
		if err != nil {
			m.fail(err)
			return
		}
		m.dispatch(resp)
	}
}

func (m *watchMux) dispatch(resp *pb.WatchResponse) {
	rev := resp.Header.GetRevision()
	m.mu.Lock()
	switch {
	case resp.Created:
		if len(m.creating) == 0 {
			m.mu.Unlock()
			m.s.log.Warn("etcdkv: etcd answered a watch create that was not asked for", "watch_id", resp.WatchId)
			return
		}
		w := m.creating[0]
		m.creating[0] = nil
		m.creating = m.creating[1:]
		if m.headTimer != nil {
			m.headTimer.Stop()
			m.headTimer = nil
		}
		if len(m.creating) == 0 {
			m.creating = nil // let a burst's backing array go
		}
		var err error
		switch {
		case resp.Canceled: // refused
			err = cancelErr(resp)
			w.cancelled = true
		case resp.WatchId != w.id && (m.verified || len(m.creating) > 0):
			// An ID of the server's own while several creates were out:
			// which answer is whose cannot be told.
			m.failWith(w, fmt.Errorf("etcd answered watch create %d with ID %d", w.id, resp.WatchId))
			return
		case m.watches[resp.WatchId] != nil:
			m.failWith(w, fmt.Errorf("etcd gave watch ID %d to two watches of one stream", resp.WatchId))
			return
		case w.cancelled: // by the source, while etcd created it
			m.verified = m.verified || resp.WatchId == w.id
			m.answered = true
			err = errWatchCancelled
		default:
			m.verified = m.verified || resp.WatchId == w.id
			m.answered = true
			w.id, w.live = resp.WatchId, true
			m.watches[w.id] = w
		}
		skipped, start := m.nextCreatesLocked()
		m.mu.Unlock()
		if start {
			m.startSending()
		}
		w.created <- err
		for _, d := range skipped {
			d.created <- errWatchCancelled
		}
		switch {
		case resp.Canceled:
			m.closeIfIdle()
		case err != nil:
			if !m.closeIfIdle() {
				m.send(cancelRequest(resp.WatchId))
			}
		}
		return
	case resp.WatchId == clientv3.InvalidWatchID:
		// A progress report for the whole stream: for the watches it
		// covers (see progressRecv).
		m.progressRecv++
		ws := make([]*muxWatch, 0, len(m.watches))
		for _, w := range m.watches {
			if m.progressRecv > w.progressBase {
				ws = append(ws, w)
			}
		}
		m.mu.Unlock()
		for _, w := range ws {
			w.sink.watchEvent(w, muxEvent{rev: rev})
		}
		return
	}
	w := m.watches[resp.WatchId]
	if w != nil && resp.Canceled {
		delete(m.watches, w.id)
		w.cancelled = true
	}
	m.mu.Unlock()
	if w == nil {
		return // cancelled meanwhile
	}
	ev := muxEvent{events: resp.Events, rev: rev}
	if resp.Canceled {
		ev.end, ev.err = true, cancelErr(resp)
	}
	w.sink.watchEvent(w, ev)
	if resp.Canceled {
		m.closeIfIdle()
	}
}

// closeIfIdle closes the stream if no watch is left on it, created or
// being created (etcd ended or refused the last, or the source cancelled
// it): nothing else would, and a stream of an old token would never be
// used again. It reports whether it closed it.
func (m *watchMux) closeIfIdle() bool {
	s := m.s
	s.muxMu.Lock()
	m.mu.Lock()
	idle := len(m.watches) == 0 && len(m.creating) == 0 && len(m.deferred) == 0 && !m.closed
	if idle {
		m.closed = true
		if s.muxes[m.key] == m {
			delete(s.muxes, m.key)
		}
	}
	m.mu.Unlock()
	s.muxMu.Unlock()
	if idle {
		m.cancel()
	}
	return idle
}

// failWith ends the stream after an error in the answer to w's create,
// which dispatch took off m.creating: w hears of it as the others do. It
// unlocks m.mu.
func (m *watchMux) failWith(w *muxWatch, err error) {
	w.cancelled = true
	m.mu.Unlock()
	m.fail(err)
	w.created <- fmt.Errorf("etcdkv: watch stream: %w", err)
}

// fail ends the stream after an error: every watch on it ends with err.
func (m *watchMux) fail(err error) {
	s := m.s
	s.muxMu.Lock()
	m.mu.Lock()
	m.closed = true
	if s.muxes[m.key] == m {
		delete(s.muxes, m.key)
	}
	if m.headTimer != nil {
		m.headTimer.Stop()
		m.headTimer = nil
	}
	creating := m.creating
	for _, d := range m.deferred {
		creating = append(creating, d.w)
	}
	watches := m.watches
	m.creating, m.deferred, m.watches = nil, nil, map[int64]*muxWatch{}
	for _, w := range creating {
		w.cancelled = true
	}
	for _, w := range watches {
		w.cancelled = true
	}
	m.mu.Unlock()
	s.muxMu.Unlock()
	m.cancel()

	err = fmt.Errorf("etcdkv: watch stream: %w", rpctypes.Error(err))
	for _, w := range creating {
		w.created <- err
	}
	for _, w := range watches {
		w.sink.watchEvent(w, muxEvent{end: true, err: err})
	}
}
