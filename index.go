package watchcache

// indexStep is how one successful fetch moves an entry's index. Every path
// that publishes a result goes through stepIndex, so the rules below hold
// everywhere.
type indexStep struct {
	index   uint64 // the index to publish: never 0
	changed bool   // watchers following the index should see this result
	reset   bool   // the index went backwards: the source was restored or rebuilt
	zero    bool   // the source returned index 0: counts as a failure for backoff
}

// stepIndex applies the index rules of a blocking kind to a result with
// index got, after a previous published index prev (0 when there is no
// value yet).
//
//   - A zero index is published as 1. No valid data is written at index 1
//     of a Raft log, so this is safe, and a later blocking fetch with
//     MinIndex 1 blocks instead of returning at once in a busy loop. It still
//     counts as a failure for backoff (zero is set).
//   - A higher index is a change.
//   - A lower index is a reset: a snapshot restore or a store rebuilt from
//     scratch. It is a change, delivered to everyone at once; nobody waits
//     for the old index to be passed again.
//   - An equal index is no change (a blocking fetch that timed out).
func stepIndex(prev, got uint64) indexStep {
	s := indexStep{index: got}
	if got == 0 {
		s.index, s.zero = 1, true
	}
	switch {
	case prev == 0:
		s.changed = true
	case s.index > prev:
		s.changed = true
	case s.index < prev:
		s.changed, s.reset = true, true
	}
	return s
}
