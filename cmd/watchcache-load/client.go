package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"
)

// This file is the client process: the parent re-executes its own binary
// with clientEnv set, so that the clients' sockets do not count against the
// agent process's descriptor limit.

// clientEnv holds the clientSpec, in JSON, of a client process.
const clientEnv = "WATCHCACHE_LOAD_CLIENT"

// blockWait is the wait of every blocking GET: Consul's default, far longer
// than any round should take, so that an answer without the change is a
// failure rather than a timeout the client asked for.
const blockWait = "5m"

// maxErrors bounds the distinct error messages a round reports; the rest
// are counted as "other errors".
const maxErrors = 5

// clientSpec is what a client process does.
type clientSpec struct {
	Addr            string // the agent's host:port
	Key             string
	Index           uint64 // the key's index before the first write
	Clients         int
	Rounds          int
	DialConcurrency int
	Deadline        time.Time // every connection ends then, answered or not
}

// clientEvent is one line, in JSON, of a client process's stdout: one
// "sent" event once every client sent its first request (or failed to),
// then one "round" event per round once every client was answered (or
// failed).
type clientEvent struct {
	Kind string // "sent" or "round"

	// sent
	Sent    int           `json:",omitempty"` // clients whose first request is on the wire
	Elapsed time.Duration `json:",omitempty"` // from the start of the process

	// round
	Round    int    `json:",omitempty"`
	Answered int    `json:",omitempty"` // clients that got the round's value
	Index    uint64 `json:",omitempty"` // the highest X-Consul-Index answered
	// Recv is, per client, when it had read its answer (Unix nanoseconds,
	// CLOCK_REALTIME, which both processes share); 0 if it failed.
	Recv []int64 `json:",omitempty"`

	// Both: failures and up to maxErrors distinct messages with counts.
	Failures int            `json:",omitempty"`
	Errors   map[string]int `json:",omitempty"`
}

// roundValue is the value the parent writes in round r (0: before the
// clients start) and the clients expect.
func roundValue(r int) string { return "round-" + strconv.Itoa(r) }

// clientMain runs a client process described by spec (JSON) and returns its
// exit status.
func clientMain(spec string) int {
	var s clientSpec
	if err := json.Unmarshal([]byte(spec), &s); err != nil {
		fmt.Fprintf(os.Stderr, "watchcache-load client: bad %s: %v\n", clientEnv, err)
		return 2
	}
	// The parent closes stdin when it gives up; without it the clients
	// would hold their connections until the deadline.
	go func() {
		io.Copy(io.Discard, os.Stdin)
		os.Exit(1)
	}()
	enc := json.NewEncoder(os.Stdout)
	if err := runClients(context.Background(), s, enc.Encode); err != nil {
		fmt.Fprintln(os.Stderr, "watchcache-load client:", err)
		return 1
	}
	return 0
}

// failures collects one step's errors: a count and a few messages.
type failures struct {
	mu     sync.Mutex // protects the fields below
	n      int
	byText map[string]int
}

func (f *failures) add(prefix string, err error) {
	msg := prefix + describe(err)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	if f.byText == nil {
		f.byText = make(map[string]int)
	}
	if _, ok := f.byText[msg]; !ok && len(f.byText) >= maxErrors {
		msg = "other errors"
	}
	f.byText[msg]++
}

// describe renders err without what differs from one client to the next
// (its port), so that one cause makes one message.
func describe(err error) string {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "no answer before the deadline"
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Op + ": " + oe.Err.Error()
	}
	return err.Error()
}

// loadClients is the state of a client process's clients.
type loadClients struct {
	s      clientSpec
	dialer net.Dialer
	path   string        // the key's escaped request path
	slots  chan struct{} // one per client connecting, bounding them to DialConcurrency

	// sent is done once per client, when its first request is written or
	// it failed before.
	sent       sync.WaitGroup
	sendFailed failures

	// rounds[r] is done once per client for round r+1, answered or failed.
	// recv[r][i] and failed[r] are written before it.
	rounds []sync.WaitGroup
	recv   [][]int64
	failed []failures

	idxMu  sync.Mutex // protects maxIdx
	maxIdx []uint64   // per round, the highest index answered

	// release is closed by runClients once the last round is reported:
	// answered clients keep their connections until then, so that the
	// agent is not closing connections while it still answers others.
	release chan struct{}
	workers sync.WaitGroup // one per client goroutine
}

