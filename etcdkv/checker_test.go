package etcdkv

import (
	"math/rand/v2"
	"testing"
)

// The batching of access checks: the first request of an idle identity is
// checked at once; while checks are in flight, another starts once
// checkBatchMin requests wait and minCheckGap passed since the last start,
// up to maxChecksInFlight; a check that ends takes the requests waiting if
// there are enough of them or if it is the last in flight, so no request
// is left waiting with no check in flight.
func TestAccessCheckerBatches(t *testing.T) {
	var c accessChecker
	var now int64 = 1 // monoNow of each call; the test moves it
	gap := int64(minCheckGap)
	add := func(n int) (started []int) {
		t.Helper()
		for range n {
			if batch, _ := c.add(&accessReq{}, now); batch != nil {
				started = append(started, len(batch))
			}
		}
		return started
	}
	if got := add(1); len(got) != 1 || got[0] != 1 {
		t.Fatalf("an idle identity's first request started %v, want one batch of 1", got)
	}
	// A burst right behind it: enough requests, but too soon.
	if got := add(3 * checkBatchMin); len(got) != 0 {
		t.Fatalf("a burst of %d within minCheckGap of a check started %v, want none", 3*checkBatchMin, got)
	}
	now += gap
	if got := add(1); len(got) != 1 || got[0] != 3*checkBatchMin+1 {
		t.Fatalf("once minCheckGap passed, the next request started %v, want one batch of all %d waiting", got, 3*checkBatchMin+1)
	}
	now += gap
	if got := add(checkBatchMin - 1); len(got) != 0 {
		t.Fatalf("%d requests behind checks in flight started %v, want none yet", checkBatchMin-1, got)
	}
	if got := add(1); len(got) != 1 || got[0] != checkBatchMin {
		t.Fatalf("the %dth waiting request started %v, want one batch of %d", checkBatchMin, got, checkBatchMin)
	}
	// Fill every slot, then queue more than a batch's worth.
	for c.inFlight < maxChecksInFlight {
		now += gap
		if got := add(checkBatchMin); len(got) != 1 {
			t.Fatalf("with %d in flight, %d requests started %v, want one batch", c.inFlight, checkBatchMin, got)
		}
	}
	now += gap
	if got := add(checkBatchMin + 3); len(got) != 0 {
		t.Fatalf("with %d checks in flight, more requests started %v", maxChecksInFlight, got)
	}
	// A check ends: it takes the waiting requests, enough for a batch.
	if batch := c.next(now); len(batch) != checkBatchMin+3 {
		t.Fatalf("next = %d requests, want the %d waiting", len(batch), checkBatchMin+3)
	}
	add(2)
	// The others end: with 2 waiting, all but the last stop; the last
	// takes the 2.
	for i := maxChecksInFlight; i > 1; i-- {
		if batch := c.next(now); batch != nil {
			t.Fatalf("with %d in flight, next = %d requests; want nil (too few waiting)", i, len(batch))
		}
	}
	if batch := c.next(now); len(batch) != 2 {
		t.Fatalf("the last check in flight took %d requests, want 2", len(batch))
	}
	if batch := c.next(now); batch != nil || c.inFlight != 0 {
		t.Fatalf("with nothing waiting, next = %d requests, inFlight %d; want nil, 0", len(batch), c.inFlight)
	}
	if got := add(1); len(got) != 1 {
		t.Fatalf("an idle identity's request started %v, want a batch", got)
	}
}

// Random sequences of requests and ends of checks keep the checker's
// invariants: every request is taken by exactly one batch, in the order
// requests came; a request never waits with no batch in flight; at most
// maxChecksInFlight batches run.
func TestAccessCheckerInvariants(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var c accessChecker
	var now int64
	running := 0 // batches the model knows to be in flight
	maxRunning := 0
	queued := 0 // requests added
	var taken []*accessReq
	reqs := map[*accessReq]int{} // request -> its position
	check := func(step int) {
		t.Helper()
		c.mu.Lock()
		pending, inFlight := len(c.pending), c.inFlight
		c.mu.Unlock()
		switch {
		case inFlight != running:
			t.Fatalf("step %d: inFlight %d, model %d", step, inFlight, running)
		case inFlight > maxChecksInFlight:
			t.Fatalf("step %d: %d checks in flight", step, inFlight)
		case pending > 0 && inFlight == 0:
			t.Fatalf("step %d: %d requests wait with no check in flight", step, pending)
		case len(taken)+pending != queued:
			t.Fatalf("step %d: %d taken + %d pending != %d queued", step, len(taken), pending, queued)
		}
	}
	var ends int // per 100 steps: phases where checks end rarely fill every slot
	for step := range 100_000 {
		if step%1000 == 0 {
			ends = []int{2, 30, 60}[rng.IntN(3)]
		}
		now += rng.Int64N(int64(minCheckGap) / 4)
		if running == 0 || rng.IntN(100) >= ends {
			r := &accessReq{}
			reqs[r] = queued
			queued++
			if batch, _ := c.add(r, now); batch != nil {
				running++
				taken = append(taken, batch...)
			}
		} else if batch := c.next(now); batch != nil {
			taken = append(taken, batch...)
		} else {
			running--
		}
		check(step)
		maxRunning = max(maxRunning, running)
	}
	if maxRunning != maxChecksInFlight {
		t.Errorf("the sequence had at most %d checks in flight; it should reach %d", maxRunning, maxChecksInFlight)
	}
	for i, r := range taken {
		if reqs[r] != i {
			t.Fatalf("request %d was taken %dth", reqs[r], i)
		}
	}
}
