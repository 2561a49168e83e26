package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/hashicorp/consul/api"
)

// kvTimeout bounds each kv request; the agent bounds its writes to etcd by
// 30s, so this leaves room for its answer.
const kvTimeout = time.Minute

const kvUsage = `Usage: watchcache kv <subcommand> [options] KEY [VALUE]

Reads and writes keys through a running agent, like consul kv.

Subcommands:
  get [-recurse] KEY      print KEY's value; with -recurse one key:value line
                          per key under the prefix KEY
  put KEY VALUE           write VALUE to KEY
  delete [-recurse] KEY   delete KEY, or with -recurse every key under it

Run 'watchcache kv <subcommand> -h' for the options.
`

// runKV dispatches the kv subcommands.
func runKV(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) == 0 {
		io.WriteString(stderr, kvUsage)
		return exitUsage
	}
	switch sub, rest := args[0], args[1:]; sub {
	case "get":
		return runKVGet(ctx, rest, stdout, stderr, getenv)
	case "put":
		return runKVPut(ctx, rest, stdout, stderr, getenv)
	case "delete":
		return runKVDelete(ctx, rest, stdout, stderr, getenv)
	case "-h", "-help", "--help", "help":
		io.WriteString(stdout, kvUsage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "watchcache kv: unknown subcommand %q\n\n%s", sub, kvUsage)
		return exitUsage
	}
}

// kvCommand is what the kv subcommands share: flags, argument checks and
// a consul/api client of the agent.
type kvCommand struct {
	*command
	client clientOptions
}

func newKVCommand(name, synopsis, about string, stderr io.Writer) *kvCommand {
	k := &kvCommand{command: newCommand(name, synopsis, about, stderr)}
	k.client.register(k.command)
	return k
}

// setup parses args, checks that nargs arguments remain, and connects.
// ok false means stop with status code.
func (k *kvCommand) setup(args []string, nargs int, argNames string, stdout io.Writer, getenv func(string) string) (kv *api.KV, done func(), code int, ok bool) {
	if code, ok := k.parse(args, stdout, getenv); !ok {
		return nil, nil, code, false
	}
	if k.fs.NArg() != nargs {
		return nil, nil, k.usageErrorf("want %s, got %d argument(s)", argNames, k.fs.NArg()), false
	}
	if msg := k.client.check(k.command); msg != "" {
		return nil, nil, k.usageErrorf("%s", msg), false
	}
	c := newAgentClient(k.client, kvTimeout)
	cli, err := c.consul()
	if err != nil {
		c.Close()
		fmt.Fprintf(k.stderr, "Error! %v\n", err)
		return nil, nil, exitError, false
	}
	return cli.KV(), c.Close, exitOK, true
}

// fail prints the error of a request and returns exitError.
func (k *kvCommand) fail(what string, err error) int {
	base, _ := parseAgentURL(k.client.httpAddr)
	fmt.Fprintf(k.stderr, "Error! %s: %s\n", what, describe(err, base))
	return exitError
}

func runKVGet(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	k := newKVCommand("kv get", "[options] KEY",
		"Prints the value of KEY, followed by a newline. With -recurse, prints\n"+
			"one key:value line per key under the prefix KEY, in key order (as\n"+
			"consul kv get -recurse), and nothing if there is none.\n"+
			"A missing KEY is an error (exit status 1).", stderr)
	recurse := k.fs.Bool("recurse", false, "print every key under the prefix KEY")
	kv, done, code, ok := k.setup(args, 1, "KEY", stdout, getenv)
	if !ok {
		return code
	}
	defer done()
	key := k.fs.Arg(0)
	q := (&api.QueryOptions{}).WithContext(ctx)
	if *recurse {
		pairs, _, err := kv.List(key, q)
		if err != nil {
			return k.fail("reading "+key, err)
		}
		for _, p := range pairs {
			fmt.Fprintf(stdout, "%s:%s\n", p.Key, p.Value)
		}
		return exitOK
	}
	pair, _, err := kv.Get(key, q)
	switch {
	case err != nil:
		return k.fail("reading "+key, err)
	case pair == nil:
		fmt.Fprintf(stderr, "Error! No key exists at: %s\n", key)
		return exitError
	}
	fmt.Fprintf(stdout, "%s\n", pair.Value)
	return exitOK
}

func runKVPut(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	k := newKVCommand("kv put", "[options] KEY VALUE",
		"Writes VALUE to KEY (give \"\" for an empty value).", stderr)
	kv, done, code, ok := k.setup(args, 2, "KEY VALUE", stdout, getenv)
	if !ok {
		return code
	}
	defer done()
	key, value := k.fs.Arg(0), k.fs.Arg(1)
	if _, err := kv.Put(&api.KVPair{Key: key, Value: []byte(value)}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return k.fail("writing "+key, err)
	}
	fmt.Fprintf(stdout, "Success! Data written to: %s\n", key)
	return exitOK
}

func runKVDelete(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	k := newKVCommand("kv delete", "[options] KEY",
		"Deletes KEY; with -recurse, every key under the prefix KEY.\n"+
			"Deleting a missing key succeeds, as in Consul.", stderr)
	recurse := k.fs.Bool("recurse", false, "delete every key under the prefix KEY")
	kv, done, code, ok := k.setup(args, 1, "KEY", stdout, getenv)
	if !ok {
		return code
	}
	defer done()
	key := k.fs.Arg(0)
	w := (&api.WriteOptions{}).WithContext(ctx)
	if *recurse {
		if _, err := kv.DeleteTree(key, w); err != nil {
			return k.fail("deleting "+key, err)
		}
		fmt.Fprintf(stdout, "Success! Deleted keys with prefix: %s\n", key)
		return exitOK
	}
	if _, err := kv.Delete(key, w); err != nil {
		return k.fail("deleting "+key, err)
	}
	fmt.Fprintf(stdout, "Success! Deleted key: %s\n", key)
	return exitOK
}
