// Command watchcache-load puts one watchcache agent under the load its
// design is for: many clients blocked on one key, and one write that must
// reach all of them.
//
//	go run ./cmd/watchcache-load -clients 10000
//
// By default it is self-contained and stays on loopback: it starts a
// single-node etcd and an agent in its own process (the server side, about
// one socket per client), and runs the clients in a second process, itself
// re-executed, because one process cannot hold both ends of 10,000
// connections within a 20,000-descriptor limit. Each client holds one
// HTTP/1.1 connection with one blocking GET /v1/kv/<key>?index=&wait=, as
// Consul clients do. Once every request is waiting in the agent's cache,
// the command writes the key once (PUT through the agent) and measures, for
// every client, the time from the write being sent to the client having
// read its answer. It then reports the 50th and 99th percentile and the
// maximum of that latency, the agent process's resident memory, and how
// many etcd watches the agent holds, which must be 1 however many clients
// wait.
//
// With -rounds N it writes N times; after each answer a client blocks again
// at once with the index it was given, as a Consul watch loop does.
//
// Everything is bounded: -timeout ends the run (and fails it) if the
// clients cannot connect or are not all answered in time. The exit status
// is 0 only if every client got every change and the agent held one etcd
// watch. With -agent-addr it loads an agent that is already running
// instead; the agent's memory then comes from its /metrics, the etcd watch
// count is unknown. Either way the write waits until the agent's
// /v1/status counts every GET as waiting.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// config is what one run does; flags fill it in main, tests directly.
type config struct {
	Clients int
	Key     string
	Rounds  int
	Timeout time.Duration // bounds the whole run

	// AgentAddr is host:port of an agent to load; empty starts etcd and an
	// agent in this process.
	AgentAddr string

	// DialConcurrency bounds the clients that are connecting and sending
	// their request at any moment. Kept below the listener's accept queue
	// (net.core.somaxconn, 4096 on Linux since 5.4), it cannot overflow
	// even if the agent's accept loop stalls; an overflow drops SYNs, which
	// are retried only after a second. (Unbounded, 10,000 connects did not
	// overflow it on loopback here, and were no faster than 1,000.)
	DialConcurrency int

	// CPUProfile and MemProfile name files for profiles of this process,
	// which holds the agent (AgentAddr empty): CPU from the first write to
	// the last answer, and the heap while every client is blocked.
	CPUProfile, MemProfile string

	Verbose bool // log the agent's info messages (etcd logs only its errors, see devetcd)
}

func main() {
	if spec := os.Getenv(clientEnv); spec != "" {
		os.Exit(clientMain(spec))
	}
	var cfg config
	flag.IntVar(&cfg.Clients, "clients", 10000, "number of concurrent blocking GETs, one connection each")
	flag.StringVar(&cfg.Key, "key", "load/key", "the key every client watches and the run writes")
	flag.IntVar(&cfg.Rounds, "rounds", 1, "number of writes; each must reach every client")
	flag.DurationVar(&cfg.Timeout, "timeout", 2*time.Minute, "bound on the whole run; the run fails if it is reached")
	flag.StringVar(&cfg.AgentAddr, "agent-addr", "", "host:port of a running agent to load (default: start etcd and an agent in this process)")
	flag.IntVar(&cfg.DialConcurrency, "dial-concurrency", 1000, "clients connecting at once")
	flag.StringVar(&cfg.CPUProfile, "cpuprofile", "", "write a CPU profile of the agent process, from the first write to the last answer, to this file")
	flag.StringVar(&cfg.MemProfile, "memprofile", "", "write a heap profile of the agent process, taken while every client is blocked, to this file")
	flag.BoolVar(&cfg.Verbose, "v", false, "log the agent's info messages to stderr")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: watchcache-load [flags]\n\n"+
			"Opens -clients blocking GETs on one key of a watchcache agent, writes the key,\n"+
			"and reports how long the change took to reach them, the agent's memory and\n"+
			"its etcd watches. Flags:\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	if err := cfg.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "watchcache-load:", err)
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := run(ctx, cfg, os.Stdout)
	if err == nil {
		err = rep.verdict()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "watchcache-load: FAIL:", err)
		os.Exit(1)
	}
	fmt.Println("PASS")
}

func (c *config) validate() error {
	switch {
	case c.Clients < 1:
		return errors.New("-clients must be at least 1")
	case c.Rounds < 1:
		return errors.New("-rounds must be at least 1")
	case c.Timeout <= 0:
		return errors.New("-timeout must be positive")
	case c.DialConcurrency < 1:
		return errors.New("-dial-concurrency must be at least 1")
	case c.Key == "":
		return errors.New("-key must not be empty")
	case c.AgentAddr != "" && (c.CPUProfile != "" || c.MemProfile != ""):
		return errors.New("-cpuprofile and -memprofile profile the agent in this process; they cannot be used with -agent-addr")
	}
	return checkLimits(c.Clients, c.AgentAddr == "")
}
