package main

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"slices"
	"strings"
	"testing"
)

// Any input to kv import either fails with an error or yields keys whose
// values round-trip through kv export's encoding; it never panics.
func FuzzParseExport(f *testing.F) {
	f.Add([]byte(`[{"key":"a","flags":0,"value":"dg=="}]`), "")
	f.Add([]byte(`[{"key":"","flags":0,"value":""}]`), "p/")
	f.Add([]byte(`[{"key":"a","flags":1,"value":"%%"}]`), "")
	f.Add([]byte(`{"key":"a"}`), "")
	f.Add([]byte(`null`), "")
	f.Fuzz(func(t *testing.T, data []byte, prefix string) {
		writes, err := parseExport(data, prefix)
		if err != nil {
			return
		}
		var entries []exportEntry
		if json.Unmarshal(data, &entries) != nil || len(entries) != len(writes) {
			t.Fatalf("parsed %d writes from input that decodes to %d entries", len(writes), len(entries))
		}
		for i, w := range writes {
			if w.key == "" || w.key != prefix+entries[i].Key {
				t.Fatalf("write %d: key %q from entry key %q and prefix %q", i, w.key, entries[i].Key, prefix)
			}
			if enc := base64.StdEncoding.EncodeToString(w.value); enc != entries[i].Value {
				t.Fatalf("write %d: value %q encodes to %q, not the entry's %q", i, w.value, enc, entries[i].Value)
			}
		}
	})
}

// Flags may come anywhere among the arguments: whatever the command line,
// parsing never panics, and the arguments it keeps are the command line's
// non-flag words in their order.
func FuzzCommandArgs(f *testing.F) {
	f.Add("get\x00-recurse\x00/config/\x00-keys")
	f.Add("k\x00--\x00-5\x00-recurse")
	f.Add("-\x00-format\x00json\x00x")
	f.Add("-format=json\x00--\x00")
	f.Fuzz(func(t *testing.T, line string) {
		args := strings.Split(line, "\x00")
		c := newCommand("test", "", "", io.Discard)
		c.fs.Bool("recurse", false, "")
		c.fs.String("format", "", "")
		if _, ok := c.parse(args, io.Discard, func(string) string { return "" }); !ok {
			return
		}
		// Every argument kept is a word of the command line, in order.
		i := 0
		for _, a := range c.args {
			j := slices.Index(args[i:], a)
			if j < 0 {
				t.Fatalf("argument %q is not in %q after position %d", a, args, i)
			}
			i += j + 1
		}
	})
}
