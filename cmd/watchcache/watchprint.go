package main

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/consul/api"
)

// change is one line of watch's output.
type change struct {
	index string
	key   string
	pair  *api.KVPair // the key's state; nil when it is deleted or missing
	what  string      // "deleted", "missing" or "reset" when pair is nil
}

// print prints what changed in the state that a kv or reset event carries
// (the JSON body a GET of the key or prefix would get; [] when nothing
// exists). A reset replaces the state printed so far: its indexes are from
// another history, so every current key is printed again.
func (w *watcher) print(ev sseEvent) error {
	var pairs []*api.KVPair
	if err := json.Unmarshal([]byte(ev.Data), &pairs); err != nil {
		return fmt.Errorf("the agent sent an event that is not a list of keys: %w", err)
	}
	var changes []change
	if ev.Type == "reset" {
		changes = append(changes, change{index: ev.ID, what: "reset"})
		w.seen = false // print KEY's state, whatever it is
		for key := range w.keys {
			w.keys[key] = 0 // no key has ModifyIndex 0: all print again
		}
	}
	if w.prefix {
		changes = append(changes, w.prefixChanges(ev.ID, pairs)...)
	} else {
		changes = append(changes, w.keyChange(ev.ID, pairs)...)
	}
	for _, c := range changes {
		if err := w.write(c); err != nil {
			return fmt.Errorf("writing output: %w", err)
		}
	}
	return nil
}

// keyChange returns KEY's new state, if it changed.
func (w *watcher) keyChange(index string, pairs []*api.KVPair) []change {
	var cur *api.KVPair
	for _, p := range pairs {
		if p != nil && p.Key == w.key {
			cur = p
		}
	}
	switch {
	case cur == nil && w.seen && !w.exists,
		cur != nil && w.seen && w.exists && cur.ModifyIndex == w.modified:
		return nil // the same state again (after a reconnection)
	case cur == nil:
		what := "missing"
		if w.exists {
			what = "deleted"
		}
		w.seen, w.exists, w.modified = true, false, 0
		return []change{{index: index, key: w.key, what: what}}
	}
	w.seen, w.exists, w.modified = true, true, cur.ModifyIndex
	return []change{{index: index, key: cur.Key, pair: cur}}
}

// prefixChanges returns each key written or deleted since the last state,
// in key order.
func (w *watcher) prefixChanges(index string, pairs []*api.KVPair) []change {
	var changes []change
	now := make(map[string]uint64, len(pairs))
	for _, p := range pairs {
		if p == nil {
			continue
		}
		now[p.Key] = p.ModifyIndex
		if old, ok := w.keys[p.Key]; !ok || old != p.ModifyIndex {
			changes = append(changes, change{index: index, key: p.Key, pair: p})
		}
	}
	for key := range w.keys {
		if _, ok := now[key]; !ok {
			changes = append(changes, change{index: index, key: key, what: "deleted"})
		}
	}
	w.keys = now
	slices.SortFunc(changes, func(a, b change) int { return strings.Compare(a.key, b.key) })
	return changes
}

// watchJSON is a change as -format json prints it.
type watchJSON struct {
	Index       uint64  `json:"index"`
	Key         *string `json:"key,omitempty"`
	Value       *[]byte `json:"value,omitempty"` // base64; nil for no key
	CreateIndex uint64  `json:"create_index,omitempty"`
	ModifyIndex uint64  `json:"modify_index,omitempty"`
	Flags       *uint64 `json:"flags,omitempty"`
	Deleted     bool    `json:"deleted,omitempty"`
	Missing     bool    `json:"missing,omitempty"`
	Reset       bool    `json:"reset,omitempty"`
}

// write prints c as a line of text or JSON.
func (w *watcher) write(c change) error {
	if w.json {
		index, _ := strconv.ParseUint(c.index, 10, 64)
		j := watchJSON{Index: index, Deleted: c.what == "deleted", Missing: c.what == "missing", Reset: c.what == "reset"}
		if c.what != "reset" {
			j.Key = &c.key
		}
		if p := c.pair; p != nil {
			v := p.Value
			if v == nil {
				v = []byte{} // "value":"" rather than null
			}
			j.Value, j.CreateIndex, j.ModifyIndex, j.Flags = &v, p.CreateIndex, p.ModifyIndex, &p.Flags
		}
		return writeJSONLine(w.out, j)
	}
	var line string
	switch {
	case c.what == "reset":
		line = c.index + " (reset)"
	case c.pair == nil:
		line = c.index + " " + quoteKey(c.key) + " (" + c.what + ")"
	default:
		line = c.index + " " + quoteKey(c.key) + " " + quoteValue(string(c.pair.Value))
	}
	_, err := io.WriteString(w.out, line+"\n")
	return err
}

// quoteValue returns s as it is if it reads unambiguously as the last
// field of a line, and as a Go string literal otherwise: empty, not valid
// UTF-8, with a character that is not printable (a newline, a tab), with
// leading or trailing spaces, or starting with '"' (a quoted field) or '('
// (the (missing) and (deleted) markers).
func quoteValue(s string) string {
	if s == "" || !utf8.ValidString(s) || s[0] == '"' || s[0] == '(' || strings.TrimSpace(s) != s ||
		strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) {
		return strconv.Quote(s)
	}
	return s
}

// quoteKey is quoteValue for a field in the middle of a line, which must
// not contain a space either.
func quoteKey(s string) string {
	if strings.Contains(s, " ") {
		return strconv.Quote(s)
	}
	return quoteValue(s)
}
