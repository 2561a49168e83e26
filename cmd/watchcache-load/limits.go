package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// fdHeadroom is the descriptors a process needs besides the load's
// sockets: etcd's files and listeners, the agent's etcd connections, pipes.
const fdHeadroom = 256

// checkLimits fails early, with the reason, when the machine cannot hold
// clients connections: rather than a run that times out with some clients
// never accepted (the accept loop failing with EMFILE) or never connected
// (EADDRNOTAVAIL when the ephemeral ports run out).
//
// Each side of the load is in its own process, so each needs one
// descriptor per client: the client process always, this one when it runs
// the agent (local).
func checkLimits(clients int, local bool) error {
	if limit, ok := openFileLimit(); ok && uint64(clients+fdHeadroom) > limit {
		side := "the client process"
		if local {
			side = "each of the agent process and the client process"
		}
		return fmt.Errorf("%d clients need %d open files in %s; the limit (ulimit -n) is %d", clients, clients+fdHeadroom, side, limit)
	}
	// Every client connects from the one loopback address to the agent's
	// one address and port, so each needs its own ephemeral port.
	if lo, hi, ok := ephemeralPorts(); ok && clients > hi-lo+1 {
		return fmt.Errorf("%d clients need as many ephemeral ports; net.ipv4.ip_local_port_range has %d (%d-%d)", clients, hi-lo+1, lo, hi)
	}
	return nil
}

// ephemeralPorts reads Linux's ephemeral port range; ok is false elsewhere.
func ephemeralPorts() (lo, hi int, ok bool) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0, false
	}
	lo, err1 := strconv.Atoi(f[0])
	hi, err2 := strconv.Atoi(f[1])
	return lo, hi, err1 == nil && err2 == nil && hi >= lo
}
