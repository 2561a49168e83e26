//go:build unix

package main

import "syscall"

// openFileLimit returns RLIMIT_NOFILE's soft limit, which the Go runtime
// has already raised to the hard limit at start-up.
func openFileLimit() (uint64, bool) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, false
	}
	return uint64(rl.Cur), true
}
