//go:build race

package etcdkv

// raceEnabled is true when the tests run with the race detector, which
// makes the embedded etcd several times slower.
const raceEnabled = true
