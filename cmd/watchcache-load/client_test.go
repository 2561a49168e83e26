package main

import (
	"context"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestClientsReportFailures runs the client side against a fake agent that
// answers a third of the GETs with the change, a third with a wrong value,
// and never answers the rest. It protects the run's verdict: a client that
// got the wrong value or no answer by the deadline counts as a failure,
// with its reason, and only the good answers have a latency.
func TestClientsReportFailures(t *testing.T) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("index") != "7" || r.URL.Query().Get("wait") != blockWait {
			http.Error(w, "unexpected query "+r.URL.RawQuery, http.StatusBadRequest)
			return
		}
		value := roundValue(1)
		switch n.Add(1) % 3 {
		case 1:
			value = "stale"
		case 2:
			<-r.Context().Done() // the client gives up at its deadline
			return
		}
		w.Header().Set("X-Consul-Index", "8")
		w.Write([]byte(`[{"Key":"k","Value":"` + base64.StdEncoding.EncodeToString([]byte(value)) + `"}]`))
	}))
	defer srv.Close()

	const clients = 30
	var events []clientEvent
	spec := clientSpec{Addr: strings.TrimPrefix(srv.URL, "http://"), Key: "k", Index: 7, Clients: clients, Rounds: 1,
		DialConcurrency: 10, Deadline: time.Now().Add(time.Second)}
	err := runClients(context.Background(), spec, func(ev any) error {
		events = append(events, ev.(clientEvent))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != 2 || events[0].Kind != "sent" || events[1].Kind != "round" {
		t.Fatalf("events %+v, want sent and round", events)
	}
	if sent := events[0]; sent.Sent != clients || sent.Failures != 0 {
		t.Errorf("sent %d with %d failures, want %d and 0", sent.Sent, sent.Failures, clients)
	}
	round := events[1]
	if round.Answered != clients/3 || round.Failures != 2*clients/3 || round.Index != 8 {
		t.Errorf("round: %d answered, %d failures, index %d; want %d, %d, 8", round.Answered, round.Failures, round.Index, clients/3, 2*clients/3)
	}
	answered := 0
	for _, at := range round.Recv {
		if at != 0 {
			answered++
		}
	}
	if answered != clients/3 {
		t.Errorf("%d receive times, want %d", answered, clients/3)
	}
	var wrong, late int
	for msg, c := range round.Errors {
		switch {
		case strings.Contains(msg, `want the value "round-1"`):
			wrong += c
		case strings.Contains(msg, "no answer before the deadline"):
			late += c
		default:
			t.Errorf("unexpected error %q ×%d", msg, c)
		}
	}
	if wrong != clients/3 || late != clients/3 {
		t.Errorf("errors %v: %d wrong values and %d unanswered, want %d each", round.Errors, wrong, late, clients/3)
	}
}
