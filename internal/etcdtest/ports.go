package etcdtest

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// embed cannot be handed pre-bound listeners: it always binds the addresses in
// its URLs itself. So ports have to be chosen up front, released, and bound
// again by etcd, which leaves a window in which something else may take them.
// Two things keep that window harmless:
//
//   - Ports are picked at random from OUTSIDE the kernel's ephemeral range.
//     The kernel hands ephemeral ports to every outgoing connection (our own
//     clients and raft peers dial a lot), and it may hand out a port that we
//     just probed and released; a port below the range is never taken that
//     way. This matters most for RestartMember and Wipe, which must bind the
//     very same ports again after the member has been down for a while.
//   - Within this process a port is never handed out twice, so one cluster
//     cannot grab the ports of another cluster's stopped member.
//
// Separate test processes (go test runs packages in parallel) can still pick
// the same port by chance; Start retries with new ports on EADDRINUSE.

var (
	portsMu   sync.Mutex
	usedPorts = map[int]bool{}
)

// fallbackRange is used when the ephemeral range cannot be read.
const fallbackLo, fallbackHi = 10000, 32767

// portRange returns the inclusive range to draw ports from: the larger gap
// below or above the kernel's ephemeral range, or 0, 0 if neither gap is
// usefully large (then the kernel picks, see freePort).
func portRange() (lo, hi int) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return fallbackLo, fallbackHi
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return fallbackLo, fallbackHi
	}
	elo, err1 := strconv.Atoi(f[0])
	ehi, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil {
		return fallbackLo, fallbackHi
	}
	// Stay above 10000 to keep clear of well-known service ports.
	const minSpan = 1000
	below := elo - 1 - 10000
	above := 65535 - (ehi + 1)
	switch {
	case below >= minSpan && below >= above:
		return 10000, elo - 1
	case above >= minSpan:
		return ehi + 1, 65535
	default:
		return 0, 0
	}
}

// freePort returns a port on 127.0.0.1 that was free a moment ago and that
// this process has not handed out before.
func freePort() (int, error) {
	portsMu.Lock()
	defer portsMu.Unlock()

	lo, hi := portRange()
	if hi > lo {
		for range 200 {
			p := lo + rand.IntN(hi-lo+1)
			if usedPorts[p] {
				continue
			}
			l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
			if err != nil {
				continue // in use (or not bindable): try another one
			}
			l.Close()
			usedPorts[p] = true
			return p, nil
		}
	}
	// No usable range outside the ephemeral one, or it is crowded: let the
	// kernel choose. Still never reuse a port within this process.
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("etcdtest: cannot find a free port: %w", err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !usedPorts[p] {
			usedPorts[p] = true
			return p, nil
		}
	}
	return 0, fmt.Errorf("etcdtest: cannot find a free port")
}

// openConns reports whether a TCP connection to or from one of ports may
// still be held open by this process, according to the kernel's socket
// tables. ok is false where those tables cannot be read (not Linux).
func openConns(ports map[int]bool) (open, ok bool) {
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(table)
		if err != nil {
			return false, false
		}
		lines := strings.Split(string(b), "\n")
		for _, line := range lines[1:] { // the first line is a header
			// sl local_address rem_address st ...; addresses are hex
			// "ADDR:PORT", st is the hex TCP state.
			f := strings.Fields(line)
			if len(f) < 4 {
				continue
			}
			switch f[3] {
			case "01", "02", "03", "08":
				// ESTABLISHED, SYN_SENT, SYN_RECV, CLOSE_WAIT: states in
				// which a socket is not closed yet, so a goroutine may
				// still be reading or writing it. Sockets in the other
				// states are listeners (ours are all closed) or were
				// closed already and only linger in the kernel.
			default:
				continue
			}
			for _, addr := range f[1:3] {
				i := strings.LastIndexByte(addr, ':')
				p, err := strconv.ParseUint(addr[i+1:], 16, 16)
				if err == nil && ports[int(p)] {
					return true, true
				}
			}
		}
	}
	return false, true
}
