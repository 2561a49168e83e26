package main

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

// readAll parses a whole stream: its events, the last event ID and retry,
// and the error that ended it (nil for a clean end).
func readAll(r io.Reader, max int) (evs []sseEvent, last string, retry time.Duration, err error) {
	sr := newSSEReader(r, max)
	for {
		ev, err := sr.Next()
		if errors.Is(err, io.EOF) {
			return evs, sr.LastID, sr.Retry, nil
		}
		if err != nil {
			return evs, sr.LastID, sr.Retry, err
		}
		evs = append(evs, ev)
	}
}

// encodeEvents writes events as a well-formed stream: every field of every
// event, data split into one line per "\n".
func encodeEvents(evs []sseEvent) []byte {
	var b bytes.Buffer
	for _, ev := range evs {
		b.WriteString("id: " + ev.ID + "\nevent: " + ev.Type + "\n")
		for line := range strings.SplitSeq(ev.Data, "\n") {
			b.WriteString("data: " + line + "\n")
		}
		b.WriteString("\n")
	}
	return b.Bytes()
}

// The reader follows the HTML standard's rules for event streams,
// including its own examples.
func TestSSEReader(t *testing.T) {
	msg := func(id, data string) sseEvent { return sseEvent{ID: id, Type: "message", Data: data} }
	for _, tc := range []struct {
		name   string
		stream string
		want   []sseEvent
		last   string
		retry  time.Duration
	}{
		{"the agent's stream", "retry: 1000\n\nid: 12\nevent: kv\ndata: [{\"Key\":\"a\"}]\n\n: heartbeat\n\nid: 13\nevent: kv\ndata: []\n\n",
			[]sseEvent{{"12", "kv", `[{"Key":"a"}]`}, {"13", "kv", "[]"}}, "13", time.Second},
		{"multi-line data", "data: YHOO\ndata: +2\ndata: 10\n\n", []sseEvent{msg("", "YHOO\n+2\n10")}, "", 0},
		{"comment, id kept across events", ": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n",
			[]sseEvent{msg("1", "first event"), msg("", "second event"), msg("", " third event")}, "", 0},
		{"empty data and a field without colon", "data\n\ndata\ndata\n\ndata:", []sseEvent{msg("", ""), msg("", "\n")}, "", 0},
		{"one space dropped", "data:test\n\ndata: test\n\ndata:  test\n\n", []sseEvent{msg("", "test"), msg("", "test"), msg("", " test")}, "", 0},
		{"CRLF and CR line ends", "id: 1\r\ndata: a\r\n\r\nid: 2\rdata: b\r\rdata: c\n\r\n", []sseEvent{msg("1", "a"), msg("2", "b"), msg("2", "c")}, "2", 0},
		{"byte-order mark at the start only", "\uFEFFdata: a\n\n\uFEFFdata: b\n\n", []sseEvent{msg("", "a")}, "", 0},
		{"event without data is not dispatched and drops its type", "event: kv\n\ndata: x\n\n", []sseEvent{msg("", "x")}, "", 0},
		{"unfinished event at the end is dropped", "data: a\n\ndata: b\n", []sseEvent{msg("", "a")}, "", 0},
		{"id with NUL ignored", "id: 5\n\nid: a\x00b\ndata: x\n\n", []sseEvent{msg("5", "x")}, "5", 0},
		{"empty id resets", "id: 5\ndata: x\n\nid:\ndata: y\n\n", []sseEvent{msg("5", "x"), msg("", "y")}, "", 0},
		{"retry digits only", "retry: 250\n\nretry: +5\n\nretry: 1s\n\nretry:\n\n", nil, "", 250 * time.Millisecond},
		{"unknown fields and empty event name", "foo: bar\nevent:\ndata: x\n\n", []sseEvent{msg("", "x")}, "", 0},
		{"last event wins type", "event: a\nevent: b\ndata: x\n\n", []sseEvent{{"", "b", "x"}}, "", 0},
		{"empty stream", "", nil, "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Whole, and a byte at a time: where reads end must not matter
			// (a CR at the end of one read, an LF at the start of the next).
			for _, r := range []io.Reader{strings.NewReader(tc.stream), iotest.OneByteReader(strings.NewReader(tc.stream))} {
				evs, last, retry, err := readAll(r, 1<<10)
				if err != nil || !reflect.DeepEqual(evs, tc.want) || last != tc.last || retry != tc.retry {
					t.Fatalf("got %q, last ID %q, retry %v, %v\nwant %q, last ID %q, retry %v", evs, last, retry, err, tc.want, tc.last, tc.retry)
				}
			}
		})
	}
}

