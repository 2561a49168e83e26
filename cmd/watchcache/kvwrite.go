package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"strings"
)

// maxValueSize is the largest value the agent stores (Consul's limit).
const maxValueSize = 512 << 10

const kvPutAbout = `Writes VALUE to KEY. VALUE is taken as it is, except:
  @FILE  the contents of FILE
  -      standard input
and with no VALUE the key is written empty. With -base64, the data (from
whichever source) is base64 and is decoded before it is written: use it
for binary values, or for a literal value that begins with '@' or is "-".

With -cas, the write happens only if KEY's ModifyIndex is -modify-index
(0: only if KEY does not exist); otherwise nothing is written and the
command fails (exit status 1).`

func runKVPut(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	k := newKVCommand("kv put", "[options] KEY [VALUE|@FILE|-]", kvPutAbout, stderr)
	b64 := k.fs.Bool("base64", false, "the data is base64: decode it before writing")
	cas := k.fs.Bool("cas", false, "write only if KEY's ModifyIndex is -modify-index (0: only if KEY does not exist)")
	modifyIndex := k.fs.Uint64("modify-index", 0, "the ModifyIndex `index` -cas expects")
	check := func() string {
		if k.isSet("modify-index") && !*cas {
			return "-modify-index applies to -cas"
		}
		return ""
	}
	c, code, ok := k.setup(args, 1, 2, "KEY [VALUE]", check, stdout, getenv)
	if !ok {
		return code
	}
	defer c.Close()
	key := k.args[0]
	value, err := readValue(k.args[1:], stdin, *b64)
	if err != nil {
		fmt.Fprintf(stderr, "Error! %s: %v\n", shown(key), err)
		return exitError
	}
	var casIndex *uint64
	if *cas {
		casIndex = modifyIndex
	}
	wrote, err := c.kvPut(ctx, key, value, casIndex)
	switch {
	case err != nil:
		return k.fail("writing "+shown(key), err)
	case !wrote:
		fmt.Fprintf(stderr, "Error! Did not write to %s: CAS failed (its ModifyIndex is not %d)\n", shown(key), *modifyIndex)
		return exitError
	}
	fmt.Fprintf(stdout, "Success! Data written to: %s\n", shown(key))
	return exitOK
}

// readValue returns the value kv put writes from its VALUE argument (none,
// a literal, @FILE or - for stdin), base64-decoded if b64.
func readValue(args []string, stdin io.Reader, b64 bool) ([]byte, error) {
	var data []byte
	switch {
	case len(args) == 0:
		data = []byte{}
	case args[0] == "-":
		if stdin == nil {
			return nil, fmt.Errorf("no standard input to read the value from")
		}
		b, err := io.ReadAll(io.LimitReader(stdin, 2*maxValueSize+1))
		if err != nil {
			return nil, fmt.Errorf("reading standard input: %w", err)
		}
		data = b
	case strings.HasPrefix(args[0], "@"):
		f, err := os.Open(args[0][1:])
		if err != nil {
			return nil, err
		}
		defer f.Close()
		b, err := io.ReadAll(io.LimitReader(f, 2*maxValueSize+1))
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", args[0][1:], err)
		}
		data = b
	default:
		data = []byte(args[0])
	}
	if b64 {
		dec, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(data)))
		if err != nil {
			return nil, fmt.Errorf("-base64: the value is not base64: %w", err)
		}
		data = dec
	}
	if len(data) > maxValueSize {
		return nil, fmt.Errorf("the value is over the agent's limit of %d bytes", maxValueSize)
	}
	return data, nil
}

const kvDeleteAbout = `Deletes KEY; with -recurse, every key under the prefix KEY (give ""
explicitly to delete every key). Deleting a missing key succeeds, as in
Consul.

With -cas, KEY is deleted only if its ModifyIndex is -modify-index;
otherwise nothing is deleted and the command fails (exit status 1).`

func runKVDelete(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	k := newKVCommand("kv delete", "[options] KEY", kvDeleteAbout, stderr)
	recurse := k.fs.Bool("recurse", false, "delete every key under the prefix KEY")
	cas := k.fs.Bool("cas", false, "delete only if KEY's ModifyIndex is -modify-index")
	modifyIndex := k.fs.Uint64("modify-index", 0, "the ModifyIndex `index` -cas expects")
	check := func() string {
		switch {
		case *cas && *recurse:
			return "-cas deletes one key: it cannot be used with -recurse"
		case *cas && !k.isSet("modify-index"):
			return "-cas needs -modify-index (the ModifyIndex that kv get -detailed prints)"
		case k.isSet("modify-index") && !*cas:
			return "-modify-index applies to -cas"
		}
		return ""
	}
	c, code, ok := k.setup(args, 1, 1, "KEY", check, stdout, getenv)
	if !ok {
		return code
	}
	defer c.Close()
	key := k.args[0]
	var casIndex *uint64
	if *cas {
		casIndex = modifyIndex
	}
	deleted, err := c.kvDelete(ctx, key, *recurse, casIndex)
	switch {
	case err != nil:
		return k.fail("deleting "+shown(key), err)
	case !deleted:
		fmt.Fprintf(stderr, "Error! Did not delete key %s: CAS failed (its ModifyIndex is not %d)\n", shown(key), *modifyIndex)
		return exitError
	case *recurse:
		fmt.Fprintf(stdout, "Success! Deleted keys with prefix: %s\n", shown(key))
	default:
		fmt.Fprintf(stdout, "Success! Deleted key: %s\n", shown(key))
	}
	return exitOK
}
