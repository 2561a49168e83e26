package etcdkv

import "testing"

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
