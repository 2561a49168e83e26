package main

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strconv"
	"strings"
	"time"
)

// sseEvent is one event of a Server-Sent Events stream.
type sseEvent struct {
	// ID is the stream's last event ID when the event was dispatched: set by
	// this event's id field or an earlier one. A client that reconnects
	// sends it as Last-Event-ID.
	ID string
	// Type is the event field, "message" if the event named none.
	Type string
	// Data is the event's data lines joined by "\n".
	Data string
}

// errEventTooLarge is returned when an event's data outgrows the reader's
// limit.
var errEventTooLarge = errors.New("event stream: event larger than the limit")

// sseReader parses a text/event-stream as the HTML standard says
// ("Server-sent events", interpreting an event stream): lines end in CRLF,
// LF or CR; a line starting with ':' is a comment; "field: value" lines
// fill the event, one space after the colon being dropped; a blank line
// dispatches it, unless it has no data; id sets the last event ID (kept
// across events), retry the reconnection delay; unknown fields are
// ignored, and an event not ended by a blank line at the end of the stream
// is dropped. The zero value is not usable; create it with newSSEReader.
// An sseReader is used by one goroutine.
type sseReader struct {
	sc      *bufio.Scanner
	lines   lineSplitter
	started bool // a line was read: a byte-order mark is only skipped before the first
	maxData int

	// LastID is the last event ID: the value a reconnection sends.
	LastID string
	// Retry is the reconnection delay the stream asked for, 0 if none.
	Retry time.Duration
}

// newSSEReader returns a reader of the stream r whose lines, and events'
// data, are at most max bytes long; longer ones end the stream with an
// error (bufio.ErrTooLong, errEventTooLarge).
func newSSEReader(r io.Reader, max int) *sseReader {
	sr := &sseReader{sc: bufio.NewScanner(r), maxData: max}
	sr.sc.Buffer(make([]byte, 0, min(4096, max)), max)
	sr.sc.Split(sr.lines.split)
	return sr
}

// Next returns the next event. At the end of the stream it returns io.EOF,
// or the error that ended it.
func (r *sseReader) Next() (sseEvent, error) {
	var data strings.Builder
	typ := ""
	for r.sc.Scan() {
		line := r.sc.Bytes()
		if !r.started {
			r.started = true
			line = bytes.TrimPrefix(line, []byte("\uFEFF"))
		}
		if len(line) == 0 { // dispatch
			if data.Len() == 0 {
				typ = "" // nothing to dispatch: the standard drops the event type too
				continue
			}
			ev := sseEvent{ID: r.LastID, Type: typ, Data: strings.TrimSuffix(data.String(), "\n")}
			if ev.Type == "" {
				ev.Type = "message"
			}
			return ev, nil
		}
		if line[0] == ':' {
			continue // a comment, such as the agent's heartbeat
		}
		name, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(name) {
		case "event":
			typ = string(value)
		case "data":
			if data.Len()+len(value)+1 > r.maxData {
				return sseEvent{}, errEventTooLarge
			}
			data.Write(value)
			data.WriteByte('\n')
		case "id":
			if bytes.IndexByte(value, 0) < 0 {
				r.LastID = string(value)
			}
		case "retry":
			if ms, err := strconv.ParseUint(string(value), 10, 63); err == nil && isDigits(value) {
				r.Retry = time.Duration(min(ms, uint64(time.Hour/time.Millisecond))) * time.Millisecond
			}
		}
	}
	if err := r.sc.Err(); err != nil {
		return sseEvent{}, err
	}
	return sseEvent{}, io.EOF
}

// isDigits reports whether b is ASCII digits only (ParseUint also takes a
// leading '+', the standard does not).
func isDigits(b []byte) bool {
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return len(b) > 0
}

// lineSplitter is a bufio.SplitFunc (split) for lines ending in CRLF, LF or
// CR. A CR at the end of what was read so far ends its line at once, so a
// stream that ends lines with CR alone dispatches an event without waiting
// for the next byte; an LF that then follows it is skipped.
type lineSplitter struct {
	skipLF bool // the last line ended with a CR at the end of the data
}

func (s *lineSplitter) split(data []byte, atEOF bool) (advance int, token []byte, err error) {
	if s.skipLF && len(data) > 0 {
		s.skipLF = false
		if data[0] == '\n' {
			return 1, nil, nil
		}
	}
	if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
		if data[i] == '\r' {
			switch {
			case i+1 == len(data):
				s.skipLF = true
			case data[i+1] == '\n':
				return i + 2, data[:i], nil
			}
		}
		return i + 1, data[:i], nil
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil // a longer line: read more
}
