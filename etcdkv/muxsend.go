package etcdkv

import (
	"io"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// Requests on a watch stream (creates, cancels, progress requests) are
// queued and sent in order by one goroutine per stream, which runs only
// while the queue is not empty (see watchMux.queue).

// requestProgress asks etcd for a progress report on the stream: once its
// watches are synced, every one of them learns the current revision.
func (m *watchMux) requestProgress() error {
	return m.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}})
}

// ignoresProgress reports whether the stream is known to ignore progress
// requests: etcd answered a create with an ID of its own (etcd's gRPC
// proxy, which numbers watches itself, drops progress requests too).
func (m *watchMux) ignoresProgress() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.answered && !m.verified
}

// send queues req, unless the stream is closed.
func (m *watchMux) send(req *pb.WatchRequest) error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return errMuxClosed
	}
	start := m.enqueueLocked(req)
	m.mu.Unlock()
	if start {
		m.startSending()
	}
	return nil
}

// enqueueLocked queues req; it reports whether the caller must start the
// sending goroutine.
func (m *watchMux) enqueueLocked(req *pb.WatchRequest) bool {
	m.queue = append(m.queue, req)
	if _, progress := req.RequestUnion.(*pb.WatchRequest_ProgressRequest); progress {
		m.progressSent++
	}
	if m.sending {
		return false
	}
	m.sending = true
	return true
}

func (m *watchMux) startSending() {
	if !m.s.goBackground(m.sendQueue) {
		m.fail(ErrClosed)
	}
}

// sendQueue is the sending goroutine: it sends the queue until it is
// empty, or until a send fails, which ends the stream.
func (m *watchMux) sendQueue() {
	for {
		m.mu.Lock()
		batch := m.queue
		m.queue = nil
		if len(batch) == 0 || m.closed { // closed: the stream is ending
			m.sending = false
			m.mu.Unlock()
			return
		}
		m.mu.Unlock()
		for _, req := range batch {
			if err := m.stream.Send(req); err != nil {
				if err != io.EOF { // io.EOF: etcd ended the stream, and recv reports why
					m.fail(err)
				}
				m.mu.Lock()
				m.queue, m.sending = nil, false
				m.mu.Unlock()
				return
			}
		}
	}
}
