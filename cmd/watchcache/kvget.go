package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/hashicorp/consul/api"
)

const kvGetAbout = `Prints the value of KEY, followed by a newline, as it is stored (use
-base64 for binary values). A missing KEY is an error (exit status 1).

With -recurse, prints one KEY:VALUE line per key under the prefix KEY (all
keys if KEY is not given), in key order, as consul kv get -recurse does,
and nothing if there is none. In such lines a key or value that is not
printable single-line text or that begins with '"' or '(', or a key with
':' or a space, is printed quoted as a Go string ("a\nb"), so each key
stays one line; an empty value is printed as nothing ("key:").

With -keys, prints the key names under the prefix KEY, one per line, cut
after the -separator (as consul kv get -keys). -detailed prints every
field of each key, as consul kv get -detailed. -format json prints one JSON
object per key and line:
  {"key":"app/db","flags":0,"value":"<base64>","create_index":5,"modify_index":7,"lock_index":0}
(with -keys: {"key":"app/"}).`

// formatValue is an output format: text or json.
type formatValue struct{ p *string }

func (v formatValue) String() string {
	if v.p == nil || *v.p == "" {
		return "text"
	}
	return *v.p
}

func (v formatValue) Set(s string) error {
	if s != "text" && s != "json" {
		return errors.New("must be text or json")
	}
	*v.p = s
	return nil
}

func runKVGet(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	k := newKVCommand("kv get", "[options] [KEY]", kvGetAbout, stderr)
	recurse := k.fs.Bool("recurse", false, "print every key under the prefix KEY (every key if KEY is not given)")
	keys := k.fs.Bool("keys", false, "print the key names under the prefix KEY, cut after -separator")
	separator := k.fs.String("separator", "/", "with -keys, the `string` after which names are cut (\"\" for none)")
	detailed := k.fs.Bool("detailed", false, "print every field of each key")
	b64 := k.fs.Bool("base64", false, "print values base64-encoded")
	format := "text"
	k.fs.Var(formatValue{&format}, "format", "output `format`: text or json (one object per line)")
	check := func() string {
		switch {
		case *recurse && *keys:
			return "-recurse and -keys cannot be used together"
		case *keys && (*detailed || *b64):
			return "-keys prints names only: -detailed and -base64 do not apply"
		case *detailed && format == "json":
			return "-detailed is a text format: use -format text or drop -detailed"
		case k.isSet("separator") && !*keys:
			return "-separator applies to -keys"
		case len(k.args) == 0 && !*recurse && !*keys:
			return "want KEY (or -recurse or -keys to list from the root)"
		}
		return ""
	}
	c, code, ok := k.setup(args, 0, 1, "[KEY]", check, stdout, getenv)
	if !ok {
		return code
	}
	defer c.Close()
	key := k.arg(0, "")
	p := pairPrinter{w: stdout, base64: *b64, json: format == "json", detailed: *detailed}
	switch {
	case *keys:
		names, err := c.kvKeys(ctx, key, *separator)
		if err != nil {
			return k.fail("listing "+shown(key), err)
		}
		for _, name := range names {
			if err := p.name(name); err != nil {
				return k.fail("writing output", err)
			}
		}
	case *recurse:
		pairs, err := c.kvList(ctx, key)
		if err != nil {
			return k.fail("reading "+shown(key), err)
		}
		for i, pair := range pairs {
			if err := p.line(pair, i); err != nil {
				return k.fail("writing output", err)
			}
		}
	default:
		pair, err := c.kvGet(ctx, key)
		switch {
		case err != nil:
			return k.fail("reading "+shown(key), err)
		case pair == nil:
			fmt.Fprintf(stderr, "Error! No key exists at: %s\n", shown(key))
			return exitError
		}
		if err := p.single(pair); err != nil {
			return k.fail("writing output", err)
		}
	}
	return exitOK
}

