// Command watchcache runs the watchcache agent, which serves Consul's KV
// HTTP API from a cache in front of etcd, and talks to a running agent
// like the tools users already know (consul kv, etcdctl watch).
//
//	watchcache agent -dev          # embedded etcd on 127.0.0.1:2379, API on 127.0.0.1:8500
//	watchcache kv put app/db postgres
//	watchcache kv get app/db
//	watchcache watch app/db
//
// Every subcommand is a function of its arguments, output streams,
// environment and context (run), so that tests drive it in-process; only
// main touches the process's signals, environment and exit status.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"

	"github.com/watchcache/watchcache/internal/devetcd"
)

// Exit statuses.
const (
	exitOK    = 0
	exitError = 1 // the command failed: the agent refused, could not be reached, ...
	exitUsage = 2 // bad flags, arguments or environment variables
)

func main() {
	os.Exit(runMain(os.Args[1:]))
}

// runMain runs the command line with the process's signals: SIGINT or
// SIGTERM asks for a clean stop (the agent finishes open requests, within
// -shutdown-timeout); a second one hurries it (open requests are cut, but
// the cleanup still runs: the dev agent's etcd is stopped and its data
// removed); a third exits at once, removing the dev data first.
func runMain(args []string) int {
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	hurry, hurryNow := context.WithCancel(context.Background())
	defer hurryNow()
	sigs := make(chan os.Signal, 3)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		n := 0
		for sig := range sigs {
			switch n++; n {
			case 1:
				stop()
			case 2:
				fmt.Fprintf(os.Stderr, "watchcache: second %v: cutting open requests short and cleaning up (a third exits at once)\n", sig)
				hurryNow()
			default:
				devetcd.RemoveLiveDirs()
				fmt.Fprintf(os.Stderr, "watchcache: third %v: exiting at once\n", sig)
				os.Exit(exitError)
			}
		}
	}()
	return run(withHurry(ctx, hurry), args, os.Stdin, os.Stdout, os.Stderr, os.Getenv)
}

// hurryKey is the context key of the context whose end hurries a
// shutdown (withHurry).
type hurryKey struct{}

// withHurry returns ctx carrying hurry: when the command is stopped
// (ctx ends) and then hurry ends too, the agent stops waiting for open
// requests and cleans up at once.
func withHurry(ctx, hurry context.Context) context.Context {
	return context.WithValue(ctx, hurryKey{}, hurry)
}

// hurryFrom returns the context withHurry put in ctx, or one that never
// ends.
func hurryFrom(ctx context.Context) context.Context {
	if h, ok := ctx.Value(hurryKey{}).(context.Context); ok {
		return h
	}
	return context.Background()
}

// run runs the command line args (without the program name) and returns
// the exit status. Cancelling ctx is the in-process equivalent of SIGINT:
// the agent shuts down cleanly and watch ends with status 0. getenv looks
// up WATCHCACHE_* variables.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) == 0 {
		io.WriteString(stderr, usage)
		return exitUsage
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "agent":
		return runAgent(ctx, rest, stdout, stderr, getenv)
	case "kv":
		return runKV(ctx, rest, stdin, stdout, stderr, getenv)
	case "watch":
		return runWatch(ctx, rest, stdout, stderr, getenv)
	case "version", "-version", "--version":
		fmt.Fprintln(stdout, version())
		return exitOK
	case "help", "-h", "-help", "--help":
		if len(rest) > 0 { // "help kv get" is "kv get -h"
			return run(ctx, append(rest, "-h"), stdin, stdout, stderr, getenv)
		}
		io.WriteString(stdout, usage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "watchcache: unknown command %q\n\n%s", cmd, usage)
		return exitUsage
	}
}

const usage = `Usage: watchcache <command> [options] [arguments]

watchcache serves Consul's KV HTTP API from a shared cache in front of etcd,
and reads, writes and watches keys through a running agent.

Commands:
  agent        run the agent (-dev: with a throwaway embedded etcd)
  kv get       print a key's value, or every key under a prefix (-recurse)
  kv put       write a key (a value, @FILE or - for standard input)
  kv delete    delete a key, or every key under a prefix (-recurse)
  kv export    print keys as JSON, in consul kv export's format
  kv import    write the keys of an export
  watch        print a key's (or a prefix's, -recurse) changes as they happen
  version      print the version
  help         print this help, or a command's: watchcache help kv get

Getting started:
  watchcache agent -dev                # etcd on 127.0.0.1:2379, API on 127.0.0.1:8500
  watchcache kv put app/db postgres
  watchcache kv get app/db
  watchcache watch app/db              # Ctrl-C to stop

Keys are used exactly as typed: /config/db and config/db are two keys.
Flags may come before or after the arguments; after -- everything is an
argument. Run 'watchcache <command> -h' for a command's options. Each
option can also be set in the environment: -http-addr as
WATCHCACHE_HTTP_ADDR, and so on. A flag on the command line wins over its
variable.
`

// version describes the build: the module's version (a tag when installed
// with go install ...@version, "(devel)" from a checkout), the commit it
// was built from, and the Go toolchain.
func version() string {
	v, rev, modified := "(unknown)", "", false
	if bi, ok := debug.ReadBuildInfo(); ok {
		v = bi.Main.Version
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	out := "watchcache " + v
	if rev != "" {
		out += " (commit " + rev[:min(12, len(rev))]
		if modified {
			out += ", modified"
		}
		out += ")"
	}
	return out + " " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH
}
