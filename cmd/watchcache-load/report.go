package main

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strings"
	"time"
)

// report is what a run measured.
type report struct {
	Clients int
	// Established is the time from starting the client process until every
	// client's GET waited in the agent.
	Established time.Duration
	Rounds      []roundReport

	// The agent process's memory before the clients connected, while all
	// of them were blocked (before the first write), and at the end.
	MemBefore, MemBlocked, MemAfter memSample

	// etcd watches the agent held while every client was blocked and after
	// the last round; -1 when unknown.
	WatchesBlocked, WatchesAfter int
}

// roundReport is one write and its answers.
type roundReport struct {
	Round     int
	Write     time.Duration // the PUT's round trip through the agent
	Index     uint64        // the highest index answered
	PrevIndex uint64        // the index the clients waited to pass
	Answered  int
	Failures  int
	Errors    map[string]int
	P50, P99  time.Duration // change-to-response, from the PUT's start
	Min, Max  time.Duration
	Latencies int // how many latencies the percentiles are of
}

func newRoundReport(r int, prev uint64, t0 time.Time, wrote time.Duration, ev clientEvent) roundReport {
	rr := roundReport{Round: r, Write: wrote, Index: ev.Index, PrevIndex: prev,
		Answered: ev.Answered, Failures: ev.Failures, Errors: ev.Errors}
	start := t0.UnixNano()
	lat := make([]time.Duration, 0, len(ev.Recv))
	for _, at := range ev.Recv {
		if at != 0 {
			lat = append(lat, time.Duration(at-start))
		}
	}
	slices.Sort(lat)
	if n := len(lat); n > 0 {
		rr.Latencies = n
		rr.P50, rr.P99 = percentile(lat, 0.50), percentile(lat, 0.99)
		rr.Min, rr.Max = lat[0], lat[n-1]
	}
	return rr
}

// percentile returns the nearest-rank p-th percentile of sorted.
func percentile(sorted []time.Duration, p float64) time.Duration {
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func (rr roundReport) print(out io.Writer, clients int) {
	fmt.Fprintf(out, "round %d: PUT through the agent took %s; %d of %d clients answered with the new value (X-Consul-Index %d -> %d)\n",
		rr.Round, ms(rr.Write), rr.Answered, clients, rr.PrevIndex, rr.Index)
	if rr.Latencies > 0 {
		fmt.Fprintf(out, "round %d: change-to-response (PUT sent -> answer read by the client): p50 %s  p99 %s  max %s  (min %s)\n",
			rr.Round, ms(rr.P50), ms(rr.P99), ms(rr.Max), ms(rr.Min))
	}
	if rr.Failures > 0 {
		fmt.Fprintf(out, "round %d: %d clients failed: %s\n", rr.Round, rr.Failures, errorList(rr.Errors))
	}
}

func (r *report) print(out io.Writer, local bool) {
	what, heap := "agent process", "allocated"
	if local {
		what, heap = "agent process (agent + embedded etcd; the clients are in another process)", "live after a GC"
	}
	b, blk := r.MemBefore, r.MemBlocked
	fmt.Fprintf(out, "%s: RSS %s before the clients, %s with %d GETs blocked", what, mib(b.RSS), mib(blk.RSS), r.Clients)
	if b.RSS > 0 && blk.RSS > b.RSS {
		fmt.Fprintf(out, " (%.1f KiB per GET)", float64(blk.RSS-b.RSS)/1024/float64(r.Clients))
	}
	if peak := r.MemAfter.PeakRSS; peak > 0 {
		fmt.Fprintf(out, ", peak %s", mib(peak))
	}
	fmt.Fprintln(out)
	fmt.Fprintf(out, "agent Go runtime with the GETs blocked: heap %s %s (%s before), goroutine stacks %s (%s before), %d goroutines\n",
		heap, mib(blk.Heap), mib(b.Heap), mib(blk.StackInuse), mib(b.StackInuse), blk.Goroutines)
	if r.WatchesBlocked < 0 {
		fmt.Fprintln(out, "etcd watches held by the agent: unknown (the agent runs in another process)")
		return
	}
	fmt.Fprintf(out, "etcd watches held by the agent: %d with %d GETs blocked, %d after the last write (etcd's etcd_debugging_mvcc_watcher_total)\n",
		r.WatchesBlocked, r.Clients, r.WatchesAfter)
}

// verdict says whether the load passed: every client got every change,
// and the agent held one etcd watch (when that is known).
func (r *report) verdict() error {
	var errs []error
	for _, rr := range r.Rounds {
		if rr.Failures > 0 || rr.Answered != r.Clients {
			errs = append(errs, fmt.Errorf("round %d: %d of %d clients answered with the change (%s)",
				rr.Round, rr.Answered, r.Clients, errorList(rr.Errors)))
		}
	}
	for _, w := range []int{r.WatchesBlocked, r.WatchesAfter} {
		if w >= 0 && w != 1 {
			errs = append(errs, fmt.Errorf("the agent held %d etcd watches with the clients blocked and %d after, want 1", r.WatchesBlocked, r.WatchesAfter))
			break
		}
	}
	return errors.Join(errs...)
}

// errorList renders error messages and their counts, most frequent first.
func errorList(errs map[string]int) string {
	msgs := slices.SortedFunc(maps.Keys(errs), func(a, b string) int { return errs[b] - errs[a] })
	var sb strings.Builder
	for i, m := range msgs {
		if i > 0 {
			sb.WriteString("; ")
		}
		fmt.Fprintf(&sb, "%d× %s", errs[m], m)
	}
	if sb.Len() == 0 {
		return "no error recorded"
	}
	return sb.String()
}

// ms renders d in milliseconds.
func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond)) }

// mib renders a byte count in MiB, or "?" if unknown.
func mib(b uint64) string {
	if b == 0 {
		return "?"
	}
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}
