package agent

// The event stream (GET /v1/watch/kv/...): order, resumption, resets,
// slow and stuck clients. In-memory store inside synctest bubbles.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/watchcache/watchcache"
)

// The watch stream pushes every change in order, and a client that
// reconnects with Last-Event-ID misses nothing that is still current.
func TestSSEWatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ta, _ := memAgent(t, nil)
		ctx, cancel := context.WithCancel(testCtx(t))
		events := ta.sse(t, ctx, "/v1/watch/kv/cfg")
		if ev := nextEvent(t, events); ev.event != "kv" || ev.data != "[]" {
			t.Fatalf("first event for a missing key = %+v", ev)
		}
		var last uint64
		for i := range 5 {
			ta.do(t, "PUT", "/v1/kv/cfg", strings.NewReader(fmt.Sprint("v", i)))
			ev := nextEvent(t, events)
			var pairs []kvPair
			json.Unmarshal([]byte(ev.data), &pairs)
			id, _ := strconv.ParseUint(ev.id, 10, 64)
			if len(pairs) != 1 || string(pairs[0].Value) != fmt.Sprint("v", i) || id <= last || id != pairs[0].ModifyIndex {
				t.Fatalf("event %d = %+v", i, ev)
			}
			last = id
		}
		cancel() // the client goes away...
		for range events {
		}
		ta.do(t, "PUT", "/v1/kv/cfg", strings.NewReader("while away"))

		// ...and comes back: the change it missed is current, so it comes first.
		ctx2, cancel2 := context.WithCancel(testCtx(t))
		defer cancel2()
		events = ta.sse(t, ctx2, "/v1/watch/kv/cfg", "Last-Event-ID", fmt.Sprint(last))
		ev := nextEvent(t, events)
		if !strings.Contains(ev.data, base64("while away")) {
			t.Fatalf("resumed stream's first event = %+v", ev)
		}
		// Resuming at the current index waits for the next change.
		ctx3, cancel3 := context.WithCancel(testCtx(t))
		defer cancel3()
		current := ta.sse(t, ctx3, "/v1/watch/kv/cfg", "Last-Event-ID", ev.id)
		ta.do(t, "PUT", "/v1/kv/cfg", strings.NewReader("next"))
		if ev := nextEvent(t, current); !strings.Contains(ev.data, base64("next")) {
			t.Fatalf("stream resumed at the current index first saw %+v", ev)
		}
		// A prefix stream.
		prefix := ta.sse(t, ctx3, "/v1/watch/kv/?recurse")
		if ev := nextEvent(t, prefix); !strings.Contains(ev.data, `"Key":"cfg"`) {
			t.Fatalf("prefix stream = %+v", ev)
		}
	})
}

// A stream opened right after a PUT starts at (or after) that write: the
// stream reads its entry with read-your-writes first.
func TestSSEAfterWrite(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ta, _ := memAgent(t, nil)
		ta.do(t, "PUT", "/v1/kv/p/k", strings.NewReader("v0"))
		ctx, cancel := context.WithCancel(testCtx(t))
		defer cancel()
		nextEvent(t, ta.sse(t, ctx, "/v1/watch/kv/p/?recurse")) // the prefix entry is cached and watched
		for i := 1; i <= 100; i++ {
			want := fmt.Sprint("v", i)
			ta.do(t, "PUT", "/v1/kv/p/k", strings.NewReader(want))
			sctx, scancel := context.WithCancel(ctx)
			ev := nextEvent(t, ta.sse(t, sctx, "/v1/watch/kv/p/?recurse"))
			scancel()
			if !strings.Contains(ev.data, base64(want)) {
				t.Fatalf("stream opened after PUT %s began with %s", want, ev.data)
			}
		}
	})
}

