// Package fakeupstream is a scriptable source of truth for watchcache's
// tests: a store of string values with per-key indexes and blocking reads,
// whose answers (values, indexes, errors, hangs) tests set and whose calls
// they count.
//
// It blocks only on channels it creates, so inside a testing/synctest
// bubble a fetch that waits for a change is durably blocked and
// synctest.Wait returns.
package fakeupstream

import (
	"context"
	"sync"
	"time"

	"github.com/watchcache/watchcache"
)

// Source is the fake upstream. The zero value is not usable; use New.
type Source struct {
	mu       sync.Mutex // protects the fields below
	index    uint64     // highest index handed out by Set
	keys     map[string]*key
	calls    int
	inFlight int
	fetched  chan Call // if non-nil, every fetch is reported here

	deadlines     pushHeap    // push-mode fetches with a Timeout (push.go)
	deadlineTimer *time.Timer // fires at the earliest of deadlines
}

type key struct {
	value   string
	index   uint64
	exists  bool
	err     error         // returned by every fetch while set
	errN    int           // how many more fetches return errNext
	errNext error         // returned by the next errN fetches
	hang    chan struct{} // while non-nil, fetches wait for it to close (or ctx)
	changed chan struct{} // closed and replaced on every Set
	pushes  []*push       // push-mode fetches waiting for a change (push.go)
	calls   int
	panicV  any // a fetch panics with this while set
}

// Call describes one fetch, as reported on the channel of Report.
type Call struct {
	Key      string
	Token    string
	MinIndex uint64
	Timeout  time.Duration
}

// New returns an empty Source.
func New() *Source {
	return &Source{keys: make(map[string]*key)}
}

func (s *Source) keyLocked(name string) *key {
	k := s.keys[name]
	if k == nil {
		k = &key{changed: make(chan struct{})}
		s.keys[name] = k
	}
	return k
}

// wakeLocked wakes the fetches of k that wait, and returns the push-mode
// ones, which the caller must run (runPushes) once it released s.mu.
func (k *key) wakeLocked() []*push {
	close(k.changed)
	k.changed = make(chan struct{})
	p := k.pushes
	k.pushes = nil
	for _, q := range p {
		q.listed = false
	}
	return p
}

// Set stores value under name at the next index and wakes blocked fetches
// of name only. It returns the new index.
func (s *Source) Set(name, value string) uint64 {
	s.mu.Lock()
	s.index++
	index := s.index
	k := s.keyLocked(name)
	k.value, k.index, k.exists = value, index, true
	p := k.wakeLocked()
	s.mu.Unlock()
	s.runPushes(p)
	return index
}

// SetIndex stores value under name at exactly index, which may be lower
// than before (a store restored from a snapshot), or 0 (a badly behaved
// source). It wakes blocked fetches of name.
func (s *Source) SetIndex(name, value string, index uint64) {
	s.mu.Lock()
	k := s.keyLocked(name)
	k.value, k.index, k.exists = value, index, true
	s.index = max(s.index, index)
	p := k.wakeLocked()
	s.mu.Unlock()
	s.runPushes(p)
}

// Fail makes every fetch of name return err until Fail(name, nil). It wakes
// blocked fetches so that they see it.
func (s *Source) Fail(name string, err error) {
	s.mu.Lock()
	k := s.keyLocked(name)
	k.err = err
	p := k.wakeLocked()
	s.mu.Unlock()
	s.runPushes(p)
}

// FailNext makes the next n fetches of name return err.
func (s *Source) FailNext(name string, n int, err error) {
	s.mu.Lock()
	k := s.keyLocked(name)
	k.errN, k.errNext = n, err
	p := k.wakeLocked()
	s.mu.Unlock()
	s.runPushes(p)
}

// Panic makes fetches of name panic with v (until Panic(name, nil)).
func (s *Source) Panic(name string, v any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keyLocked(name).panicV = v
}

// Hang makes fetches of name block until Release(name) or their context
// ends, ignoring their Timeout: a stuck upstream.
func (s *Source) Hang(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.keyLocked(name)
	if k.hang == nil {
		k.hang = make(chan struct{})
	}
}

// Release ends a Hang of name.
func (s *Source) Release(name string) {
	s.mu.Lock()
	k := s.keyLocked(name)
	var p []*push
	if k.hang != nil {
		close(k.hang)
		k.hang = nil
		p = k.wakeLocked()
	}
	s.mu.Unlock()
	s.runPushes(p)
}

// Calls returns how many fetches of name started.
func (s *Source) Calls(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.keyLocked(name).calls
}

// TotalCalls returns how many fetches started, all keys together.
func (s *Source) TotalCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// InFlight returns how many fetches are running now.
func (s *Source) InFlight() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inFlight
}

// Report makes every later fetch send its Call on a channel, which is
// returned. Sends block: the test must receive them.
func (s *Source) Report() <-chan Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fetched = make(chan Call)
	return s.fetched
}

// Fetch implements watchcache.Fetcher[string]. The value of a missing key
// is "" at index 0. With MinIndex > 0 it blocks until the key's index
// differs from MinIndex (a change, or a reset below it), Timeout ends, or
// ctx ends, as a Consul blocking query does.
func (s *Source) Fetch(ctx context.Context, opts watchcache.FetchOptions[string], req watchcache.Request) (watchcache.FetchResult[string], error) {
	s.mu.Lock()
	s.calls++
	s.inFlight++
	k := s.keyLocked(req.Key)
	k.calls++
	report := s.fetched
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.inFlight--
		s.mu.Unlock()
	}()

	if report != nil {
		select {
		case report <- callOf(opts, req):
		case <-ctx.Done():
			return watchcache.FetchResult[string]{}, ctx.Err()
		}
	}

	var timeout <-chan time.Time
	if opts.Timeout > 0 {
		t := time.NewTimer(opts.Timeout)
		defer t.Stop()
		timeout = t.C
	}
	for {
		s.mu.Lock()
		hang, panicV := k.hang, k.panicV
		s.mu.Unlock()
		if panicV != nil {
			panic(panicV)
		}
		if hang != nil {
			select {
			case <-hang:
				continue
			case <-ctx.Done():
				return watchcache.FetchResult[string]{}, ctx.Err()
			}
		}

		s.mu.Lock()
		res, err, ready := k.answerLocked(opts.MinIndex)
		if ready {
			s.mu.Unlock()
			return res, err
		}
		changed := k.changed
		s.mu.Unlock()

		select {
		case <-changed:
		case <-timeout:
			return res, nil
		case <-ctx.Done():
			return watchcache.FetchResult[string]{}, ctx.Err()
		}
	}
}

// callOf is what Report tells of a fetch.
func callOf(opts watchcache.FetchOptions[string], req watchcache.Request) Call {
	return Call{Key: req.Key, Token: req.Partition.Token, MinIndex: opts.MinIndex, Timeout: opts.Timeout}
}

// answerLocked is a fetch's answer from k as it is now: an error set by
// Fail or FailNext, or the value if its index differs from minIndex (or
// minIndex is 0). ready is false when a blocking fetch must wait.
func (k *key) answerLocked(minIndex uint64) (res watchcache.FetchResult[string], err error, ready bool) {
	switch {
	case k.errN > 0:
		k.errN--
		return res, k.errNext, true
	case k.err != nil:
		return res, k.err, true
	}
	res = watchcache.FetchResult[string]{Value: k.value, Index: k.index}
	return res, nil, minIndex == 0 || k.index != minIndex
}
