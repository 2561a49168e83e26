package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// exportEntry is one key of consul kv export's JSON.
type exportEntry struct {
	Key   string `json:"key"`
	Flags uint64 `json:"flags"`
	Value string `json:"value"` // base64
}

// maxImportSize bounds an import's JSON.
const maxImportSize = 1 << 30

const kvExportAbout = `Prints every key under PREFIX (every key if PREFIX is not given) as a
JSON array in consul kv export's format, which kv import and consul kv
import read:

  [
  	{
  		"key": "app/db",
  		"flags": 0,
  		"value": "cG9zdGdyZXM="
  	}
  ]`

func runKVExport(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	k := newKVCommand("kv export", "[options] [PREFIX]", kvExportAbout, stderr)
	c, code, ok := k.setup(args, 0, 1, "[PREFIX]", nil, stdout, getenv)
	if !ok {
		return code
	}
	defer c.Close()
	prefix := k.arg(0, "")
	pairs, err := c.kvList(ctx, prefix)
	if err != nil {
		return k.fail("reading "+shown(prefix), err)
	}
	entries := make([]exportEntry, len(pairs))
	for i, p := range pairs {
		entries[i] = exportEntry{Key: p.Key, Flags: p.Flags, Value: base64.StdEncoding.EncodeToString(p.Value)}
	}
	b, err := json.MarshalIndent(entries, "", "\t")
	if err != nil {
		return k.fail("encoding", err)
	}
	if _, err := stdout.Write(append(b, '\n')); err != nil {
		return k.fail("writing output", err)
	}
	return exitOK
}

const kvImportAbout = `Writes the keys of a JSON export (kv export's or consul kv export's
format) read from @FILE, from standard input (- or no argument), or given
as the argument itself. The whole input is checked before anything is
written: an entry that is not valid (no key, a value that is not base64,
flags other than 0, which the agent does not store) writes nothing. Prints
"Imported: KEY" for each key written; a failed write stops the import
(exit status 1) and the keys printed before it were written.`

func runKVImport(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	k := newKVCommand("kv import", "[options] [@FILE|-|JSON]", kvImportAbout, stderr)
	prefix := k.fs.String("prefix", "", "a `prefix` put before every imported key")
	c, code, ok := k.setup(args, 0, 1, "[@FILE|-|JSON]", nil, stdout, getenv)
	if !ok {
		return code
	}
	defer c.Close()
	data, err := readImport(k.arg(0, "-"), stdin)
	if err != nil {
		fmt.Fprintf(stderr, "Error! %v\n", err)
		return exitError
	}
	writes, err := parseExport(data, *prefix)
	if err != nil {
		fmt.Fprintf(stderr, "Error! nothing imported: %v\n", err)
		return exitError
	}
	for _, w := range writes {
		if _, err := c.kvPut(ctx, w.key, w.value, nil); err != nil {
			return k.fail("importing "+shown(w.key), err)
		}
		fmt.Fprintf(stdout, "Imported: %s\n", shown(w.key))
	}
	return exitOK
}

// importWrite is one key kv import writes.
type importWrite struct {
	key   string
	value []byte
}

// parseExport reads an export's JSON and returns its keys (with prefix
// before each) and values, or an error naming the first entry that is not
// valid.
func parseExport(data []byte, prefix string) ([]importWrite, error) {
	var entries []exportEntry
	if err := json.Unmarshal(data, &entries); err != nil {
		return nil, fmt.Errorf("the input is not a kv export (a JSON array of {\"key\", \"flags\", \"value\"}): %v", err)
	}
	writes := make([]importWrite, len(entries))
	for i, e := range entries {
		v, err := base64.StdEncoding.Strict().DecodeString(e.Value)
		switch {
		case e.Key == "" && prefix == "":
			return nil, fmt.Errorf("entry %d has no key", i)
		case err != nil:
			return nil, fmt.Errorf("entry %d (%s): the value is not base64: %v", i, strconv.Quote(e.Key), err)
		case e.Flags != 0:
			return nil, fmt.Errorf("entry %d (%s): flags %d: the agent stores only flags 0", i, strconv.Quote(e.Key), e.Flags)
		case len(v) > maxValueSize:
			return nil, fmt.Errorf("entry %d (%s): the value is over the agent's limit of %d bytes", i, strconv.Quote(e.Key), maxValueSize)
		}
		writes[i] = importWrite{key: prefix + e.Key, value: v}
	}
	return writes, nil
}

// readImport returns the JSON kv import reads: from a file (@FILE),
// standard input (-), or the argument itself.
func readImport(arg string, stdin io.Reader) ([]byte, error) {
	var r io.Reader
	switch {
	case arg == "-":
		if stdin == nil {
			return nil, fmt.Errorf("no standard input to read the export from")
		}
		r = stdin
	case strings.HasPrefix(arg, "@"):
		f, err := os.Open(arg[1:])
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	default:
		return []byte(arg), nil
	}
	b, err := io.ReadAll(io.LimitReader(r, maxImportSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading the export: %w", err)
	}
	if len(b) > maxImportSize {
		return nil, fmt.Errorf("the export is over %d bytes", maxImportSize)
	}
	return b, nil
}
