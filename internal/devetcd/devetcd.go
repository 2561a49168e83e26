// Package devetcd runs a single-node etcd inside the agent's process for
// `watchcache agent -dev`: a throwaway store in a temporary directory,
// reachable by etcdctl on its client address, and removed on Close.
package devetcd

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// DirPattern is the pattern of the data directories' names, in the
// system's temporary directory (os.MkdirTemp).
const DirPattern = "watchcache-dev-etcd-"

// readyTimeout bounds how long the node may take to elect itself leader.
const readyTimeout = 60 * time.Second

// live holds the data directories of the servers that run, for
// RemoveLiveDirs.
var live sync.Map // dir -> struct{}

// RemoveLiveDirs removes the data directory of every server still
// running, for a process that must exit before it could Close them (a
// third interrupt). On Linux etcd keeps the files it has open.
func RemoveLiveDirs() {
	live.Range(func(dir, _ any) bool {
		os.RemoveAll(dir.(string))
		return true
	})
}

// Server is a running single-node etcd. The zero value is not usable.
type Server struct {
	e       *embed.Etcd
	dir     string
	closing *atomic.Bool // set by Close: the logger drops what etcd says while it stops
}

// Start starts a single-node etcd serving clients on clientAddr
// (host:port, e.g. 127.0.0.1:2379) with its data in a new temporary
// directory. It returns once the node serves requests. Errors of the store
// itself are written to stderr; the rest of its logs are discarded.
func Start(clientAddr string) (*Server, error) {
	host, _, err := net.SplitHostPort(clientAddr)
	if err != nil {
		return nil, fmt.Errorf("devetcd: client address %q: %w", clientAddr, err)
	}
	peerAddr, err := freeAddr(host)
	if err != nil {
		return nil, fmt.Errorf("devetcd: finding a free peer port: %w", err)
	}
	dir, err := os.MkdirTemp("", DirPattern)
	if err != nil {
		return nil, fmt.Errorf("devetcd: %w", err)
	}
	live.Store(dir, struct{}{})
	clientURL := url.URL{Scheme: "http", Host: clientAddr}
	peerURL := url.URL{Scheme: "http", Host: peerAddr}

	cfg := embed.NewConfig()
	cfg.Name = "dev"
	cfg.Dir = dir
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.Name + "=" + peerURL.String()
	cfg.InitialClusterToken = "watchcache-dev"
	// A dev store is thrown away on exit: durability is not worth the
	// fsync latency on every write.
	cfg.UnsafeNoFsync = true
	cfg.Logger = "zap"
	closing := new(atomic.Bool)
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(errorsToStderr(closing))

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		live.Delete(dir)
		os.RemoveAll(dir)
		return nil, fmt.Errorf("devetcd: starting etcd on %s: %w", clientAddr, err)
	}
	s := &Server{e: e, dir: dir, closing: closing}
	select {
	case <-e.Server.ReadyNotify():
		return s, nil
	case err := <-e.Err():
		s.Close()
		return nil, fmt.Errorf("devetcd: etcd failed while starting: %w", err)
	case <-time.After(readyTimeout):
		s.Close()
		return nil, fmt.Errorf("devetcd: etcd on %s was not ready within %v", clientAddr, readyTimeout)
	}
}

// Endpoints returns the client URLs of the node.
func (s *Server) Endpoints() []string {
	var eps []string
	for _, u := range s.e.Config().AdvertiseClientUrls {
		eps = append(eps, u.String())
	}
	return eps
}

// Err returns a channel that receives an error if the node fails while it
// runs.
func (s *Server) Err() <-chan error { return s.e.Err() }

// Close stops the node and removes its data.
func (s *Server) Close() error {
	s.closing.Store(true)
	s.e.Close()
	<-s.e.Server.StopNotify()
	defer live.Delete(s.dir)
	return os.RemoveAll(s.dir)
}

// freeAddr returns host:port with a port that was free a moment ago.
func freeAddr(host string) (string, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// errorsToStderr is a logger for etcd that keeps only errors, and none
// once closing is set: a normal stop of an embedded etcd logs errors such
// as "setting up serving from embedded etcd failed ... server closed"
// (etcd-io/etcd#17424), which would make every clean exit look broken.
func errorsToStderr(closing *atomic.Bool) *zap.Logger {
	enc := zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig())
	core := zapcore.NewCore(enc, zapcore.Lock(os.Stderr), zapcore.ErrorLevel)
	return zap.New(quietWhenClosing{core, closing})
}

// quietWhenClosing drops every entry once closing is set.
type quietWhenClosing struct {
	zapcore.Core
	closing *atomic.Bool
}

func (q quietWhenClosing) With(fields []zapcore.Field) zapcore.Core {
	return quietWhenClosing{q.Core.With(fields), q.closing}
}

func (q quietWhenClosing) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if q.closing.Load() {
		return ce
	}
	return q.Core.Check(e, ce)
}
