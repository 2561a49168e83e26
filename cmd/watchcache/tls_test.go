package main

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"go.etcd.io/etcd/client/pkg/v3/transport"

	"github.com/watchcache/watchcache/internal/etcdtest"
	"github.com/watchcache/watchcache/internal/tlstest"
)

// TLS at both ends, as in production: the agent fronts an etcd that
// requires client certificates (-etcd-cacert, -etcd-cert, -etcd-key) and
// serves HTTPS that requires them too (-tls-cert, -tls-key,
// -tls-client-ca). The CLI (-ca-file, -client-cert, -client-key) and the
// real consul/api client talk to it; clients without the CA, without a
// certificate or in plain HTTP are refused with a message that says so.
func TestTLSEndToEnd(t *testing.T) {
	etcdCA := tlstest.NewCA(t, "etcd-ca")
	etcdSrv, agentAsClient := etcdCA.Server("etcd"), etcdCA.Client("watchcache-agent")
	c := etcdtest.Start(t, etcdtest.WithClientTLS(transport.TLSInfo{
		CertFile: etcdSrv.CertFile, KeyFile: etcdSrv.KeyFile, TrustedCAFile: etcdCA.CertFile, ClientCertAuth: true,
	}, etcdCA.ClientConfig(&agentAsClient)))

	apiCA := tlstest.NewCA(t, "api-ca")
	apiSrv, user := apiCA.Server("agent"), apiCA.Client("alice")
	httpAddr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var agentOut, agentErr syncBuffer
	exited := make(chan int, 1)
	go func() {
		exited <- run(ctx, []string{"agent", "-etcd", c.Endpoint(0),
			"-etcd-cacert", etcdCA.CertFile, "-etcd-cert", agentAsClient.CertFile, "-etcd-key", agentAsClient.KeyFile,
			"-http-addr", httpAddr, "-tls-cert", apiSrv.CertFile, "-tls-key", apiSrv.KeyFile, "-tls-client-ca", apiCA.CertFile,
			"-log-level", "warn"}, nil, &agentOut, &agentErr, env(nil))
	}()
	stopped := false
	defer func() {
		if !stopped {
			cancel()
			<-exited
		}
	}()
	tr := &http.Transport{TLSClientConfig: apiCA.ClientConfig(&user)}
	defer tr.CloseIdleConnections()
	waitReadyURL(t, "https://"+httpAddr, &http.Client{Transport: tr, Timeout: 5 * time.Second}, exited, &agentErr)
	if want := "watchcache agent: HTTP API on https://" + httpAddr; !strings.HasPrefix(agentOut.String(), want) {
		t.Errorf("start line %q, want it to begin %q", agentOut.String(), want)
	}

	cli := env(map[string]string{"WATCHCACHE_HTTP_ADDR": "https://" + httpAddr, "WATCHCACHE_CA_FILE": apiCA.CertFile})
	withCert := []string{"-client-cert", user.CertFile, "-client-key", user.KeyFile}
	for _, tc := range []struct {
		name       string
		getenv     func(string) string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{"put", cli, append([]string{"kv", "put"}, append(withCert, "app/db", "postgres")...), exitOK, "Success! Data written to: app/db\n", ""},
		{"get", cli, append([]string{"kv", "get"}, append(withCert, "app/db")...), exitOK, "postgres\n", ""},
		{"no client certificate", cli, []string{"kv", "get", "app/db"}, exitError, "", "certificate required"},
		{"CA not given", env(map[string]string{"WATCHCACHE_HTTP_ADDR": "https://" + httpAddr}),
			append([]string{"kv", "get"}, append(withCert, "app/db")...), exitError, "", "certificate signed by unknown authority"},
		{"plain http", env(map[string]string{"WATCHCACHE_HTTP_ADDR": "http://" + httpAddr}), []string{"kv", "get", "app/db"},
			exitError, "", "HTTP request to an HTTPS server"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCmd(t, tc.getenv, tc.args...)
			if code != tc.wantCode || stdout != tc.wantStdout || !strings.Contains(stderr, tc.wantStderr) {
				t.Fatalf("status %d, stdout %q, stderr %q\nwant status %d, stdout %q, stderr containing %q",
					code, stdout, stderr, tc.wantCode, tc.wantStdout, tc.wantStderr)
			}
		})
	}
	got, err := c.Client(t).Get(ctx, "app/db")
	if err != nil || len(got.Kvs) != 1 || string(got.Kvs[0].Value) != "postgres" {
		t.Fatalf("etcd after the put over TLS: %+v, %v", got, err)
	}

	consul, err := api.NewClient(&api.Config{Address: httpAddr, Scheme: "https", TLSConfig: api.TLSConfig{
		CAFile: apiCA.CertFile, CertFile: user.CertFile, KeyFile: user.KeyFile,
	}})
	if err != nil {
		t.Fatal(err)
	}
	if p, _, err := consul.KV().Get("app/db", nil); err != nil || p == nil || string(p.Value) != "postgres" {
		t.Fatalf("consul/api Get over HTTPS = %+v, %v", p, err)
	}
	if leader, err := consul.Status().Leader(); err != nil || leader != c.PeerAddr(0) {
		t.Fatalf("consul/api Status().Leader() over HTTPS = %q, %v", leader, err)
	}
	if resp, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: apiCA.Pool}}}).Get("https://" + httpAddr + "/v1/status"); err == nil {
		resp.Body.Close()
		t.Fatalf("a client without a certificate got %s", resp.Status)
	}

	cancel()
	select {
	case code := <-exited:
		stopped = true
		if code != exitOK {
			t.Fatalf("agent: status %d after cancel, stderr:\n%s", code, agentErr.String())
		}
	case <-time.After(waitFor):
		t.Fatalf("the agent did not stop within %v", waitFor)
	}
}

// An etcd that cannot be reached does not stop the agent, nor start it
// silently: the log says why at once, endpoint by endpoint, /readyz
// answers 503 with the cause, and the agent still stops cleanly.
func TestAgentUnreachableEtcd(t *testing.T) {
	httpAddr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var agentOut, agentErr syncBuffer
	exited := make(chan int, 1)
	go func() {
		exited <- run(ctx, []string{"agent", "-etcd", "http://" + freeAddr(t) + ",http://no-such-host.invalid:2379",
			"-http-addr", httpAddr}, nil, &agentOut, &agentErr, env(nil))
	}()
	stopped := false
	defer func() {
		if !stopped {
			cancel()
			<-exited
		}
	}()
	waitReady(t, httpAddr, exited, &agentErr)
	deadline := time.Now().Add(waitFor)
	for !strings.Contains(agentErr.String(), "the store does not answer") {
		if time.Now().After(deadline) {
			t.Fatalf("no warning that etcd does not answer:\n%s", agentErr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, want := range []string{"level=WARN", "connection refused", "no-such-host.invalid", "no such host"} {
		if !strings.Contains(agentErr.String(), want) {
			t.Errorf("the warning does not say %q:\n%s", want, agentErr.String())
		}
	}
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: waitFor}).Get("http://" + httpAddr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "connection refused") {
		t.Fatalf("/readyz = %s %q, want 503 with the cause", resp.Status, body)
	}
	cancel()
	select {
	case code := <-exited:
		stopped = true
		if code != exitOK {
			t.Fatalf("agent: status %d after cancel, stderr:\n%s", code, agentErr.String())
		}
	case <-time.After(waitFor):
		t.Fatalf("the agent did not stop within %v", waitFor)
	}
}
