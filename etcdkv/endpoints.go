package etcdkv

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/watchcache/watchcache"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// endpoint is one etcd client endpoint, as the etcd client reads it:
// http://host:port, https://host:port, host:port, unix://path or
// unixs://path.
type endpoint struct {
	raw    string
	scheme string // "" for host:port
	addr   string // host:port, or the socket's path
}

// usesTLS reports whether the etcd client talks TLS to ep: https and
// unixs always, host:port when TLS is configured, http and unix never.
func (ep endpoint) usesTLS(tlsConfigured bool) bool {
	switch ep.scheme {
	case "https", "unixs":
		return true
	case "":
		return tlsConfigured
	}
	return false
}

// ValidateEndpoints checks etcd client endpoints as New takes them, and
// returns an error that names the first bad one: a space in it (an
// endpoint list is separated by commas), an unknown scheme, a missing or
// bad host or port, a path, query or user info. Endpoints that mix plain
// and TLS schemes are refused, as is a plain http:// or unix:// endpoint
// when TLS is configured (tlsConfigured): the etcd client uses the first
// endpoint's security for every connection, so either would silently not
// do what it says.
func ValidateEndpoints(eps []string, tlsConfigured bool) error {
	if len(eps) == 0 {
		return endpointErrorf("no endpoints")
	}
	var first endpoint
	for i, raw := range eps {
		ep, err := parseEndpoint(raw)
		if err != nil {
			return endpointErrorf("endpoint %q: %v", raw, err)
		}
		if i == 0 {
			first = ep
			continue
		}
		if ep.usesTLS(tlsConfigured) != first.usesTLS(tlsConfigured) {
			return endpointErrorf("endpoints %q and %q: one uses TLS and the other does not; the etcd client would use the first one's for both", first.raw, raw)
		}
	}
	if tlsConfigured && !first.usesTLS(true) {
		return endpointErrorf("endpoint %q is plain %s, but TLS is configured: use https:// (or unixs://)", first.raw, first.scheme)
	}
	return nil
}

// endpointError is a bad endpoint list: an ErrInvalid whose message is only
// what is wrong, for a command line to show as it is.
type endpointError struct{ msg string }

func endpointErrorf(format string, args ...any) error {
	return &endpointError{fmt.Sprintf(format, args...)}
}

func (e *endpointError) Error() string        { return "etcdkv: " + e.msg }
func (e *endpointError) Is(target error) bool { return target == watchcache.ErrInvalid }

// parseEndpoint parses one endpoint.
func parseEndpoint(raw string) (endpoint, error) {
	ep := endpoint{raw: raw}
	if raw == "" {
		return ep, errors.New("empty")
	}
	if strings.ContainsFunc(raw, unicode.IsSpace) {
		return ep, errors.New("contains a space; separate endpoints with commas")
	}
	for _, scheme := range []string{"unix", "unixs"} {
		if path, ok := strings.CutPrefix(raw, scheme+":"); ok && !strings.HasPrefix(path, "//") {
			ep.scheme, ep.addr = scheme, path // unix:/path, as the etcd client takes it
			if path == "" {
				return ep, errors.New("no socket path")
			}
			return ep, nil
		}
	}
	if !strings.Contains(raw, "://") {
		ep.addr = raw
		return ep, checkAddr(raw)
	}
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL, which the caller names
		}
		return ep, fmt.Errorf("not a URL: %v", err)
	}
	ep.scheme = u.Scheme
	switch u.Scheme {
	case "http", "https":
		if u.User != nil || u.RawQuery != "" || u.Fragment != "" || (u.Path != "" && u.Path != "/") {
			return ep, errors.New("want only a scheme and host:port")
		}
		ep.addr = u.Host
		return ep, checkAddr(u.Host)
	case "unix", "unixs":
		ep.addr = u.Host + u.Path
		if ep.addr == "" {
			return ep, errors.New("no socket path")
		}
		return ep, nil
	}
	return ep, fmt.Errorf("scheme %q: want http, https, unix or unixs", u.Scheme)
}

// checkAddr checks a host:port with a host and a port in 1..65535.
func checkAddr(hostport string) error {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return errors.New("not host:port")
	}
	if host == "" {
		return errors.New("no host")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q: want a number from 1 to 65535", port)
	}
	return nil
}