// A live stream that ends lines with CR alone dispatches an event as soon
// as its blank line arrives, without waiting for the next byte.
func TestSSEReaderCRDispatchesAtOnce(t *testing.T) {
	pr, pw := io.Pipe()
	defer pw.Close()
	sr := newSSEReader(pr, 1<<10)
	go pw.Write([]byte("data: x\r\r")) // the rest of the stream never comes
	ev, err := sr.Next()
	if err != nil || ev.Data != "x" {
		t.Fatalf("Next = %+v, %v", ev, err)
	}
}

// Lines and events beyond the limit end the stream with an error rather
// than growing memory without bound.
func TestSSEReaderLimits(t *testing.T) {
	_, _, _, err := readAll(strings.NewReader("data: "+strings.Repeat("x", 100)+"\n\n"), 64)
	if !errors.Is(err, bufio.ErrTooLong) {
		t.Errorf("a line over the limit: %v, want bufio.ErrTooLong", err)
	}
	_, _, _, err = readAll(strings.NewReader(strings.Repeat("data: 0123456789\n", 10)+"\n"), 64)
	if !errors.Is(err, errEventTooLarge) {
		t.Errorf("an event over the limit: %v, want errEventTooLarge", err)
	}
	evs, _, _, err := readAll(strings.NewReader("data: 01234567890123456789\n\n"), 64)
	if err != nil || len(evs) != 1 {
		t.Errorf("an event within the limit: %q, %v", evs, err)
	}
}

// FuzzSSEReader: any bytes are parsed without a panic or a hang, the
// result does not depend on how reads split the stream, and the events
// parsed from any stream, written back as a well-formed stream, parse to
// the same events (and the same last event ID).
func FuzzSSEReader(f *testing.F) {
	for _, seed := range []string{
		"retry: 1000\n\nid: 12\nevent: kv\ndata: [{\"Key\":\"a\",\"Value\":\"eA==\"}]\n\n: heartbeat\n\n",
		"event: error\ndata: {\"error\":\"Permission denied\"}\n\n",
		"data: a\r\ndata: b\r\rid: 7\r\n\r\n",
		"\uFEFFdata:x\n\nid: a\x00b\n\ndata\n\n",
		"data: " + strings.Repeat("y", 300) + "\n\n",
		"id:\nevent:\ndata:\n\n\r\r\n\n",
		"",
	} {
		f.Add([]byte(seed))
	}
	const max = 256 // small, so that the limits are exercised too
	f.Fuzz(func(t *testing.T, stream []byte) {
		evs, last, retry, err := readAll(bytes.NewReader(stream), max)
		if err != nil && !errors.Is(err, bufio.ErrTooLong) && !errors.Is(err, errEventTooLarge) {
			t.Fatalf("unexpected error %v", err)
		}
		evs1, last1, retry1, err1 := readAll(iotest.OneByteReader(bytes.NewReader(stream)), max)
		if !reflect.DeepEqual(evs1, evs) || last1 != last || retry1 != retry || !errors.Is(err1, err) && err1 != err {
			t.Fatalf("read a byte at a time: %q %q %v %v\nread whole: %q %q %v %v", evs1, last1, retry1, err1, evs, last, retry, err)
		}
		for _, ev := range evs {
			if ev.Type == "" || strings.ContainsAny(ev.ID+ev.Type+ev.Data, "\r") || strings.ContainsAny(ev.ID+ev.Type, "\n") || strings.Contains(ev.ID, "\x00") {
				t.Fatalf("malformed event %q", ev)
			}
		}
		encoded := encodeEvents(evs)
		evs2, last2, _, err := readAll(bytes.NewReader(encoded), 4*max)
		if err != nil {
			t.Fatalf("re-reading %q: %v", encoded, err)
		}
		wantLast := ""
		if len(evs) > 0 {
			wantLast = evs[len(evs)-1].ID
		}
		if !reflect.DeepEqual(evs2, evs) || last2 != wantLast {
			t.Fatalf("round trip of %q\n got %q (last ID %q)\nwant %q (last ID %q)", encoded, evs2, last2, evs, wantLast)
		}
	})
}
