package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// kvTimeout bounds each kv request; the agent bounds its writes to etcd by
// 30s, so this leaves room for its answer.
const kvTimeout = time.Minute

const kvUsage = `Usage: watchcache kv <subcommand> [options] [KEY] [VALUE]

Reads and writes keys through a running agent, like consul kv. Keys are
sent exactly as typed: /config/db and config/db are two keys.

Subcommands:
  get [-recurse] KEY      print KEY's value; with -recurse one key:value line
                          per key under the prefix KEY (every key without KEY)
  put KEY [VALUE]         write VALUE (or @FILE, or - for standard input) to KEY
  delete [-recurse] KEY   delete KEY, or with -recurse every key under it
  export [PREFIX]         print the keys under PREFIX as JSON, as consul kv export
  import [@FILE|-|JSON]   write the keys of an export

Flags may follow the arguments; after -- everything is an argument (a key
that begins with '-'). Run 'watchcache kv <subcommand> -h' for the options.
`

// runKV dispatches the kv subcommands.
func runKV(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) == 0 {
		io.WriteString(stderr, kvUsage)
		return exitUsage
	}
	switch sub, rest := args[0], args[1:]; sub {
	case "get":
		return runKVGet(ctx, rest, stdout, stderr, getenv)
	case "put":
		return runKVPut(ctx, rest, stdin, stdout, stderr, getenv)
	case "delete":
		return runKVDelete(ctx, rest, stdout, stderr, getenv)
	case "export":
		return runKVExport(ctx, rest, stdout, stderr, getenv)
	case "import":
		return runKVImport(ctx, rest, stdin, stdout, stderr, getenv)
	case "-h", "-help", "--help", "help":
		io.WriteString(stdout, kvUsage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "watchcache kv: unknown subcommand %q\n\n%s", sub, kvUsage)
		return exitUsage
	}
}

// kvCommand is what the kv subcommands share: flags, argument checks and
// a client of the agent.
type kvCommand struct {
	*command
	client clientOptions
}

func newKVCommand(name, synopsis, about string, stderr io.Writer) *kvCommand {
	k := &kvCommand{command: newCommand(name, synopsis, about, stderr)}
	k.client.register(k.command)
	return k
}

// setup parses args, checks that between minArgs and maxArgs arguments
// remain (argNames names them), and connects. check, if set, validates the
// flags and returns a usage error message or "". ok false means stop with
// status code.
func (k *kvCommand) setup(args []string, minArgs, maxArgs int, argNames string, check func() string, stdout io.Writer, getenv func(string) string) (c *agentClient, code int, ok bool) {
	if code, ok := k.parse(args, stdout, getenv); !ok {
		return nil, code, false
	}
	if n := len(k.args); n < minArgs || n > maxArgs {
		return nil, k.usageErrorf("want %s, got %d argument(s)%s", argNames, n, k.argsHint()), false
	}
	if check != nil {
		if msg := check(); msg != "" {
			return nil, k.usageErrorf("%s", msg), false
		}
	}
	if msg := k.client.check(k.command); msg != "" {
		return nil, k.usageErrorf("%s", msg), false
	}
	return newAgentClient(k.client, kvTimeout), exitOK, true
}

// argsHint explains a surprising argument count: a value that looks like a
// flag but is not one was taken as an argument.
func (k *kvCommand) argsHint() string {
	if len(k.args) == 0 {
		return ""
	}
	return fmt.Sprintf(" (%q)", k.args)
}

// arg returns argument i, or def if there are fewer.
func (k *kvCommand) arg(i int, def string) string {
	if i < len(k.args) {
		return k.args[i]
	}
	return def
}

// fail prints the error of a request and returns exitError.
func (k *kvCommand) fail(what string, err error) int {
	base, _ := parseAgentURL(k.client.httpAddr)
	fmt.Fprintf(k.stderr, "Error! %s: %s\n", what, describe(err, base))
	return exitError
}

// shown is a key as messages show it: as typed if it is printable text
// (spaces included), and quoted as a Go string otherwise, so that a
// message never carries raw control bytes or invalid UTF-8.
func shown(key string) string {
	if utf8.ValidString(key) && !strings.ContainsFunc(key, func(r rune) bool { return !unicode.IsPrint(r) }) {
		return key
	}
	return strconv.Quote(key)
}
