package agent

import (
	"context"
	"time"
)

// Probe timing: the first retry after a second, doubling up to a minute.
const (
	probeTimeout  = 5 * time.Second
	probeFirstGap = time.Second
	probeMaxGap   = time.Minute
)

// probeStore asks the store how it is until it answers, from the first
// Serve until it does or Shutdown begins, so that an operator learns at
// startup why the store cannot be reached (a refused connection, a name
// that does not resolve, TLS, refused credentials) rather than from the
// first request's timeout. Each new cause is logged at warn level, a
// repeated one at debug; the answer that ends the probe at info.
func (a *Agent) probeStore() {
	defer close(a.probed)
	gap := probeFirstGap
	var last string
	for {
		ctx, cancel := context.WithTimeout(a.stopCtx, probeTimeout)
		h, err := a.store.Health(ctx)
		cancel()
		switch {
		case a.isStopping():
			return
		case err == nil:
			a.log.Info("the store answers", "upstream", a.store.Describe(), "endpoint", h.Endpoint,
				"leader", h.LeaderAddr, "index", h.Index)
			return
		case err.Error() != last:
			last = err.Error()
			a.log.Warn("the store does not answer; requests will fail until it does (retrying)",
				"upstream", a.store.Describe(), "err", err, "retry_in", gap)
		default:
			a.log.Debug("the store still does not answer", "err", err, "retry_in", gap)
		}
		t := time.NewTimer(gap)
		select {
		case <-t.C:
		case <-a.stopCtx.Done():
			t.Stop()
			return
		}
		gap = min(2*gap, probeMaxGap)
	}
}
