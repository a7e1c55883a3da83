// Package tlsfiles loads the PEM files of a store client's TLS
// configuration, the fields of the backends' TLSFiles, so that every
// backend checks them alike and names the field of any file it cannot
// use.
package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"

	"github.com/concordha/concord/core"
)

// Files locate the certificates of a TLS connection to a store.
type Files struct {
	// CAFile verifies the servers' certificates; "" uses the system's
	// roots.
	CAFile string
	// CertFile and KeyFile are the client's certificate and key, for
	// servers that require client certificates; both or neither.
	CertFile, KeyFile string
	// ServerName overrides the name checked in the servers' certificates.
	ServerName string
	// InsecureSkipVerify accepts any server certificate: for tests only.
	InsecureSkipVerify bool
}

// Config loads f into a client configuration that requires TLS 1.2 or
// later. field is how errors name f, such as "zookeeper: Config.TLS";
// every error wraps core.ErrInvalidArgument and names the field whose
// file cannot be used, and why.
func (f Files) Config(field string) (*tls.Config, error) {
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         f.ServerName,
		InsecureSkipVerify: f.InsecureSkipVerify, //nolint:gosec // documented as for tests only
	}
	if f.CAFile != "" {
		pem, err := os.ReadFile(f.CAFile)
		if err != nil {
			return nil, fmt.Errorf("%s.CAFile: %w: %w", field, err, core.ErrInvalidArgument)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s.CAFile %q holds no PEM certificate: %w", field, f.CAFile, core.ErrInvalidArgument)
		}
		cfg.RootCAs = pool
	}
	switch {
	case (f.CertFile == "") != (f.KeyFile == ""):
		return nil, fmt.Errorf("%s: set both CertFile and KeyFile, or neither (CertFile %q, KeyFile %q): %w", field, f.CertFile, f.KeyFile, core.ErrInvalidArgument)
	case f.CertFile != "":
		cert, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("%s.CertFile %q and KeyFile %q: %w: %w", field, f.CertFile, f.KeyFile, err, core.ErrInvalidArgument)
		}
		// Always present the certificate, even to a server whose list of
		// acceptable CAs leaves it out (Go would then send none): the
		// server's refusal then names the real problem, an unknown
		// authority, not a missing certificate.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	}
	return cfg, nil
}
