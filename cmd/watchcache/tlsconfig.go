package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
)

// certCheckInterval is how often the agent looks whether its certificate
// files changed (a certificate renewed in place by cert-manager, certbot
// or Vault agent is served without a restart).
const certCheckInterval = 10 * time.Second

// serverTLS is the agent's HTTPS configuration: the certificate and key,
// reloaded when their files change, and with clientCAFile, client
// certificates required and verified against it.
func serverTLS(certFile, keyFile, clientCAFile string, log *slog.Logger) (*tls.Config, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile, log: log}
	if err := r.load(); err != nil {
		return nil, err
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: r.getCertificate}
	if clientCAFile != "" {
		pool, err := loadCAs(clientCAFile)
		if err != nil {
			return nil, err
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// certReloader serves a certificate and key from files, loading them again
// when their modification time changed, at most every certCheckInterval.
// A pair that fails to load (caught between the writes of its two files)
// is logged and the previous one kept until the next check.
type certReloader struct {
	certFile, keyFile string
	log               *slog.Logger

	mu      sync.Mutex // guards the fields below
	cert    *tls.Certificate
	stamp   [2]time.Time // the files' modification times when cert was loaded
	checked time.Time
}

func (r *certReloader) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.checked) >= certCheckInterval {
		r.checked = time.Now()
		if stamp, err := r.stamps(); err == nil && stamp != r.stamp {
			if err := r.loadLocked(); err != nil {
				r.log.Warn("cannot load the renewed TLS certificate; serving the previous one", "err", err)
			} else {
				r.log.Info("loaded the renewed TLS certificate", "file", r.certFile)
			}
		}
	}
	return r.cert, nil
}

func (r *certReloader) load() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.checked = time.Now()
	return r.loadLocked()
}

func (r *certReloader) loadLocked() error {
	stamp, err := r.stamps()
	if err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("certificate %s and key %s: %w", r.certFile, r.keyFile, err)
	}
	r.cert, r.stamp = &cert, stamp
	return nil
}

func (r *certReloader) stamps() ([2]time.Time, error) {
	var stamp [2]time.Time
	for i, f := range []string{r.certFile, r.keyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			return stamp, err
		}
		stamp[i] = fi.ModTime()
	}
	return stamp, nil
}

// loadCAs reads a PEM file of CA certificates.
func loadCAs(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate in it", file)
	}
	return pool, nil
}

// clientTLS is the client side of TLS as etcdctl and consul take it: a CA
// file (empty: the system's CAs) and an optional client certificate and
// key. It returns nil when all three are empty.
func clientTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	if caFile == "" && certFile == "" && keyFile == "" {
		return nil, nil
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("a client certificate and its key go together")
	}
	if caFile != "" {
		if _, err := loadCAs(caFile); err != nil { // a clearer error than transport's
			return nil, err
		}
	}
	info := transport.TLSInfo{TrustedCAFile: caFile, CertFile: certFile, KeyFile: keyFile}
	cfg, err := info.ClientConfig()
	if err != nil {
		return nil, err
	}
	cfg.MinVersion = tls.VersionTLS12
	return cfg, nil
}
