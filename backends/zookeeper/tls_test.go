package zookeeper

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/concordha/concord/core"
	"github.com/concordha/concord/internal/testpki"
)

// serverTLS is the TLS of a server with pki's server certificate that
// requires client certificates of pki's CA, at most TLS version max.
func serverTLS(t *testing.T, pki testpki.PKI, max uint16) *tls.Config {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(pki.ServerCert, pki.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(pki.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MaxVersion:   max,
	}
}

func openTLS(t *testing.T, addr, digest string, files *TLSFiles) (*Store, error) {
	t.Helper()
	st, err := New(Config{Endpoints: []string{addr}, TLS: files, Digest: digest, DialTimeout: time.Second})
	if st != nil {
		t.Cleanup(func() { _ = st.Close() })
	}
	return st, err
}

// TestTLSConnections: every connection of the Store goes over TLS with
// the CA and the client certificate of Config.TLS: the Store's own
// (New authenticates a digest through it), a session's (its tracker
// reads the connect response and the answers through TLS, so the
// session opens and closes as confirmed), and ExpireSession's.
func TestTLSConnections(t *testing.T) {
	pki := testpki.New(t, t.TempDir())
	for _, v := range []struct {
		name string
		max  uint16
	}{{"TLS 1.2", tls.VersionTLS12}, {"TLS 1.3", tls.VersionTLS13}} {
		t.Run(v.name, func(t *testing.T) {
			f := newFakeZKTLS(t, serverTLS(t, pki, v.max))
			st, err := openTLS(t, f.addr(), "u:p", &TLSFiles{CAFile: pki.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey})
			if err != nil {
				t.Fatalf("New with a digest over TLS: %v", err)
			}
			ctx := ctxFor(t, 20*time.Second)
			s, err := st.NewSession(ctx, core.SessionOptions{TTL: 3 * time.Second})
			if err != nil {
				t.Fatalf("NewSession over TLS: %v", err)
			}
			if err := st.ExpireSession(ctx, s.ID()); err != nil {
				t.Errorf("ExpireSession over TLS: %v", err)
			}
			if !errors.Is(s.Err(), core.ErrSessionLost) {
				t.Errorf("Err after ExpireSession = %v, want ErrSessionLost", s.Err())
			}
			s2, err := st.NewSession(ctx, core.SessionOptions{TTL: 3 * time.Second})
			if err != nil {
				t.Fatalf("second NewSession over TLS: %v", err)
			}
			if err := s2.Close(ctx); err != nil {
				t.Errorf("Session.Close over TLS: %v (the close request must be answered)", err)
			}
			var closed []int64
			f.get(func(f *fakeZK) { closed = slices.Clone(f.closed) })
			for _, ss := range []core.Session{s, s2} {
				if id, _ := parseSessionID(ss.ID()); !slices.Contains(closed, id) {
					t.Errorf("the server saw no close request of session %s (closed: %x)", ss.ID(), closed)
				}
			}
		})
	}
}

// TestTLSFailures: a TLS connection that cannot be made fails calls with
// ErrUnavailable, saying that the handshake failed, and why.
func TestTLSFailures(t *testing.T) {
	pki := testpki.New(t, t.TempDir())
	other := testpki.New(t, t.TempDir())
	good := &TLSFiles{CAFile: pki.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey}
	for _, tc := range []struct {
		name   string
		server *tls.Config // nil: plaintext
		files  *TLSFiles
		want   []string
	}{
		{"server of another CA", serverTLS(t, other, 0), good,
			[]string{"TLS handshake with", "failed", "not signed by a CA of Config.TLS.CAFile", "unknown authority"}},
		{"wrong server name", serverTLS(t, pki, 0), &TLSFiles{CAFile: pki.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey, ServerName: "zk.example"},
			[]string{"TLS handshake with", "Config.TLS.ServerName", "zk.example"}},
		{"no client certificate, TLS 1.2", serverTLS(t, pki, tls.VersionTLS12), &TLSFiles{CAFile: pki.CAFile},
			[]string{"TLS handshake with", "refused the handshake", "requires a client certificate"}},
		{"no client certificate, TLS 1.3", serverTLS(t, pki, tls.VersionTLS13), &TLSFiles{CAFile: pki.CAFile},
			[]string{"refused by the server after the handshake", "requires a client certificate", "certificate required"}},
		{"client certificate of another CA, TLS 1.2", serverTLS(t, pki, tls.VersionTLS12), &TLSFiles{CAFile: pki.CAFile, CertFile: other.ClientCert, KeyFile: other.ClientKey},
			[]string{"TLS handshake with", "refused the handshake", "does not trust the client certificate"}},
		{"client certificate of another CA, TLS 1.3", serverTLS(t, pki, tls.VersionTLS13), &TLSFiles{CAFile: pki.CAFile, CertFile: other.ClientCert, KeyFile: other.ClientKey},
			[]string{"refused by the server after the handshake", "does not trust the client certificate"}},
		{"plaintext server", nil, good,
			[]string{"TLS handshake with", "secureClientPort"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeZKTLS(t, tc.server)
			st, err := openTLS(t, f.addr(), "", tc.files)
			if err != nil {
				t.Fatal(err)
			}
			ctx := ctxFor(t, 20*time.Second)
			check := func(call string, err error) {
				t.Helper()
				t.Logf("%s: %v", call, err)
				if !errors.Is(err, core.ErrUnavailable) {
					t.Errorf("%s: %v, want ErrUnavailable", call, err)
				}
				for _, w := range tc.want {
					if err == nil || !strings.Contains(err.Error(), w) {
						t.Errorf("%s: %v, want it to say %q", call, err, w)
					}
				}
			}
			_, err = st.Get(ctx, "k")
			check("Get", err)
			s, err := st.NewSession(ctx, core.SessionOptions{TTL: 3 * time.Second})
			if s != nil {
				_ = s.Close(ctx)
			}
			check("NewSession", err)
		})
	}
}

// TestTLSConfigErrors: TLS files that cannot be used fail New with
// ErrInvalidArgument, naming the field.
func TestTLSConfigErrors(t *testing.T) {
	dir := t.TempDir()
	pki := testpki.New(t, dir)
	ep := []string{"127.0.0.1:2281"}
	for _, tc := range []struct {
		name  string
		files *TLSFiles
		field string
	}{
		{"missing CA", &TLSFiles{CAFile: filepath.Join(dir, "none.pem")}, "Config.TLS.CAFile"},
		{"CA not PEM", &TLSFiles{CAFile: pki.ClientKey}, "Config.TLS.CAFile"},
		{"cert without key", &TLSFiles{CertFile: pki.ClientCert}, "Config.TLS"},
		{"mismatched key", &TLSFiles{CertFile: pki.ClientCert, KeyFile: pki.ServerKey}, "Config.TLS.CertFile"},
	} {
		st, err := New(Config{Endpoints: ep, TLS: tc.files})
		if !errors.Is(err, core.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.field) || !strings.HasPrefix(err.Error(), "zookeeper: ") {
			if st != nil {
				_ = st.Close()
			}
			t.Errorf("%s: New = %v, want ErrInvalidArgument naming %s", tc.name, err, tc.field)
		}
	}
}
