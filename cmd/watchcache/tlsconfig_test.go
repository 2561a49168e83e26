package main

import (
	"bytes"
	"log/slog"
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
		stamp := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		install := func(certPEM, keyPEM []byte) {
			t.Helper()
			stamp = stamp.Add(time.Minute) // a distinct modification time, whatever the file system's resolution
			for f, b := range map[string][]byte{certFile: certPEM, keyFile: keyPEM} {
				if err := os.WriteFile(f, b, 0o600); err != nil {
					t.Fatal(err)
				}
				if err := os.Chtimes(f, stamp, stamp); err != nil {
					t.Fatal(err)
				}
			}
		}
		read := func(f string) []byte {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
		install(read(first.CertFile), read(first.KeyFile))
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
		install(read(second.CertFile), read(second.KeyFile))
		if got := served(); got != "first" {
			t.Fatalf("serving %s before the next check, want first", got)
		}
		time.Sleep(certCheckInterval)
		if got := served(); got != "second" {
			t.Fatalf("serving %s after the files changed, want second", got)
		}
		install(read(first.CertFile), []byte("half-written"))
		time.Sleep(certCheckInterval)
		if got := served(); got != "second" {
			t.Fatalf("serving %s with a broken key file, want the previous one (second)", got)
		}
		if !strings.Contains(logs.String(), "cannot load the renewed TLS certificate") {
			t.Fatalf("no warning about the broken pair:\n%s", logs.String())
		}
	})
}
