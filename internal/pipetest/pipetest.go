// Package pipetest is a net.Listener of in-memory connections, for tests
// that serve HTTP inside a testing/synctest bubble: its connections are
// net.Pipe, which blocks on channels only, so a request waiting on the
// server is durably blocked and time is fake.
package pipetest

import (
	"context"
	"net"
	"net/http"
	"sync"
)

// Listener is a net.Listener whose connections come from Dial. Make one
// with NewListener.
type Listener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

// NewListener returns a Listener.
func NewListener() *Listener {
	return &Listener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

// Accept implements net.Listener.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener.
func (l *Listener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

// Addr implements net.Listener.
func (l *Listener) Addr() net.Addr { return addr{} }

// Dial connects to the listener, whatever the address; it is an
// http.Transport's DialContext.
func (l *Listener) Dial(ctx context.Context, _, _ string) (net.Conn, error) {
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

// Transport returns an HTTP transport that dials the listener.
func (l *Listener) Transport() *http.Transport {
	return &http.Transport{DialContext: l.Dial}
}

type addr struct{}

func (addr) Network() string { return "pipe" }
func (addr) String() string  { return "pipe.test:8500" }