// pairPrinter prints keys as kv get's options say.
type pairPrinter struct {
	w        io.Writer
	base64   bool // values base64-encoded
	json     bool // one JSON object per line
	detailed bool // every field, as consul kv get -detailed
}

// jsonPair is a key as -format json prints it.
type jsonPair struct {
	Key         string `json:"key"`
	Flags       uint64 `json:"flags"`
	Value       []byte `json:"value"` // base64
	CreateIndex uint64 `json:"create_index"`
	ModifyIndex uint64 `json:"modify_index"`
	LockIndex   uint64 `json:"lock_index"`
}

func newJSONPair(p *api.KVPair) jsonPair {
	v := p.Value
	if v == nil {
		v = []byte{}
	}
	return jsonPair{Key: p.Key, Flags: p.Flags, Value: v, CreateIndex: p.CreateIndex, ModifyIndex: p.ModifyIndex, LockIndex: p.LockIndex}
}

// single prints one key read by itself: its value as stored, unless a
// format or -base64 says otherwise.
func (pp pairPrinter) single(p *api.KVPair) error {
	switch {
	case pp.json || pp.detailed:
		return pp.line(p, 0)
	case pp.base64:
		_, err := fmt.Fprintf(pp.w, "%s\n", base64.StdEncoding.EncodeToString(p.Value))
		return err
	}
	_, err := fmt.Fprintf(pp.w, "%s\n", p.Value)
	return err
}

// line prints the i-th key of a listing.
func (pp pairPrinter) line(p *api.KVPair, i int) error {
	switch {
	case pp.json:
		return writeJSONLine(pp.w, newJSONPair(p))
	case pp.detailed:
		if i > 0 {
			if _, err := io.WriteString(pp.w, "\n"); err != nil {
				return err
			}
		}
		return pp.details(p)
	}
	_, err := fmt.Fprintf(pp.w, "%s:%s\n", quoteListedKey(p.Key), pp.value(p.Value))
	return err
}

// details prints p's fields, one per line, as consul kv get -detailed.
func (pp pairPrinter) details(p *api.KVPair) error {
	tw := tabwriter.NewWriter(pp.w, 0, 2, 6, ' ', 0)
	session := p.Session
	if session == "" {
		session = "-"
	}
	fmt.Fprintf(tw, "CreateIndex\t%d\n", p.CreateIndex)
	fmt.Fprintf(tw, "Flags\t%d\n", p.Flags)
	fmt.Fprintf(tw, "Key\t%s\n", quoteKey(p.Key))
	fmt.Fprintf(tw, "LockIndex\t%d\n", p.LockIndex)
	fmt.Fprintf(tw, "ModifyIndex\t%d\n", p.ModifyIndex)
	fmt.Fprintf(tw, "Session\t%s\n", session)
	fmt.Fprintf(tw, "Value\t%s\n", pp.value(p.Value))
	return tw.Flush()
}

// value is a value as a line shows it: base64, or text quoted if needed.
func (pp pairPrinter) value(v []byte) string {
	if pp.base64 {
		return base64.StdEncoding.EncodeToString(v)
	}
	if len(v) == 0 {
		return "" // as consul prints an empty value: "key:"
	}
	return quoteValue(string(v))
}

// name prints a key name of a -keys listing.
func (pp pairPrinter) name(n string) error {
	if pp.json {
		return writeJSONLine(pp.w, struct {
			Key string `json:"key"`
		}{n})
	}
	_, err := fmt.Fprintf(pp.w, "%s\n", quoteKey(n))
	return err
}

// quoteListedKey is quoteKey for the KEY:VALUE lines of a listing, where a
// ':' in the key would be read as the end of the key.
func quoteListedKey(k string) string {
	if strings.Contains(k, ":") {
		return fmt.Sprintf("%q", k)
	}
	return quoteKey(k)
}

// writeJSONLine writes v as one line of JSON.
func writeJSONLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