// runClients runs s's clients and reports each step to emit.
func runClients(ctx context.Context, s clientSpec, emit func(any) error) error {
	start := time.Now()
	c := &loadClients{
		s:       s,
		path:    (&url.URL{Path: "/v1/kv/" + s.Key}).EscapedPath(),
		slots:   make(chan struct{}, s.DialConcurrency),
		rounds:  make([]sync.WaitGroup, s.Rounds),
		recv:    make([][]int64, s.Rounds),
		failed:  make([]failures, s.Rounds),
		maxIdx:  make([]uint64, s.Rounds),
		release: make(chan struct{}),
	}
	c.dialer.Deadline = s.Deadline
	c.sent.Add(s.Clients)
	for r := range s.Rounds {
		c.rounds[r].Add(s.Clients)
		c.recv[r] = make([]int64, s.Clients)
	}
	for i := range s.Clients {
		c.workers.Go(func() { c.client(ctx, i) })
	}
	defer func() {
		close(c.release)
		c.workers.Wait()
	}()

	c.sent.Wait()
	ev := clientEvent{Kind: "sent", Sent: s.Clients - c.sendFailed.n, Elapsed: time.Since(start),
		Failures: c.sendFailed.n, Errors: c.sendFailed.byText}
	if err := emit(ev); err != nil {
		return err
	}
	for r := range s.Rounds {
		c.rounds[r].Wait()
		f := &c.failed[r]
		ev := clientEvent{Kind: "round", Round: r + 1, Answered: s.Clients - f.n, Index: c.maxIdx[r],
			Recv: c.recv[r], Failures: f.n, Errors: f.byText}
		if err := emit(ev); err != nil {
			return err
		}
	}
	return nil
}

// client runs client i: one connection, one blocking GET per round, each
// asking for the index the previous answer gave.
func (c *loadClients) client(ctx context.Context, i int) {
	round := 0 // rounds done (answered or failed)
	fail := func(err error) {
		for ; round < c.s.Rounds; round++ {
			c.failed[round].add(fmt.Sprintf("round %d: ", round+1), err)
			c.rounds[round].Done()
		}
	}
	sent := false
	markSent := func(err error) {
		if sent {
			return
		}
		sent = true
		<-c.slots
		if err != nil {
			c.sendFailed.add("", err)
		}
		c.sent.Done()
	}

	c.slots <- struct{}{}
	conn, err := c.dialer.DialContext(ctx, "tcp", c.s.Addr)
	if err != nil {
		markSent(err)
		fail(err)
		return
	}
	defer conn.Close()
	conn.SetDeadline(c.s.Deadline)
	br := bufio.NewReaderSize(conn, 2048)
	index := c.s.Index
	for round < c.s.Rounds {
		req := "GET " + c.path + "?index=" + strconv.FormatUint(index, 10) + "&wait=" + blockWait + " HTTP/1.1\r\n" +
			"Host: " + c.s.Addr + "\r\nUser-Agent: watchcache-load\r\n\r\n"
		_, err := io.WriteString(conn, req)
		markSent(err)
		if err != nil {
			fail(err)
			return
		}
		next, err := readAnswer(br, index, roundValue(round+1))
		if err != nil {
			fail(err)
			return
		}
		c.recv[round][i] = time.Now().UnixNano()
		c.idxMu.Lock()
		c.maxIdx[round] = max(c.maxIdx[round], next)
		c.idxMu.Unlock()
		c.rounds[round].Done()
		round++
		index = next
	}
	<-c.release
}

// readAnswer reads the answer to a blocking GET that asked for an index
// above index, checks that it carries want, and returns its index.
func readAnswer(br *bufio.Reader, index uint64, want string) (uint64, error) {
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("status %s: %.200s", resp.Status, body)
	}
	next, err := strconv.ParseUint(resp.Header.Get("X-Consul-Index"), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("X-Consul-Index %q: %v", resp.Header.Get("X-Consul-Index"), err)
	}
	if next <= index {
		return 0, fmt.Errorf("answered with index %d, not above %d: the wait ended without the change", next, index)
	}
	var pairs []struct{ Value []byte }
	if err := json.Unmarshal(body, &pairs); err != nil {
		return 0, fmt.Errorf("body %.200q: %v", body, err)
	}
	if len(pairs) != 1 || string(pairs[0].Value) != want {
		return 0, fmt.Errorf("answered %.200s, want the value %q", body, want)
	}
	return next, nil
}
