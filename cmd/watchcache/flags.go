package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/watchcache/watchcache/etcdkv"
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
// from its environment variable, if that is set and not empty. It returns
// ok false and the exit status when the command should stop: -h (help on
// stdout, status 0) or a bad flag or variable (status 2; the message names
// it).
func (c *command) parse(args []string, stdout io.Writer, getenv func(string) string) (code int, ok bool) {
	if err := c.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			c.printHelp(stdout)
			return exitOK, false
		}
		// The flag package printed the error, naming the flag.
		fmt.Fprintf(c.stderr, "Run 'watchcache %s -h' for usage.\n", c.name)
		return exitUsage, false
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

// Flag values that check their range when set, so that a bad value is
// refused with the name of the flag or variable that carried it. Their
// String methods work on the zero value, which flag.PrintDefaults makes.

// floatValue is a finite, non-negative number.
type floatValue struct{ p *float64 }

func (v floatValue) String() string {
	if v.p == nil {
		return "0"
	}
	return strconv.FormatFloat(*v.p, 'g', -1, 64)
}

func (v floatValue) Set(s string) error {
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	switch {
	case err != nil || math.IsNaN(f) || math.IsInf(f, 0):
		return errors.New("not a number")
	case f < 0:
		return errors.New("must not be negative")
	}
	*v.p = f
	return nil
}

// intValue is a non-negative integer.
type intValue struct{ p *int }

func (v intValue) String() string {
	if v.p == nil {
		return "0"
	}
	return strconv.Itoa(*v.p)
}

func (v intValue) Set(s string) error {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	switch {
	case err != nil:
		return errors.New("not an integer")
	case n < 0:
		return errors.New("must not be negative")
	}
	*v.p = n
	return nil
}

// durationValue is a positive duration with a unit ("30s", "1m").
type durationValue struct{ p *time.Duration }

func (v durationValue) String() string {
	if v.p == nil {
		return "0s"
	}
	return v.p.String()
}

func (v durationValue) Set(s string) error {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	switch {
	case err != nil:
		return errors.New("not a duration such as 30s or 1m")
	case d <= 0:
		return errors.New("must be positive")
	}
	*v.p = d
	return nil
}

// levelValue is a log level: debug, info, warn or error.
type levelValue struct{ p *slog.Level }

func (v levelValue) String() string {
	if v.p == nil {
		return "" // not a level, so that PrintDefaults shows the default
	}
	return strings.ToLower(v.p.String())
}

func (v levelValue) Set(s string) error {
	levels := map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError}
	l, ok := levels[strings.ToLower(strings.TrimSpace(s))]
	if !ok {
		return errors.New("must be debug, info, warn or error")
	}
	*v.p = l
	return nil
}

// hostPortValue is a TCP address, host:port, with a numeric port.
type hostPortValue struct{ p *string }

func (v hostPortValue) String() string {
	if v.p == nil {
		return ""
	}
	return *v.p
}

func (v hostPortValue) Set(s string) error {
	if err := checkHostPort(s); err != nil {
		return err
	}
	*v.p = s
	return nil
}

func checkHostPort(s string) error {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("not host:port (%v)", err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("port %q is not a number from 0 to 65535", port)
	}
	return nil
}

// listenAddrValue is the agent's listen address: host:port, or
// http://host:port or https://host:port as the commands that talk to the
// agent take it (WATCHCACHE_HTTP_ADDR serves both). scheme records the
// scheme given, "" for none.
type listenAddrValue struct {
	p      *string
	scheme *string
}

func (v listenAddrValue) String() string {
	if v.p == nil {
		return ""
	}
	return *v.p
}

func (v listenAddrValue) Set(s string) error {
	u, err := parseAgentURL(s)
	if err != nil {
		return err
	}
	*v.p, *v.scheme = u.Host, ""
	if strings.Contains(s, "://") {
		*v.scheme = u.Scheme
	}
	return nil
}

// listValue is a comma-separated list, such as etcd endpoints; blanks
// around the commas are dropped.
type listValue struct{ p *[]string }

func (v listValue) String() string {
	if v.p == nil {
		return ""
	}
	return strings.Join(*v.p, ",")
}

func (v listValue) Set(s string) error {
	var items []string
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			items = append(items, item)
		}
	}
	if len(items) == 0 {
		return errors.New("empty list")
	}
	*v.p = items
	return nil
}

// accessCheckValue is etcdkv's AccessCheck by name: strict or bounded.
type accessCheckValue struct{ p *etcdkv.AccessCheck }

func (v accessCheckValue) String() string {
	if v.p != nil && *v.p == etcdkv.AccessCheckBounded {
		return "bounded"
	}
	return "strict"
}

func (v accessCheckValue) Set(s string) error {
	switch strings.TrimSpace(s) {
	case "strict":
		*v.p = etcdkv.AccessCheckStrict
	case "bounded":
		*v.p = etcdkv.AccessCheckBounded
	default:
		return errors.New("want strict or bounded")
	}
	return nil
}

// maxDurationValue is a positive duration of at most max.
type maxDurationValue struct {
	p   *time.Duration
	max time.Duration
}

func (v maxDurationValue) String() string { return durationValue{v.p}.String() }

func (v maxDurationValue) Set(s string) error {
	var d time.Duration
	if err := (durationValue{&d}).Set(s); err != nil {
		return err
	}
	if d > v.max {
		return fmt.Errorf("must be at most %v", v.max)
	}
	*v.p = d
	return nil
}

// consulAddrValue is the URL of a Consul-protocol server: http or https,
// a host and a port, nothing else.
type consulAddrValue struct{ p *string }

func (v consulAddrValue) String() string {
	if v.p == nil {
		return ""
	}
	return *v.p
}

func (v consulAddrValue) Set(s string) error {
	u, err := url.Parse(s)
	switch {
	case s == "":
		*v.p = ""
		return nil
	case strings.ContainsAny(s, " \t"):
		return errors.New("contains a space")
	case err != nil, u.Scheme != "http" && u.Scheme != "https", u.Host == "", u.Port() == "":
		return errors.New("want http://host:port or https://host:port")
	case (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil:
		return errors.New("want http://host:port or https://host:port, without a path, a query or credentials")
	}
	*v.p = strings.TrimSuffix(s, "/")
	return nil
}
