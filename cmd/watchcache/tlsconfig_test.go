package main

import (
	"bytes"
	"crypto/tls"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/watchcache/watchcache/internal/tlstest"
)

// A certificate renewed in place is served from the next check on; one
// caught half-written is logged and the previous one kept.
func TestCertificateReload(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ca := tlstest.NewCA(t, "ca")
		first, second := ca.Server("first"), ca.Server("second")
		dir := t.TempDir()
		certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
		var files renewedFiles
		install := func(certPEM, keyPEM []byte) {
			t.Helper()
			files.install(t, map[string][]byte{certFile: certPEM, keyFile: keyPEM})
		}
		install(readFile(t, first.CertFile), readFile(t, first.KeyFile))
		var logs syncBuffer
		cfg, err := serverTLS(certFile, keyFile, "", slog.New(slog.NewTextHandler(&logs, nil)))
		if err != nil {
			t.Fatal(err)
		}
		served := func() string {
			t.Helper()
			c, err := cfg.GetCertificate(nil)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case bytes.Equal(c.Certificate[0], first.TLS.Certificate[0]):
				return "first"
			case bytes.Equal(c.Certificate[0], second.TLS.Certificate[0]):
				return "second"
			}
			return "unknown"
		}
		if got := served(); got != "first" {
			t.Fatalf("serving %s, want first", got)
		}
		install(readFile(t, second.CertFile), readFile(t, second.KeyFile))
		if got := served(); got != "first" {
			t.Fatalf("serving %s before the next check, want first", got)
		}
		time.Sleep(certCheckInterval)
		if got := served(); got != "second" {
			t.Fatalf("serving %s after the files changed, want second", got)
		}
		install(readFile(t, first.CertFile), []byte("half-written"))
		time.Sleep(certCheckInterval)
		if got := served(); got != "second" {
			t.Fatalf("serving %s with a broken key file, want the previous one (second)", got)
		}
		if !strings.Contains(logs.String(), "cannot load the renewed TLS certificate") {
			t.Fatalf("no warning about the broken pair:\n%s", logs.String())
		}
	})
}

// The client CA file is reloaded as the certificate is: a client whose
// certificate a renewed CA signed is admitted from the next check on, one
// the old CA signed no longer is, and a file caught half-written keeps the
// previous CAs. Clients are checked in real handshakes.
func TestClientCAReload(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		server := tlstest.NewCA(t, "server-ca").Server("agent")
		oldCA, newCA := tlstest.NewCA(t, "old-ca"), tlstest.NewCA(t, "new-ca")
		oldClient, newClient := oldCA.Client("alice"), newCA.Client("bob")
		caFile := filepath.Join(t.TempDir(), "clients-ca.pem")
		var files renewedFiles
		install := func(pem []byte) {
			t.Helper()
			files.install(t, map[string][]byte{caFile: pem})
		}
		install(readFile(t, oldCA.CertFile))
		var logs syncBuffer
		cfg, err := serverTLS(server.CertFile, server.KeyFile, caFile, slog.New(slog.NewTextHandler(&logs, nil)))
		if err != nil {
			t.Fatal(err)
		}
		// admitted reports whether the agent accepts a handshake from a
		// client presenting client.
		admitted := func(client tlstest.Pair) bool {
			t.Helper()
			sc, cc := net.Pipe()
			defer sc.Close()
			defer cc.Close()
			ccfg := &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{client.TLS}}
			go func() {
				c := tls.Client(cc, ccfg)
				if c.Handshake() == nil {
					c.Read(make([]byte, 1)) // TLS 1.3: the server's verdict on the certificate
				}
				cc.Close()
			}()
			return tls.Server(sc, cfg).Handshake() == nil
		}
		if !admitted(oldClient) || admitted(newClient) {
			t.Fatal("with the old CA: want alice (old CA) admitted and bob (new CA) refused")
		}
		install(readFile(t, newCA.CertFile))
		if !admitted(oldClient) {
			t.Fatal("alice refused before the next check")
		}
		time.Sleep(certCheckInterval)
		if admitted(oldClient) || !admitted(newClient) {
			t.Fatal("after the CA file changed: want bob admitted and alice refused")
		}
		install([]byte("-----BEGIN CERTIFICATE-----\nhalf"))
		time.Sleep(certCheckInterval)
		if !admitted(newClient) {
			t.Fatal("with a broken CA file: want the previous CAs kept (bob admitted)")
		}
		if !strings.Contains(logs.String(), "cannot load the renewed client CA certificates") {
			t.Fatalf("no warning about the broken CA file:\n%s", logs.String())
		}
	})
}

// renewedFiles writes files as a renewal does, each time with a later
// modification time than the last, whatever the file system's resolution.
type renewedFiles struct{ stamp time.Time }

func (r *renewedFiles) install(t *testing.T, files map[string][]byte) {
	t.Helper()
	if r.stamp.IsZero() {
		r.stamp = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	r.stamp = r.stamp.Add(time.Minute)
	for f, b := range files {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(f, r.stamp, r.stamp); err != nil {
			t.Fatal(err)
		}
	}
}

func readFile(t *testing.T, f string) []byte {
	t.Helper()
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
