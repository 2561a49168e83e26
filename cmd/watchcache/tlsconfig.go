package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
)

// certCheckInterval is how often the agent looks whether its certificate
// files changed (a certificate or CA renewed in place by cert-manager,
// certbot or Vault agent is used without a restart).
const certCheckInterval = 10 * time.Second

// serverTLS is the agent's HTTPS configuration: the certificate and key,
// reloaded when their files change, and with clientCAFile, client
// certificates required and verified against it, reloaded too.
//
// crypto/tls verifies client certificates against a fixed ClientCAs, so the
// agent verifies them itself (VerifyConnection), against the CA file as it
// is now. It names no CA in the handshake: a client then sends the
// certificate it has, where with the CAs named at startup a Go client whose
// certificate a renewed CA signed would send none.
func serverTLS(certFile, keyFile, clientCAFile string, log *slog.Logger) (*tls.Config, error) {
	certs := &certReloader{files: fileReloader{files: []string{certFile, keyFile}, what: "TLS certificate", log: log}}
	certs.files.load = certs.loadLocked
	if err := certs.files.init(); err != nil {
		return nil, err
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.getCertificate}
	if clientCAFile != "" {
		cas := &caReloader{files: fileReloader{files: []string{clientCAFile}, what: "client CA certificates", log: log}}
		cas.files.load = cas.loadLocked
		if err := cas.files.init(); err != nil {
			return nil, err
		}
		cfg.ClientAuth = tls.RequireAnyClientCert
		cfg.VerifyConnection = cas.verify
	}
	return cfg, nil
}

// fileReloader loads something from files, and loads it again when their
// modification times changed, looking at most every certCheckInterval. A
// load that fails then (a pair caught between the writes of its two files)
// is logged and what was loaded before is kept until the next check.
type fileReloader struct {
	files []string
	what  string       // what the files hold, for logs
	load  func() error // loads the files; called with mu held
	log   *slog.Logger

	mu      sync.Mutex // guards the fields below and what load sets
	stamps  []time.Time
	checked time.Time
}

// init loads the files the first time; its error is the caller's.
func (f *fileReloader) init() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.checked = time.Now()
	return f.loadLocked()
}

// checkLocked loads the files again if the interval passed and they
// changed.
func (f *fileReloader) checkLocked() {
	if time.Since(f.checked) < certCheckInterval {
		return
	}
	f.checked = time.Now()
	if stamps, err := f.stat(); err != nil || slices.Equal(stamps, f.stamps) {
		return
	}
	if err := f.loadLocked(); err != nil {
		f.log.Warn("cannot load the renewed "+f.what+"; using the previous ones", "err", err)
		return
	}
	f.log.Info("loaded the renewed "+f.what, "file", f.files[0])
}

func (f *fileReloader) loadLocked() error {
	stamps, err := f.stat()
	if err != nil {
		return err
	}
	if err := f.load(); err != nil {
		return err
	}
	f.stamps = stamps
	return nil
}

func (f *fileReloader) stat() ([]time.Time, error) {
	stamps := make([]time.Time, len(f.files))
	for i, file := range f.files {
		fi, err := os.Stat(file)
		if err != nil {
			return nil, err
		}
		stamps[i] = fi.ModTime()
	}
	return stamps, nil
}

// certReloader serves a certificate and key from files (fileReloader).
type certReloader struct {
	files fileReloader
	cert  *tls.Certificate // guarded by files.mu
}

func (r *certReloader) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.files.mu.Lock()
	defer r.files.mu.Unlock()
	r.files.checkLocked()
	return r.cert, nil
}

func (r *certReloader) loadLocked() error {
	certFile, keyFile := r.files.files[0], r.files.files[1]
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return fmt.Errorf("certificate %s and key %s: %w", certFile, keyFile, err)
	}
	r.cert = &cert
	return nil
}

// caReloader verifies client certificates against the CAs of a file
// (fileReloader).
type caReloader struct {
	files fileReloader
	pool  *x509.CertPool // guarded by files.mu
}

func (r *caReloader) loadLocked() error {
	pool, err := loadCAs(r.files.files[0])
	if err != nil {
		return err
	}
	r.pool = pool
	return nil
}

// verify is the check crypto/tls makes with RequireAndVerifyClientCert,
// against the current CAs. It runs on resumed sessions too, so a CA taken
// out of the file stops admitting its clients.
func (r *caReloader) verify(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tls: the agent requires a client certificate")
	}
	r.files.mu.Lock()
	r.files.checkLocked()
	pool := r.pool
	r.files.mu.Unlock()
	opts := x509.VerifyOptions{Roots: pool, Intermediates: x509.NewCertPool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	for _, c := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
		return fmt.Errorf("tls: client certificate: %w", err)
	}
	return nil
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
