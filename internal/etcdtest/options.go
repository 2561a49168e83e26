package etcdtest

import (
	"crypto/tls"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Option configures Start.
type Option func(*options)

type options struct {
	members   int
	logger    *zap.Logger
	configure []func(*embed.Config)

	serverTLS *transport.TLSInfo // nil: clients talk plain http
	clientTLS *tls.Config
}

// WithMembers sets the number of members of the cluster (default 1). Use an
// odd number: 3 members survive the loss of one.
func WithMembers(n int) Option {
	return func(o *options) { o.members = n }
}

// WithLogger sends the etcd servers' logs to lg instead of discarding them;
// handy when debugging a test. Beware that etcd logs from its own goroutines
// until the cluster is stopped in cleanup, so a logger that writes to a
// testing.T (zaptest) must belong to the test that called Start.
func WithLogger(lg *zap.Logger) Option {
	return func(o *options) { o.logger = lg }
}

// WithClientTLS makes the members serve clients over TLS only (https://
// endpoints) with server (set ClientCertAuth to require client
// certificates), and the harness's own clients (Client, EnableAuth, ...)
// connect with client. Members talk to each other in plain http.
func WithClientTLS(server transport.TLSInfo, client *tls.Config) Option {
	return func(o *options) { o.serverTLS, o.clientTLS = &server, client }
}

// WithConfig lets a test adjust the embed configuration of every member, for
// example to set WatchProgressNotifyInterval. fn runs after the harness has
// filled in the configuration, each time a member is (re)started; changing
// names, directories or URLs breaks the harness.
func WithConfig(fn func(cfg *embed.Config)) Option {
	return func(o *options) { o.configure = append(o.configure, fn) }
}
