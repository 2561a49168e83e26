package agent

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/memstore"
)

// memAgent starts, inside the synctest bubble of t, an agent in front of
// an in-memory store, served over in-memory connections: time is fake, and
// a request waiting on the store is durably blocked, so tests need no
// real-time polling. Everything stops when the test ends.
func memAgent(t *testing.T, users map[string]memstore.User) (*testAgent, *memstore.Store) {
	t.Helper()
	reg := NewRegistry()
	cache, err := watchcache.New(watchcache.Options{Logger: testLogger(), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cache.Close() })
	store, err := memstore.New(cache, users)
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(Config{Store: store, Cache: cache, Registry: reg, Logger: testLogger(),
		HeartbeatInterval: time.Second, WriteTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ln := newPipeListener()
	served := make(chan error, 1)
	go func() { served <- a.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		if err := a.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	tr := &http.Transport{DialContext: ln.dial}
	t.Cleanup(tr.CloseIdleConnections)
	return &testAgent{Agent: a, addr: "agent.test:8500", url: "http://agent.test:8500",
		client: &http.Client{Transport: tr}, dial: ln.dial}, store
}

// pipeListener is a net.Listener of in-memory connections (net.Pipe).
type pipeListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

// dial connects to the listener; it is a Transport's DialContext.
func (l *pipeListener) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	client, server := net.Pipe()
	select {
	case l.conns <- server:
		return client, nil
	case <-l.closed:
		return nil, net.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "agent.test:8500" }
