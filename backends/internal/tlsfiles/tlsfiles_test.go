package tlsfiles

import (
	"crypto/tls"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/concordha/concord/core"
	"github.com/concordha/concord/internal/testpki"
)

func TestConfig(t *testing.T) {
	dir := t.TempDir()
	pki := testpki.New(t, dir)
	cfg, err := Files{CAFile: pki.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey, ServerName: "zk.example"}.Config("x: Config.TLS")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.RootCAs == nil || cfg.GetClientCertificate == nil || cfg.ServerName != "zk.example" || cfg.InsecureSkipVerify {
		t.Errorf("Config = %+v; want the CA, the client certificate and the server name", cfg)
	}
	// The certificate goes out whatever CAs the server says it accepts.
	if c, err := cfg.GetClientCertificate(&tls.CertificateRequestInfo{AcceptableCAs: [][]byte{[]byte("another CA")}}); err != nil || len(c.Certificate) == 0 {
		t.Errorf("GetClientCertificate for a server accepting another CA = %v, %v; want the client certificate", c, err)
	}
	cfg, err = Files{}.Config("x: Config.TLS")
	if err != nil || cfg.RootCAs != nil || cfg.GetClientCertificate != nil {
		t.Errorf("empty Files: %+v, %v; want the system's roots and no certificate", cfg, err)
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	pki := testpki.New(t, dir)
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		f     Files
		field string
	}{
		{"missing CA", Files{CAFile: filepath.Join(dir, "none.pem")}, "Config.TLS.CAFile"},
		{"CA not PEM", Files{CAFile: notPEM}, "Config.TLS.CAFile"},
		{"cert without key", Files{CertFile: pki.ClientCert}, "set both CertFile and KeyFile"},
		{"key without cert", Files{KeyFile: pki.ClientKey}, "set both CertFile and KeyFile"},
		{"key of another cert", Files{CertFile: pki.ClientCert, KeyFile: pki.ServerKey}, "Config.TLS.CertFile"},
		{"cert not PEM", Files{CertFile: notPEM, KeyFile: pki.ClientKey}, "Config.TLS.CertFile"},
	} {
		_, err := tc.f.Config("x: Config.TLS")
		if !errors.Is(err, core.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.field) || !strings.HasPrefix(err.Error(), "x: ") {
			t.Errorf("%s: %v; want ErrInvalidArgument naming %s", tc.name, err, tc.field)
		}
	}
}
