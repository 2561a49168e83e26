package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestMain also serves as the client process: the load re-executes the
// running binary, which in a test is the test binary.
func TestMain(m *testing.M) {
	if spec := os.Getenv(clientEnv); spec != "" {
		os.Exit(clientMain(spec))
	}
	goleak.VerifyTestMain(m)
}

// TestLoad runs the whole load at a small scale: etcd and the agent in
// this process, the clients in a re-executed one. It protects what the
// command reports: every blocked GET is answered with every write, and the
// agent holds one etcd watch for all of them.
func TestLoad(t *testing.T) {
	const clients, rounds = 200, 3
	var out bytes.Buffer
	cfg := config{Clients: clients, Key: "load/test key", Rounds: rounds, Timeout: 30 * time.Second, DialConcurrency: 50}
	rep, err := run(context.Background(), cfg, &out)
	t.Logf("output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.verdict(); err != nil {
		t.Fatal(err)
	}
	if len(rep.Rounds) != rounds {
		t.Fatalf("%d rounds reported, want %d", len(rep.Rounds), rounds)
	}
	for _, rr := range rep.Rounds {
		if rr.Answered != clients || rr.Latencies != clients || rr.Failures != 0 {
			t.Errorf("round %d: %d answered, %d latencies, %d failures; want %d, %d, 0", rr.Round, rr.Answered, rr.Latencies, rr.Failures, clients, clients)
		}
		if rr.Index != rr.PrevIndex+1 {
			t.Errorf("round %d: index %d -> %d, want one write apart", rr.Round, rr.PrevIndex, rr.Index)
		}
		if !(0 < rr.Min && rr.Min <= rr.P50 && rr.P50 <= rr.P99 && rr.P99 <= rr.Max) {
			t.Errorf("round %d: latencies out of order: min %v p50 %v p99 %v max %v", rr.Round, rr.Min, rr.P50, rr.P99, rr.Max)
		}
	}
	if rep.WatchesBlocked != 1 || rep.WatchesAfter != 1 {
		t.Errorf("etcd watches: %d with the clients blocked, %d after; want 1 and 1", rep.WatchesBlocked, rep.WatchesAfter)
	}
	if rep.MemBlocked.Heap == 0 || rep.MemBlocked.Goroutines < clients {
		t.Errorf("memory with the clients blocked: %+v", rep.MemBlocked)
	}
}

// TestLoadRemote loads an agent through -agent-addr, as one in another
// process would be: readiness by a pause, memory from its /metrics, and
// the etcd watch count unknown rather than guessed.
func TestLoadRemote(t *testing.T) {
	l, err := startLocal(config{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := l.close(); err != nil {
			t.Errorf("stopping the agent: %v", err)
		}
	}()
	const clients = 50
	var out bytes.Buffer
	cfg := config{Clients: clients, Key: "load/remote", Rounds: 2, Timeout: 30 * time.Second, DialConcurrency: 50,
		AgentAddr: l.addr()}
	rep, err := run(context.Background(), cfg, &out)
	t.Logf("output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.verdict(); err != nil {
		t.Fatal(err)
	}
	for _, rr := range rep.Rounds {
		if rr.Answered != clients {
			t.Errorf("round %d: %d answered, want %d", rr.Round, rr.Answered, clients)
		}
	}
	if rep.WatchesBlocked != -1 || rep.WatchesAfter != -1 {
		t.Errorf("etcd watches %d and %d through -agent-addr, want -1 (unknown)", rep.WatchesBlocked, rep.WatchesAfter)
	}
	if m := rep.MemBlocked; m.RSS == 0 || m.Heap == 0 || m.Goroutines == 0 {
		t.Errorf("memory from /metrics: %+v, want RSS, heap and goroutines", m)
	}
	if !strings.Contains(out.String(), "unknown (the agent runs in another process)") {
		t.Errorf("the report does not say the etcd watch count is unknown")
	}
}

// TestVerdict checks that a load fails on any unanswered client and on
// any etcd watch count but 1.
func TestVerdict(t *testing.T) {
	ok := roundReport{Round: 1, Answered: 10}
	tests := []struct {
		name string
		rep  report
		want string // in the error; "" for none
	}{
		{"pass", report{Clients: 10, Rounds: []roundReport{ok}, WatchesBlocked: 1, WatchesAfter: 1}, ""},
		{"watches unknown", report{Clients: 10, Rounds: []roundReport{ok}, WatchesBlocked: -1, WatchesAfter: -1}, ""},
		{"unanswered", report{Clients: 10, Rounds: []roundReport{ok, {Round: 2, Answered: 9, Failures: 1,
			Errors: map[string]int{"round 2: EOF": 1}}}, WatchesBlocked: 1, WatchesAfter: 1}, "round 2: 9 of 10 clients answered"},
		{"watch per client", report{Clients: 10, Rounds: []roundReport{ok}, WatchesBlocked: 10, WatchesAfter: 1}, "held 10 etcd watches"},
		{"no watch", report{Clients: 10, Rounds: []roundReport{ok}, WatchesBlocked: 1, WatchesAfter: 0}, "and 0 after, want 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.rep.verdict()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("verdict: %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("verdict: %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// TestPercentile checks the nearest-rank percentiles the report gives.
func TestPercentile(t *testing.T) {
	lat := make([]time.Duration, 100)
	for i := range lat {
		lat[i] = time.Duration(i+1) * time.Millisecond
	}
	tests := []struct {
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{lat, 0.50, 50 * time.Millisecond},
		{lat, 0.99, 99 * time.Millisecond},
		{lat, 1, 100 * time.Millisecond},
		{lat[:1], 0.99, time.Millisecond},
		{lat[:3], 0.50, 2 * time.Millisecond},
	}
	for _, tt := range tests {
		if got := percentile(tt.sorted, tt.p); got != tt.want {
			t.Errorf("percentile(%d values, %v) = %v, want %v", len(tt.sorted), tt.p, got, tt.want)
		}
	}
}

// TestLimits checks that a load the machine cannot hold is refused before
// it starts, with the reason.
func TestLimits(t *testing.T) {
	limit, ok := openFileLimit()
	if !ok {
		t.Skip("no open-file limit on this platform")
	}
	err := checkLimits(int(limit), true)
	if err == nil || !strings.Contains(err.Error(), "ulimit -n") {
		t.Errorf("checkLimits(%d clients): %v, want an error naming ulimit -n", limit, err)
	}
	if err := checkLimits(10, true); err != nil {
		t.Errorf("checkLimits(10 clients): %v", err)
	}
}
