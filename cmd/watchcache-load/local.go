package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/watchcache/watchcache/etcdkv"
	"github.com/watchcache/watchcache/internal/agent"
	"github.com/watchcache/watchcache/internal/devetcd"
	"github.com/watchcache/watchcache/internal/upstream"
)

// target is the agent under load.
type target interface {
	addr() string   // host:port
	String() string // what and where, for the report
	// waitBlocked returns once n GETs wait in the agent for a change.
	waitBlocked(ctx context.Context, n int) error
	// watches returns the number of etcd watches the agent holds; known is
	// false when this process cannot tell.
	watches() (n int, known bool, err error)
	// memory samples the agent process's memory.
	memory(ctx context.Context) (memSample, error)
	close() error
}

// memSample is a process's memory; zero fields are unknown.
type memSample struct {
	RSS, PeakRSS uint64 // bytes: VmRSS and VmHWM
	// Heap is the Go heap: live after a GC for an agent in this process,
	// allocated (live and not yet collected) for one in another.
	Heap       uint64
	StackInuse uint64 // goroutine stacks, bytes
	Goroutines int
}

// localAgent is a single-node etcd and an agent in this process.
type localAgent struct {
	http   *http.Client
	etcd   *devetcd.Server
	up     *upstream.Upstream
	agent  *agent.Agent
	ln     *countingListener
	served chan error // Serve's result
}

// closeTimeout bounds the agent's shutdown and etcd's.
const closeTimeout = 30 * time.Second

// startLocal starts etcd and an agent on loopback ports.
func startLocal(cfg config) (*localAgent, error) {
	level := slog.LevelWarn
	if cfg.Verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	e, err := startEtcd()
	if err != nil {
		return nil, err
	}
	up, err := upstream.OpenEtcd(etcdkv.Config{Endpoints: e.Endpoints(), Logger: log}, nil, upstream.CacheConfig{Logger: log})
	if err != nil {
		e.Close()
		return nil, err
	}
	a, err := agent.New(agent.Config{Store: up.Store, Cache: up.Cache, Registry: up.Registry, Logger: log})
	if err != nil {
		up.Close()
		e.Close()
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		a.Shutdown(context.Background())
		up.Close()
		e.Close()
		return nil, err
	}
	l := &localAgent{http: &http.Client{}, etcd: e, up: up, agent: a, ln: &countingListener{Listener: ln}, served: make(chan error, 1)}
	go func() { l.served <- a.Serve(l.ln) }()
	return l, nil
}

// startEtcd starts the single-node etcd on a free loopback port. The port
// is found by binding and releasing it, so another process may take it in
// between: a few tries make that harmless.
func startEtcd() (*devetcd.Server, error) {
	var err error
	for range 3 {
		var addr string
		if addr, err = freeLoopbackAddr(); err != nil {
			continue
		}
		var e *devetcd.Server
		if e, err = devetcd.Start(addr); err == nil {
			return e, nil
		}
	}
	return nil, err
}

func freeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func (l *localAgent) addr() string { return l.ln.Addr().String() }

func (l *localAgent) String() string {
	return fmt.Sprintf("in this process on %s, over etcd in this process on %s", l.addr(), strings.Join(l.etcd.Endpoints(), ","))
}

// close shuts the agent down, then the cache and store, then etcd.
func (l *localAgent) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	err := l.agent.Shutdown(ctx)
	if serr := <-l.served; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	return errors.Join(err, l.up.Close(), l.etcd.Close())
}

// waitBlocked returns once n GETs wait in the agent (see waitBlocked).
func (l *localAgent) waitBlocked(ctx context.Context, n int) error {
	return waitBlocked(ctx, l.http, l.addr(), n)
}

// watches reads the embedded etcd's own gauge of the watchers it holds.
// The agent is etcd's only client, so they are all the agent's.
func (l *localAgent) watches() (int, bool, error) {
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		return 0, false, err
	}
	for _, mf := range mfs {
		if mf.GetName() == "etcd_debugging_mvcc_watcher_total" {
			return int(mf.GetMetric()[0].GetGauge().GetValue()), true, nil
		}
	}
	return 0, false, errors.New("etcd_debugging_mvcc_watcher_total is not registered")
}

// memory samples this process: the agent, etcd and the load's parent
// side, whose own share (a few HTTP requests and reports) is small. The
// heap is measured after a GC, so that it counts what the agent holds,
// not garbage; RSS is read first, as a GC does not shrink it at once anyway.
func (l *localAgent) memory(context.Context) (memSample, error) {
	s := memSample{Goroutines: runtime.NumGoroutine()}
	s.RSS, s.PeakRSS = procRSS()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s.Heap, s.StackInuse = ms.HeapAlloc, ms.StackInuse
	return s, nil
}

// procRSS returns this process's resident and peak resident memory from
// /proc, or zeros where there is none.
func procRSS() (rss, peak uint64) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		name, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(val) // "12345 kB"
		if len(f) != 2 || f[1] != "kB" {
			continue
		}
		kb, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			continue
		}
		switch name {
		case "VmRSS":
			rss = kb << 10
		case "VmHWM":
			peak = kb << 10
		}
	}
	return rss, peak
}

// countingListener counts the connections it accepted, for the report
// when the clients do not all get through.
type countingListener struct {
	net.Listener
	accepted atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}