// A stream resumed with a Last-Event-ID above the store's current index
// (the store was restored or rebuilt since) gets the current state at
// once, as a reset; so does a stream whose store is reset while it runs.
func TestSSEResets(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ta, store := memAgent(t, nil)
		ta.do(t, "PUT", "/v1/kv/cfg", strings.NewReader("now"))
		ctx, cancel := context.WithCancel(testCtx(t))
		defer cancel()
		events := ta.sse(t, ctx, "/v1/watch/kv/cfg", "Last-Event-ID", "1000")
		synctest.Wait()
		ev := nextEvent(t, events)
		if ev.event != "reset" || !strings.Contains(ev.data, base64("now")) {
			t.Fatalf("resumed above the current index: first event %+v, want a reset with the current state", ev)
		}
		ta.do(t, "PUT", "/v1/kv/cfg", strings.NewReader("next"))
		if ev := nextEvent(t, events); ev.event != "kv" || !strings.Contains(ev.data, base64("next")) {
			t.Fatalf("then %+v, want the next change", ev)
		}
		store.Reset()
		store.Put(ctx, watchcache.Partition{}, "cfg", []byte("rebuilt"))
		synctest.Wait()
		for {
			ev := nextEvent(t, events)
			if strings.Contains(ev.data, base64("rebuilt")) || ev.data == "[]" {
				if ev.event != "reset" {
					t.Fatalf("after the store was rebuilt: %+v, want a reset", ev)
				}
				break
			}
		}
	})
}

// A client that stops reading its event stream is dropped when an event
// is not taken within EventWriteTimeout, and counted; the agent shuts down
// at once even while a stuck client holds a stream.
func TestSSEStuckClient(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ta, _ := memAgent(t, nil)
		ta.do(t, "PUT", "/v1/kv/cfg", strings.NewReader("v"))
		stuck := func() net.Conn {
			conn, err := ta.dial(t.Context(), "", "")
			if err != nil {
				t.Fatal(err)
			}
			go io.WriteString(conn, "GET /v1/watch/kv/cfg HTTP/1.1\r\nHost: agent\r\n\r\n")
			return conn // never read: a pipe has no buffer, so the stream's first write blocks
		}
		first := stuck()
		defer first.Close()
		synctest.Wait()
		time.Sleep(11 * time.Second) // past EventWriteTimeout
		synctest.Wait()
		_, body := ta.do(t, "GET", "/metrics", nil)
		if !strings.Contains(body, "watchcache_agent_event_streams_dropped_total 1") {
			t.Fatalf("a stuck stream was not dropped and counted:\n%s", grepLines(body, "dropped"))
		}

		second := stuck()
		defer second.Close()
		synctest.Wait()
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := ta.Shutdown(ctx); err != nil {
			t.Fatalf("Shutdown with a stuck stream: %v", err)
		}
		if took := time.Since(start); took > time.Second {
			t.Fatalf("Shutdown with a stuck stream took %v", took)
		}
	})
}

// A client that takes a large event slowly but steadily is not dropped:
// the write deadline applies to each piece of an event, not to the whole.
func TestSSESlowReaderKept(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ta, _ := memAgent(t, nil)
		value := strings.Repeat("v", MaxValueSize)
		for _, k := range []string{"a", "b", "c", "d"} { // an event of about 2.7 MiB of JSON
			ta.do(t, "PUT", "/v1/kv/big/"+k, strings.NewReader(value))
		}
		conn, err := ta.dial(t.Context(), "", "")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		go io.WriteString(conn, "GET /v1/watch/kv/big/?recurse HTTP/1.1\r\nHost: agent\r\n\r\n")
		// 64 KiB a second: the whole event takes about 40s, 4 times
		// EventWriteTimeout; a piece, a second.
		buf := make([]byte, 64<<10)
		read := 0
		for read < 4*MaxValueSize*4/3 {
			n, err := conn.Read(buf)
			if err != nil {
				t.Fatalf("after %d bytes: %v", read, err)
			}
			read += n
			time.Sleep(time.Second)
		}
		_, body := ta.do(t, "GET", "/metrics", nil)
		if !strings.Contains(body, "watchcache_agent_event_streams_dropped_total 0") {
			t.Fatalf("a slow reader was dropped:\n%s", grepLines(body, "dropped"))
		}
	})
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
