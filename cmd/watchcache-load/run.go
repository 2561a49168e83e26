package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// stopGrace is how long the client process has to exit once told to.
const stopGrace = 10 * time.Second

// clientMargin is how long before the run's bound the client process ends
// its connections, so that its report of who was not answered still
// arrives within the bound.
func clientMargin(timeout time.Duration) time.Duration { return min(5*time.Second, timeout/10) }

// run runs one load as cfg says, writing its progress and figures to out.
// The report is complete only when err is nil; report.verdict then says
// whether the load passed.
func run(ctx context.Context, cfg config, out io.Writer) (rep *report, err error) {
	ctx, cancel := context.WithTimeoutCause(ctx, cfg.Timeout, fmt.Errorf("the run's bound (-timeout %v) was reached", cfg.Timeout))
	defer cancel()
	deadline, _ := ctx.Deadline()

	hc := &http.Client{Transport: &http.Transport{}}
	defer hc.CloseIdleConnections()

	var tgt target
	if cfg.AgentAddr == "" {
		l, err := startLocal(cfg)
		if err != nil {
			return nil, fmt.Errorf("starting etcd and the agent: %w", err)
		}
		tgt = l
	} else {
		tgt = &remoteAgent{host: cfg.AgentAddr, http: hc}
	}
	defer func() {
		if cerr := tgt.close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("stopping the agent: %w", cerr))
		}
	}()
	host := tgt.addr()
	fmt.Fprintf(out, "watchcache-load: %d clients, each one connection with one blocking GET of %q; %d write(s); bounded by %v\n",
		cfg.Clients, cfg.Key, cfg.Rounds, cfg.Timeout)
	fmt.Fprintf(out, "agent: %s\n", tgt)

	if err := put(ctx, hc, host, cfg.Key, roundValue(0)); err != nil {
		return nil, err
	}
	idx, err := index(ctx, hc, host, cfg.Key)
	if err != nil {
		return nil, err
	}
	rep = &report{Clients: cfg.Clients, WatchesBlocked: -1, WatchesAfter: -1}
	if rep.MemBefore, err = tgt.memory(ctx); err != nil {
		return nil, fmt.Errorf("agent memory: %w", err)
	}

	start := time.Now()
	cp, err := startClients(clientSpec{
		Addr: host, Key: cfg.Key, Index: idx, Clients: cfg.Clients, Rounds: cfg.Rounds,
		DialConcurrency: cfg.DialConcurrency, Deadline: deadline.Add(-clientMargin(cfg.Timeout)),
	})
	if err != nil {
		return nil, err
	}
	defer cp.stop(stopGrace)
	sent, err := cp.next(ctx, "sent")
	if err != nil {
		return nil, fmt.Errorf("connecting the clients: %w", err)
	}
	if sent.Failures > 0 {
		return nil, fmt.Errorf("%d of %d clients could not connect or send their request: %s", sent.Failures, cfg.Clients, errorList(sent.Errors))
	}
	if err := tgt.waitBlocked(ctx, cfg.Clients); err != nil {
		return nil, fmt.Errorf("waiting for the clients' GETs to block in the agent: %w", err)
	}
	rep.Established = time.Since(start)
	fmt.Fprintf(out, "clients: %d connected and blocked in the agent %s after starting them (%d connections at a time; all requests sent after %s)\n",
		cfg.Clients, ms(rep.Established), cfg.DialConcurrency, ms(sent.Elapsed))
	if rep.MemBlocked, err = tgt.memory(ctx); err != nil {
		return nil, fmt.Errorf("agent memory: %w", err)
	}
	if rep.WatchesBlocked, err = watchCount(tgt); err != nil {
		return nil, err
	}
	if err := writeHeapProfile(cfg.MemProfile); err != nil {
		return nil, err
	}
	stopCPU, err := startCPUProfile(cfg.CPUProfile)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, stopCPU()) }()

	for r := 1; r <= cfg.Rounds; r++ {
		if r > 1 {
			if err := tgt.waitBlocked(ctx, cfg.Clients); err != nil {
				return nil, fmt.Errorf("round %d: waiting for the clients' GETs to block again: %w", r, err)
			}
		}
		t0 := time.Now()
		if err := put(ctx, hc, host, cfg.Key, roundValue(r)); err != nil {
			return nil, fmt.Errorf("round %d: %w", r, err)
		}
		wrote := time.Since(t0)
		ev, err := cp.next(ctx, "round")
		if err != nil {
			return nil, fmt.Errorf("round %d: waiting for the clients' answers: %w", r, err)
		}
		rr := newRoundReport(r, idx, t0, wrote, ev)
		rep.Rounds = append(rep.Rounds, rr)
		rr.print(out, cfg.Clients)
		idx = max(idx, rr.Index)
	}
	if err := stopCPU(); err != nil {
		return nil, err
	}
	if err := cp.wait(ctx); err != nil {
		return nil, err
	}
	if rep.WatchesAfter, err = watchCount(tgt); err != nil {
		return nil, err
	}
	if rep.MemAfter, err = tgt.memory(ctx); err != nil {
		return nil, fmt.Errorf("agent memory: %w", err)
	}
	rep.print(out, cfg.AgentAddr == "")
	return rep, nil
}

// watchCount returns the agent's etcd watches, -1 if unknown.
func watchCount(t target) (int, error) {
	n, known, err := t.watches()
	switch {
	case err != nil:
		return 0, fmt.Errorf("counting etcd watches: %w", err)
	case !known:
		return -1, nil
	}
	return n, nil
}
