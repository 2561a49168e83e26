package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// clientOptions are the flags of the commands that talk to an agent.
type clientOptions struct {
	httpAddr   string // host:port or http(s)://host:port
	token      string
	user       string
	password   string
	caFile     string // TLS: the agent's CA, and a client certificate
	clientCert string
	clientKey  string

	tls *tls.Config // built by check from the three above; nil for none
}

// register defines the client flags on c, with their variables.
func (o *clientOptions) register(c *command) {
	o.httpAddr = defaultHTTPAddr
	c.fs.StringVar(&o.httpAddr, "http-addr", defaultHTTPAddr, "the agent: `host:port`, or http:// or https:// and host:port")
	c.fs.StringVar(&o.token, "token", "", "`token` sent as X-Consul-Token (the agent maps it to an etcd user)")
	c.fs.StringVar(&o.user, "user", "", "etcd `user` for HTTP basic auth (instead of -token)")
	c.fs.StringVar(&o.password, "password", "", "`password` of -user; prefer the variable")
	c.fs.StringVar(&o.caFile, "ca-file", "", "CA certificate `file` (PEM) to verify an https:// agent (default: the system's)")
	c.fs.StringVar(&o.clientCert, "client-cert", "", "client certificate `file` (PEM) for an agent that requires one")
	c.fs.StringVar(&o.clientKey, "client-key", "", "key `file` (PEM) of -client-cert")
	c.withEnv("http-addr", "token", "user", "password", "ca-file", "client-cert", "client-key")
}

// check validates the options and loads the TLS files; it returns a usage
// error message or "".
func (o *clientOptions) check(c *command) string {
	u, err := parseAgentURL(o.httpAddr)
	if err != nil {
		return fmt.Sprintf("%s: %v", c.source("http-addr"), err)
	}
	if o.tls, err = clientTLS(o.caFile, o.clientCert, o.clientKey); err != nil {
		return fmt.Sprintf("TLS (-ca-file, -client-cert, -client-key): %v", err)
	}
	if o.tls != nil && u.Scheme != "https" {
		return fmt.Sprintf("-ca-file, -client-cert and -client-key are for an https:// agent; %s is %s", c.source("http-addr"), u)
	}
	switch {
	case o.token != "" && o.user != "":
		return fmt.Sprintf("%s and %s cannot be used together: the agent takes one identity", c.source("token"), c.source("user"))
	case o.password != "" && o.user == "":
		return fmt.Sprintf("%s needs -user", c.source("password"))
	}
	return ""
}

// parseAgentURL parses an agent's address: host:port (plain HTTP), or a URL
// with scheme http or https and no path.
func parseAgentURL(addr string) (*url.URL, error) {
	if !strings.Contains(addr, "://") {
		if err := checkHostPort(addr); err != nil {
			return nil, err
		}
		return &url.URL{Scheme: "http", Host: addr}, nil
	}
	u, err := url.Parse(addr)
	switch {
	case err != nil:
		return nil, errors.New("not a URL")
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("scheme %q: want http or https", u.Scheme)
	case (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil:
		return nil, errors.New("want only a scheme and host:port")
	}
	if err := checkHostPort(u.Host); err != nil {
		return nil, err
	}
	return &url.URL{Scheme: u.Scheme, Host: u.Host}, nil
}

// agentClient talks to one agent with one identity. Close it to release
// its connections.
type agentClient struct {
	base *url.URL
	hc   *http.Client
	tr   *http.Transport
}

// newAgentClient returns a client for o (already checked). timeout bounds
// each whole request; 0 means none (event streams).
func newAgentClient(o clientOptions, timeout time.Duration) *agentClient {
	base, _ := parseAgentURL(o.httpAddr)
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 15 * time.Second}).DialContext,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: time.Minute,
		MaxIdleConnsPerHost:   2,
		IdleConnTimeout:       30 * time.Second,
		TLSClientConfig:       o.tls,
	}
	hc := &http.Client{Transport: &identityTransport{base: tr, opts: o}, Timeout: timeout}
	return &agentClient{base: base, hc: hc, tr: tr}
}

// Close closes idle connections (whose goroutines would otherwise outlive
// the command, which matters to in-process tests).
func (c *agentClient) Close() { c.tr.CloseIdleConnections() }

// identityTransport sends the command's identity, and only it, with each
// request. consul/api fills a token the command did not set from
// CONSUL_HTTP_TOKEN and CONSUL_HTTP_TOKEN_FILE; sent to a watchcache agent,
// a token meant for a Consul cluster would only get "403 ACL not found".
// The identity comes from -token/-user (or WATCHCACHE_*) alone.
type identityTransport struct {
	base http.RoundTripper
	opts clientOptions
}

func (t *identityTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context()) // a RoundTripper must not change its request
	req.Header.Del("X-Consul-Token")
	req.Header.Del("Authorization")
	switch {
	case t.opts.token != "":
		req.Header.Set("X-Consul-Token", t.opts.token)
	case t.opts.user != "":
		req.SetBasicAuth(t.opts.user, t.opts.password)
	}
	return t.base.RoundTrip(req)
}

// maxErrorBody bounds how much of an error response is read for its message.
const maxErrorBody = 64 << 10

// statusError is an HTTP error answer of the agent.
type statusError struct {
	code int
	msg  string // the body, the agent's message
}

func (e *statusError) Error() string {
	msg := e.msg
	if msg == "" {
		msg = "(no message)"
	}
	return fmt.Sprintf("the agent answered %d %s: %s", e.code, http.StatusText(e.code), msg)
}

// responseError reads an error response's message.
func responseError(resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	return &statusError{code: resp.StatusCode, msg: strings.TrimSpace(string(body))}
}

// describe turns an error of a request to the agent into a message that
// says what to do about it.
func describe(err error, base *url.URL) string {
	var se api.StatusError
	if errors.As(err, &se) { // consul/api's form of an HTTP error answer
		err = &statusError{code: se.Code, msg: se.Body}
	}
	var ue *url.Error
	var oe *net.OpError
	if !errors.As(err, new(*statusError)) && errors.As(err, &ue) && errors.As(err, &oe) && oe.Op == "dial" {
		return fmt.Sprintf("cannot reach the agent at %s (is 'watchcache agent' running there? -http-addr picks another): %v", base, oe.Err)
	}
	return err.Error()
}
