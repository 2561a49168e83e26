package etcdkv

import (
	"strconv"
	"testing"
	"time"

	"github.com/watchcache/watchcache"
)

// When etcd goes down, every waiting entry hears of it within about one
// request timeout, however many there are: re-reads queued before a read
// that etcd did not answer fail at once with its error, instead of each
// holding one of the source's workers for a request timeout of its own
// (512 entries on 64 workers would take 8 timeouts).
func TestOutageReachesEveryEntryWithinATimeout(t *testing.T) {
	t.Parallel()
	c, f, cli := start(t)
	const n = 512
	chans := make([]<-chan watchcache.UpdateEvent[Key], n)
	for i := range n {
		k := "/o/" + strconv.Itoa(i)
		put(t, cli, k, "v")
		chans[i] = watch(t, f.kinds.Key, KeyRequest(k, self))
		next(t, chans[i])
	}
	eventually(t, "every entry waits for a change", func() bool {
		f.src.waits.mu.Lock()
		defer f.src.waits.mu.Unlock()
		return f.src.waits.n == n
	})
	c.StopMember(0)
	stopped := time.Now()
	var last time.Duration
	for i := range n {
		if ev := next(t, chans[i]); ev.Err == nil {
			t.Fatalf("event of entry %d after etcd stopped: %+v, want an error", i, ev)
		}
		last = max(last, time.Since(stopped))
	}
	timeout := f.src.cfg.RequestTimeout
	t.Logf("%d entries told of the outage within %v (request timeout %v)", n, last, timeout)
	if last > 3*timeout {
		t.Errorf("the last of %d entries heard of the outage after %v, want within about one request timeout (%v)", n, last, timeout)
	}
	c.RestartMember(t, 0)
}
