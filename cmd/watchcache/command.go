package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// command is one subcommand's flags, each optionally with an environment
// variable that sets it when the command line does not. The zero value is
// not usable; create it with newCommand.
type command struct {
	name     string // as typed: "kv get"
	synopsis string // the usage line after "watchcache <name>"
	about    string // what the command does, printed by -h before the options
	fs       *flag.FlagSet
	stderr   io.Writer
	env      []envBinding
	fromEnv  map[string]string // flag name -> the variable that set it, after parse
	args     []string          // the positional arguments, after parse
}

// envBinding ties a flag to its environment variable.
type envBinding struct{ flag, variable string }

func newCommand(name, synopsis, about string, stderr io.Writer) *command {
	fs := flag.NewFlagSet("watchcache "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	// The flag package prints a parse error and then calls Usage; a short
	// hint (printed by parse) keeps the error the last thing on screen.
	fs.Usage = func() {}
	return &command{name: name, synopsis: synopsis, about: about, fs: fs, stderr: stderr, fromEnv: map[string]string{}}
}

// envVar is the environment variable of a flag: WATCHCACHE_ and the flag's
// name in upper case with dashes as underscores.
func envVar(flagName string) string {
	return "WATCHCACHE_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// withEnv gives each named flag (already defined) its environment variable,
// and says so in its help.
func (c *command) withEnv(names ...string) {
	for _, name := range names {
		f := c.fs.Lookup(name)
		if f == nil {
			panic("watchcache: no flag -" + name) // a bug in this file's callers
		}
		v := envVar(name)
		f.Usage += " [$" + v + "]"
		c.env = append(c.env, envBinding{flag: name, variable: v})
	}
}

// parse parses args, then sets each flag that the command line left alone
// from its environment variable, if that is set and not empty. Flags may
// come before, between or after the positional arguments (c.args), as
// etcdctl and consul take them; after "--" everything is positional (a key
// or value that begins with '-'), and so is a lone "-" (standard input).
// It returns ok false and the exit status when the command should stop: -h
// (help on stdout, status 0) or a bad flag or variable (status 2; the
// message names it).
func (c *command) parse(args []string, stdout io.Writer, getenv func(string) string) (code int, ok bool) {
	c.args = nil
	for rest := args; ; {
		if err := c.fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				c.printHelp(stdout)
				return exitOK, false
			}
			// The flag package printed the error, naming the flag.
			if len(c.args) > 0 {
				fmt.Fprintf(c.stderr, "(an argument that begins with '-' goes after --, e.g. watchcache %s -- %s -5)\n", c.name, c.args[0])
			}
			fmt.Fprintf(c.stderr, "Run 'watchcache %s -h' for usage.\n", c.name)
			return exitUsage, false
		}
		left := c.fs.Args()
		if len(left) == 0 {
			break
		}
		if consumed := len(rest) - len(left); consumed > 0 && rest[consumed-1] == "--" {
			c.args = append(c.args, left...) // the flag package stopped at "--"
			break
		}
		c.args = append(c.args, left[0])
		rest = left[1:]
	}
	onCommandLine := map[string]bool{}
	c.fs.Visit(func(f *flag.Flag) { onCommandLine[f.Name] = true })
	for _, b := range c.env {
		v := getenv(b.variable)
		if onCommandLine[b.flag] || v == "" {
			continue
		}
		if err := c.fs.Set(b.flag, v); err != nil {
			return c.usageErrorf("invalid value %q for %s (-%s): %v", v, b.variable, b.flag, err), false
		}
		c.fromEnv[b.flag] = b.variable
	}
	return exitOK, true
}

// source names where a flag's value came from, for error messages:
// "-etcd", or "WATCHCACHE_ETCD" if the environment set it.
func (c *command) source(flagName string) string {
	if v, ok := c.fromEnv[flagName]; ok {
		return v
	}
	return "-" + flagName
}

// isSet reports whether the command line or the environment set a flag.
func (c *command) isSet(flagName string) bool {
	set := false
	c.fs.Visit(func(f *flag.Flag) { set = set || f.Name == flagName })
	return set
}

// usageErrorf prints a usage error and returns exitUsage.
func (c *command) usageErrorf(format string, args ...any) int {
	fmt.Fprintf(c.stderr, "watchcache %s: %s\nRun 'watchcache %s -h' for usage.\n", c.name, fmt.Sprintf(format, args...), c.name)
	return exitUsage
}

func (c *command) printHelp(w io.Writer) {
	fmt.Fprintf(w, "Usage: watchcache %s %s\n\n%s\n", c.name, c.synopsis, c.about)
	hasFlags := false
	c.fs.VisitAll(func(*flag.Flag) { hasFlags = true })
	if !hasFlags {
		return
	}
	fmt.Fprintf(w, "\nOptions:\n")
	c.fs.SetOutput(w)
	c.fs.PrintDefaults()
	c.fs.SetOutput(c.stderr)
}
