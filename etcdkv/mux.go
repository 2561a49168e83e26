package etcdkv

import (
	"context"
	"errors"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
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

// muxFor returns the open stream of id's current token, opening one if
// needed.
func (s *Source) muxFor(ctx context.Context, id *identity) (*watchMux, error) {
	key := muxKey{id, id.currentToken()}
	for {
		s.muxMu.Lock()
		if m := s.muxes[key]; m != nil {
			s.muxMu.Unlock()
			return m, nil
		}
		opening := s.opening[key]
		if opening == nil {
			// One caller opens the stream; the others wait for it rather
			// than open streams of their own that would be closed at once
			// (many entries start together: at startup, after a drain).
			opening = make(chan struct{})
			s.opening[key] = opening
			s.muxMu.Unlock()
			m, err := s.openMux(ctx, id, key)
			s.muxMu.Lock()
			delete(s.opening, key)
			s.muxMu.Unlock()
			close(opening)
			return m, err
		}
		s.muxMu.Unlock()
		select {
		case <-opening: // opened, or failed for its caller: look again
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// openMux opens the stream of key for muxFor, and lists it in s.muxes.
func (s *Source) openMux(ctx context.Context, id *identity, key muxKey) (*watchMux, error) {
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
	defer s.muxMu.Unlock()
	if other := s.muxes[key]; other != nil { // cannot happen: muxFor opens one at a time
		cancel()
		return other, nil
	}
	if !s.goBackground(m.recv) {
		cancel()
		return nil, ErrClosed
	}
	s.muxes[key] = m
	return m, nil
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