// diagnose says why etcd does not answer: it asks each endpoint for its
// status over a connection of its own that fails fast, as the source's
// client would connect (the same TLS), and returns what each one's
// connection failed with: a name that does not resolve, a refused
// connection, a certificate the configuration does not trust, a client
// certificate the server requires. The source's client hides all of these
// behind its retries, as "context deadline exceeded". It returns nil if an
// endpoint answers.
func (s *Source) diagnose(ctx context.Context) error {
	eps := s.conn.Endpoints()
	errs := make([]error, len(eps))
	var wg sync.WaitGroup
	for i, raw := range eps {
		wg.Go(func() {
			errs[i] = s.diagnoseEndpoint(ctx, raw)
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err == nil {
			return nil
		}
	}
	return errors.Join(errs...)
}

// diagnoseEndpoint asks one endpoint for its status; see diagnose.
func (s *Source) diagnoseEndpoint(ctx context.Context, raw string) error {
	ep, err := parseEndpoint(raw)
	if err != nil {
		return fmt.Errorf("%s: %w", raw, err)
	}
	target := "passthrough:///" + ep.addr
	if ep.scheme == "unix" || ep.scheme == "unixs" {
		target = "unix:" + ep.addr
	}
	creds := insecure.NewCredentials()
	useTLS := ep.usesTLS(s.cfg.TLS != nil)
	if useTLS {
		tc := &tls.Config{}
		if s.cfg.TLS != nil {
			tc = s.cfg.TLS.Clone()
		}
		if err := tlsRefused(ctx, ep, tc.Clone()); err != nil {
			return fmt.Errorf("%s: %w", raw, err)
		}
		creds = credentials.NewTLS(tc)
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds))
	if err != nil {
		return fmt.Errorf("%s: %w", raw, err)
	}
	defer conn.Close()
	_, err = pb.NewMaintenanceClient(conn).Status(ctx, &pb.StatusRequest{})
	switch status.Code(err) {
	case codes.OK:
		return nil
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Unknown:
	default:
		// The member answered, if only to refuse an anonymous status
		// (etcd's auth): it is reachable, which is all this asks.
		return nil
	}
	msg := status.Convert(err).Message()
	switch {
	case ctx.Err() != nil:
		msg = "no answer in time (a host that is down, or a firewall that drops packets?)"
	case !useTLS && strings.Contains(msg, "server preface"):
		msg += " (does it serve TLS? use https://)"
	case useTLS && strings.Contains(msg, "handshake failed") &&
		(strings.Contains(msg, "EOF") || strings.Contains(msg, "reset by peer") || strings.Contains(msg, "first record does not look like")):
		msg += " (does it serve plain http?)"
	}
	return fmt.Errorf("%s: %s", raw, msg)
}

// tlsRefused makes a TLS connection to ep with tc and waits a moment for
// the server to refuse it: with TLS 1.3 a server that requires a client
// certificate says so after the handshake completed on the client's side,
// and a gRPC client that has begun writing by then sees only a broken
// pipe. It returns nil if the server did not refuse.
func tlsRefused(ctx context.Context, ep endpoint, tc *tls.Config) error {
	if ep.scheme == "unixs" {
		return nil // gRPC's error says enough
	}
	tc.NextProtos = []string{"h2"}
	conn, err := (&tls.Dialer{Config: tc}).DialContext(ctx, "tcp", ep.addr)
	if err != nil {
		if strings.Contains(err.Error(), "EOF") || strings.Contains(err.Error(), "reset by peer") {
			return fmt.Errorf("%w (does it serve plain http?)", err)
		}
		return err
	}
	defer conn.Close()
	deadline := time.Now().Add(tlsRefusalWait)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	conn.SetReadDeadline(deadline)
	_, err = conn.Read(make([]byte, 1))
	if err != nil && strings.Contains(err.Error(), "tls:") {
		return err // e.g. "remote error: tls: certificate required"
	}
	return nil
}

// tlsRefusalWait is how long tlsRefused waits for a refusal.
const tlsRefusalWait = 300 * time.Millisecond
