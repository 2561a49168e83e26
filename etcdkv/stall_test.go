package etcdkv

import (
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/internal/etcdtest"
)

// stallProxy forwards TCP connections to an etcd member until stall is
// called; from then on it moves no more bytes either way, as a member
// that stopped reading (or a path that drops everything) would, while the
// connections stay open. The test's end closes them.
type stallProxy struct {
	ln      net.Listener
	target  string
	stalled chan struct{} // closed by stall
	once    sync.Once

	mu    sync.Mutex
	conns []net.Conn
	done  bool
	wg    sync.WaitGroup
}

func newStallProxy(t *testing.T, target string) *stallProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{ln: ln, target: strings.TrimPrefix(target, "http://"), stalled: make(chan struct{})}
	p.wg.Go(p.accept)
	t.Cleanup(p.close)
	return p
}

func (p *stallProxy) url() string { return "http://" + p.ln.Addr().String() }

func (p *stallProxy) stall() { p.once.Do(func() { close(p.stalled) }) }

func (p *stallProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		if p.done {
			p.mu.Unlock()
			c.Close()
			up.Close()
			return
		}
		p.conns = append(p.conns, c, up)
		p.wg.Go(func() { p.pipe(up, c) })
		p.wg.Go(func() { p.pipe(c, up) })
		p.mu.Unlock()
	}
}

// pipe copies from src to dst until either closes, or the proxy stalls.
func (p *stallProxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		select {
		case <-p.stalled:
			return // reads no more: src's sender fills its windows
		default:
		}
		n, err := src.Read(buf)
		if n > 0 {
			select {
			case <-p.stalled:
				return
			default:
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *stallProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	p.done = true
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// A member that stops reading a watch stream leaves gRPC's flow control
// closed: a Send on the stream then waits until the stream ends. Nothing
// that asks for progress (a consistent read) or cancels a watch (a cache
// worker closing an entry's state) may wait for it: their requests are
// queued, and a stalled stream holds only the goroutine that sends them.
// When nothing comes back on the connection at all, the client's
// keepalive closes it, which ends the stream and its watches.
func TestStalledStreamBlocksNoCaller(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t)
	cli := c.Client(t)
	put(t, cli, "/stall/a", "1")
	put(t, cli, "/stall/b", "1")
	proxy := newStallProxy(t, c.Endpoint(0))
	cfg := testConfig(c, 1)
	cfg.Endpoints = []string{proxy.url()}
	cfg.ConfigureClient = func(cc *clientv3.Config) {
		fastReconnect(cc)
		// etcd refuses pings more often than every 5 s.
		cc.DialKeepAliveTime, cc.DialKeepAliveTimeout = 6*time.Second, time.Second
	}
	f := newFixture(t, cfg, watchcache.Options{})
	ctx := testCtx(t)
	for _, k := range []string{"/stall/a", "/stall/b"} {
		if _, _, err := f.kinds.Key.Get(ctx, KeyRequest(k, self)); err != nil {
			t.Fatal(err)
		}
	}
	m := onlyStream(t, f.src)
	m.mu.Lock()
	var w *muxWatch
	for _, ww := range m.watches {
		w = ww
		break
	}
	watches := len(m.watches)
	m.mu.Unlock()
	if watches != 2 {
		t.Fatalf("%d watches on the stream, want 2", watches)
	}

	proxy.stall()
	// Far more than gRPC's windows hold: each request is a few bytes.
	const requests = 200_000
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range requests {
			if err := m.requestProgress(); err != nil {
				t.Errorf("progress request %d on the stalled stream: %v", i, err)
				return
			}
		}
		w.cancelWatch()
	}()
	select {
	case <-done:
	case <-time.After(waitFor):
		t.Fatalf("%d progress requests and a cancel on a stalled stream still wait after %v", requests, waitFor)
	}
	select {
	case <-m.stream.Context().Done(): // its connection closed, or the stream failed
	case <-time.After(waitFor):
		t.Fatalf("the stalled stream is still open after %v: keepalive should have closed its connection", waitFor)
	}
}
