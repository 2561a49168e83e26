package agent

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/memstore"
	"github.com/watchcache/watchcache/internal/tlstest"
)

// Over real connections, HTTP/1.1 and HTTP/2 over TLS, every stream whose
// client stopped reading is dropped and counted once: net/http cancels the
// request when a write fails, which must not pass for a shutdown. Events
// larger than the kernel's and HTTP/2's buffers make the writes block.
func TestSSEDroppedOverRealConnections(t *testing.T) {
	for _, proto := range []string{"HTTP/1.1", "HTTP/2"} {
		t.Run(proto, func(t *testing.T) {
			cache, err := watchcache.New(watchcache.Options{Logger: testLogger()})
			if err != nil {
				t.Fatal(err)
			}
			defer cache.Close()
			store, err := memstore.New(cache, nil)
			if err != nil {
				t.Fatal(err)
			}
			value := strings.Repeat("v", MaxValueSize)
			for i := range 16 { // one event of 8 MiB of JSON and more
				if err := store.Put(context.Background(), watchcache.Partition{}, "big/"+string(rune('a'+i)), []byte(value)); err != nil {
					t.Fatal(err)
				}
			}
			a, err := New(Config{Store: store, Cache: cache, Logger: testLogger(), EventWriteTimeout: 300 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			served := make(chan error, 1)
			tr := &http.Transport{DisableCompression: true}
			scheme := "http"
			if proto == "HTTP/2" {
				ca := tlstest.NewCA(t, "ca")
				srv := ca.Server("agent")
				go func() { served <- a.ServeTLS(ln, &tls.Config{Certificates: []tls.Certificate{srv.TLS}}) }()
				tr.TLSClientConfig, tr.ForceAttemptHTTP2, scheme = ca.ClientConfig(nil), true, "https"
			} else {
				go func() { served <- a.Serve(ln) }()
			}
			defer func() {
				ctx, cancel := context.WithTimeout(context.Background(), waitFor)
				defer cancel()
				if err := a.Shutdown(ctx); err != nil {
					t.Errorf("Shutdown: %v", err)
				}
				if err := <-served; !errors.Is(err, http.ErrServerClosed) {
					t.Errorf("Serve: %v", err)
				}
			}()
			defer tr.CloseIdleConnections()

			const clients = 5
			var bodies []io.Closer
			defer func() {
				for _, b := range bodies {
					b.Close()
				}
			}()
			for range clients {
				// A separate connection each (HTTP/1.1), never read past the headers.
				resp, err := (&http.Client{Transport: tr.Clone()}).Get(scheme + "://" + ln.Addr().String() + "/v1/watch/kv/big/?recurse")
				if err != nil {
					t.Fatal(err)
				}
				if resp.ProtoMajor != map[string]int{"HTTP/1.1": 1, "HTTP/2": 2}[proto] {
					t.Fatalf("stream over %s, want %s", resp.Proto, proto)
				}
				bodies = append(bodies, resp.Body)
			}
			deadline := time.Now().Add(waitFor)
			for counterValue(t, a.droppedStreams) < clients && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			time.Sleep(500 * time.Millisecond) // would a stream be counted twice?
			if got := counterValue(t, a.droppedStreams); got != clients {
				t.Fatalf("dropped streams counted: %v, want %d", got, clients)
			}
		})
	}
}

// counterValue reads a Prometheus counter.
func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// An idle event stream over HTTP/2 is kept: no write deadline stays armed
// between events (an armed HTTP/2 deadline resets the stream when it
// passes, whether or not a write is in progress), so a stream that waits
// longer than EventWriteTimeout for its next event, with no heartbeat in
// between, still gets it.
func TestSSEIdleStreamKeptOverHTTP2(t *testing.T) {
	cache, err := watchcache.New(watchcache.Options{Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	store, err := memstore.New(cache, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := store.Put(ctx, watchcache.Partition{}, "k", []byte("one")); err != nil {
		t.Fatal(err)
	}
	const timeout = 200 * time.Millisecond
	a, err := New(Config{Store: store, Cache: cache, Logger: testLogger(), EventWriteTimeout: timeout, HeartbeatInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ca := tlstest.NewCA(t, "ca")
	served := make(chan error, 1)
	go func() { served <- a.ServeTLS(ln, &tls.Config{Certificates: []tls.Certificate{ca.Server("agent").TLS}}) }()
	defer func() {
		sctx, cancel := context.WithTimeout(ctx, waitFor)
		defer cancel()
		if err := a.Shutdown(sctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	}()
	tr := &http.Transport{TLSClientConfig: ca.ClientConfig(nil), ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get("https://" + ln.Addr().String() + "/v1/watch/kv/k")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("stream over %s, want HTTP/2", resp.Proto)
	}
	events := make(chan string, 4)
	go func() {
		defer close(events)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				events <- data
			}
		}
	}()
	next := func(what string) string {
		t.Helper()
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatalf("%s: the stream ended", what)
			}
			return ev
		case <-time.After(waitFor):
			t.Fatalf("%s: no event within %v", what, waitFor)
		}
		return ""
	}
	next("first event")
	time.Sleep(3 * timeout) // idle for longer than an event may take
	if err := store.Put(ctx, watchcache.Partition{}, "k", []byte("two")); err != nil {
		t.Fatal(err)
	}
	if ev := next("event after an idle while"); !strings.Contains(ev, `"Value":"dHdv"`) {
		t.Fatalf("event after an idle while = %s, want the value two", ev)
	}
	if n := counterValue(t, a.droppedStreams); n != 0 {
		t.Fatalf("dropped streams counted: %v, want 0", n)
	}
}
