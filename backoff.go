package watchcache

import (
	"math/rand/v2"
	"time"
)

// Backoff after failed fetches, as in Consul's agent/cache: the first
// freeRetries failures retry at once (a blip should not leave an entry
// stale for seconds), then the wait starts at backoffMin and doubles up to
// backoffMax.
const (
	freeRetries = 3
	backoffMin  = time.Second
	backoffMax  = time.Minute
)

// backoff returns how long to wait before the next fetch after failures
// consecutive failures. The wait is drawn uniformly from [d/2, d] for the
// doubling step d, so that entries which fail together (an upstream outage
// hits every entry at once) spread their retries out instead of returning
// in a herd, and the cap is never exceeded.
func backoff(failures int) time.Duration {
	if failures <= freeRetries {
		return 0
	}
	d := backoffMax
	if shift := failures - freeRetries - 1; shift < 6 { // 1s<<6 > backoffMax
		d = min(backoffMin<<shift, backoffMax)
	}
	return d/2 + rand.N(d/2+1)
}
