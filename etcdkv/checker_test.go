package etcdkv

import (
	"math/rand/v2"
	"testing"
)

// The batching of access checks: the first request of an idle identity is
// checked at once; while checks are in flight, another starts once
// checkBatchMin requests wait, up to maxChecksInFlight; a check that ends
// takes the requests waiting if there are enough of them or if it is the
// last in flight, so no request is left waiting with no check in flight.
func TestAccessCheckerBatches(t *testing.T) {
	var c accessChecker
	add := func(n int) (started []int) {
		t.Helper()
		for range n {
			if batch, _ := c.add(&accessReq{}); batch != nil {
				started = append(started, len(batch))
			}
		}
		return started
	}
	if got := add(1); len(got) != 1 || got[0] != 1 {
		t.Fatalf("an idle identity's first request started %v, want one batch of 1", got)
	}
	if got := add(checkBatchMin - 1); len(got) != 0 {
		t.Fatalf("%d requests behind a check in flight started %v, want none yet", checkBatchMin-1, got)
	}
	if got := add(1); len(got) != 1 || got[0] != checkBatchMin {
		t.Fatalf("the %dth waiting request started %v, want one batch of %d", checkBatchMin, got, checkBatchMin)
	}
	// Fill every slot, then queue more than a batch's worth.
	if got := add((maxChecksInFlight - 2) * checkBatchMin); len(got) != maxChecksInFlight-2 {
		t.Fatalf("started %d batches, want %d", len(got), maxChecksInFlight-2)
	}
	if c.inFlight != maxChecksInFlight {
		t.Fatalf("inFlight = %d, want %d", c.inFlight, maxChecksInFlight)
	}
	if got := add(checkBatchMin + 3); len(got) != 0 {
		t.Fatalf("with %d checks in flight, more requests started %v", maxChecksInFlight, got)
	}
	// A check ends: it takes the waiting requests, enough for a batch.
	if batch := c.next(); len(batch) != checkBatchMin+3 {
		t.Fatalf("next = %d requests, want the %d waiting", len(batch), checkBatchMin+3)
	}
	add(2)
	// The others end: with 2 waiting, all but the last stop; the last
	// takes the 2.
	for i := maxChecksInFlight; i > 1; i-- {
		if batch := c.next(); batch != nil {
			t.Fatalf("with %d in flight, next = %d requests; want nil (too few waiting)", i, len(batch))
		}
	}
	if batch := c.next(); len(batch) != 2 {
		t.Fatalf("the last check in flight took %d requests, want 2", len(batch))
	}
	if batch := c.next(); batch != nil || c.inFlight != 0 {
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
	running := 0 // batches the model knows to be in flight
	queued := 0  // requests added
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
	for step := range 100_000 {
		if running == 0 || rng.IntN(3) > 0 {
			r := &accessReq{}
			reqs[r] = queued
			queued++
			if batch, _ := c.add(r); batch != nil {
				running++
				taken = append(taken, batch...)
			}
		} else if batch := c.next(); batch != nil {
			taken = append(taken, batch...)
		} else {
			running--
		}
		check(step)
	}
	for i, r := range taken {
		if reqs[r] != i {
			t.Fatalf("request %d was taken %dth", reqs[r], i)
		}
	}
}
