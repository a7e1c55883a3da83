package embedded

import (
	"context"
	"crypto/tls"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/concordha/concord/internal/testpki"
)

// serverTLS is the member side of pki, requiring client certificates.
func serverTLS(pki testpki.PKI) *TLS {
	return &TLS{CertFile: pki.ServerCert, KeyFile: pki.ServerKey, TrustedCAFile: pki.CAFile, ClientCertAuth: true}
}

// tlsClient is a clientv3 client with pki's CA and client certificate.
func tlsClient(t *testing.T, pki testpki.PKI, endpoints ...string) *clientv3.Client {
	t.Helper()
	info := transport.TLSInfo{CertFile: pki.ClientCert, KeyFile: pki.ClientKey, TrustedCAFile: pki.CAFile}
	cfg, err := info.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	return clientWithTLS(t, cfg, endpoints...)
}

func clientWithTLS(t *testing.T, cfg *tls.Config, endpoints ...string) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, TLS: cfg, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("clientv3.New(%v): %v", endpoints, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// TestClientTLS: a member with ClientTLS serves https only, to clients
// with a certificate of the CA; Close still ends open watches at once
// (etcd runs gRPC under its HTTPS server then); the member restarts on
// its https URL.
func TestClientTLS(t *testing.T) {
	pki := testpki.New(t, t.TempDir())
	cfg := testConfig(t, "tls")
	cfg.ClientTLS = serverTLS(pki)
	s := start(t, cfg)
	eps := s.Endpoints()
	if len(eps) != 1 || !strings.HasPrefix(eps[0], "https://127.0.0.1:") {
		t.Fatalf("Endpoints() = %v, want one https loopback URL", eps)
	}
	if got := s.Config().PeerURL; !strings.HasPrefix(got, "http://") {
		t.Errorf("PeerURL without PeerTLS = %q, want http", got)
	}
	c := tlsClient(t, pki, eps...)
	put(t, c, "/k", "over TLS")

	// Without a client certificate, or over plaintext, nothing works.
	noCert, err := (&transport.TLSInfo{TrustedCAFile: pki.CAFile}).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	plain := "http://" + strings.TrimPrefix(eps[0], "https://")
	for name, bad := range map[string]*clientv3.Client{
		"no client certificate": clientWithTLS(t, noCert, eps...),
		"plaintext":             client(t, plain),
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		_, err := bad.Get(ctx, "/k")
		cancel()
		if err == nil {
			t.Errorf("%s: Get succeeded", name)
		}
	}

	// An open watch does not hold Close up.
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	wch := c.Watch(wctx, "/w", clientv3.WithCreatedNotify())
	if resp := <-wch; !resp.Created {
		t.Fatalf("watch not created: %v", resp.Err())
	}
	restart := s.Config()
	begin := time.Now()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(begin); d > 3*time.Second {
		t.Errorf("Close with an open watch over TLS took %v", d)
	}

	again := start(t, restart)
	if again.Endpoints()[0] != eps[0] {
		t.Errorf("restarted on %v, want %v", again.Endpoints(), eps)
	}
	if got := get(t, tlsClient(t, pki, again.Endpoints()...), "/k"); got != "over TLS" {
		t.Errorf("after restart: /k = %q", got)
	}
}

// TestPeerTLS: three members whose peers and clients all use TLS with
// certificates required form a cluster and replicate.
func TestPeerTLS(t *testing.T) {
	pki := testpki.New(t, t.TempDir())
	servers := startCluster(t, 3, func(c *Config) {
		c.ClientTLS = serverTLS(pki)
		c.PeerTLS = serverTLS(pki)
	})
	for i, s := range servers {
		if peer := s.Config().PeerURL; !strings.HasPrefix(peer, "https://127.0.0.1:") {
			t.Fatalf("member %d's peer URL = %q, want https", i, peer)
		}
	}
	put(t, tlsClient(t, pki, servers[0].Endpoints()...), "/peer", "replicated")
	for i, s := range servers {
		if got := get(t, tlsClient(t, pki, s.Endpoints()...), "/peer"); got != "replicated" {
			t.Errorf("read via member %d: %q", i, got)
		}
	}
}

// TestStartTLSFiles: files that cannot be used fail Start before the
// member starts, with an error naming the field.
func TestStartTLSFiles(t *testing.T) {
	dir := t.TempDir()
	pki := testpki.New(t, dir)
	other := testpki.New(t, t.TempDir())
	junk := filepath.Join(dir, "junk.pem")
	testpki.WritePEM(t, junk, "NOTHING", nil)
	for _, tc := range []struct {
		name   string
		client *TLS
		peer   *TLS
		want   string
	}{
		{"missing cert", &TLS{CertFile: filepath.Join(dir, "none.pem"), KeyFile: pki.ServerKey}, nil, "ClientTLS.CertFile"},
		{"key of another cert", &TLS{CertFile: pki.ServerCert, KeyFile: other.ServerKey}, nil, "ClientTLS.KeyFile"},
		{"missing CA", &TLS{CertFile: pki.ServerCert, KeyFile: pki.ServerKey, TrustedCAFile: filepath.Join(dir, "none.pem")}, nil, "ClientTLS.TrustedCAFile"},
		{"CA without a certificate", &TLS{CertFile: pki.ServerCert, KeyFile: pki.ServerKey, TrustedCAFile: junk}, nil, "ClientTLS.TrustedCAFile"},
		{"peer key missing", nil, &TLS{CertFile: pki.ServerCert, KeyFile: filepath.Join(dir, "none.pem")}, "PeerTLS.KeyFile"},
	} {
		cfg := testConfig(t, "files")
		cfg.ClientTLS, cfg.PeerTLS = tc.client, tc.peer
		s, err := Start(context.Background(), cfg)
		if err == nil {
			_ = s.Close()
			t.Errorf("%s: Start succeeded", tc.name)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Start = %v, want an error naming %s", tc.name, err, tc.want)
		}
	}
}
