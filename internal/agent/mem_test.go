package agent

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/memstore"
	"github.com/watchcache/watchcache/internal/pipetest"
)

// memAgent starts, inside the synctest bubble of t, an agent in front of
// an in-memory store, served over in-memory connections: time is fake, and
// a request waiting on the store is durably blocked, so tests need no
// real-time polling. Everything stops when the test ends.
func memAgent(t *testing.T, users map[string]memstore.User) (*testAgent, *memstore.Store) {
	t.Helper()
	return memAgentLogging(t, users, testLogger())
}

// memAgentLogging is memAgent with the agent's logs going to log; prepare
// runs on the store before the agent serves.
func memAgentLogging(t *testing.T, users map[string]memstore.User, log *slog.Logger, prepare ...func(*memstore.Store)) (*testAgent, *memstore.Store) {
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
	for _, p := range prepare {
		p(store)
	}
	a, err := New(Config{Store: store, Cache: cache, Registry: reg, Logger: log,
		HeartbeatInterval: time.Second, WriteTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ln := pipetest.NewListener()
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
	tr := ln.Transport()
	t.Cleanup(tr.CloseIdleConnections)
	return &testAgent{Agent: a, addr: "agent.test:8500", url: "http://agent.test:8500",
		client: &http.Client{Transport: tr}, dial: ln.Dial}, store
}
