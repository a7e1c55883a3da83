//go:build integration

package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/concordha/concord/backends/consul"
	"github.com/concordha/concord/core"
	"github.com/concordha/concord/internal/testpki"
)

// startConsulTLS starts a dev agent that serves its HTTP API over TLS
// only (port 8501), with the server certificate of pki, and requires
// client certificates signed by pki's CA.
func startConsulTLS(t *testing.T, pki testpki.PKI) *container {
	t.Helper()
	files := map[string][]byte{}
	for path, src := range map[string]string{
		"/consul/tls/ca.pem":         pki.CAFile,
		"/consul/tls/server.pem":     pki.ServerCert,
		"/consul/tls/server-key.pem": pki.ServerKey,
	} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		files[path] = b
	}
	const hcl = `ports { http = -1, https = 8501, grpc = -1 }
tls {
  defaults {
    ca_file = "/consul/tls/ca.pem"
    cert_file = "/consul/tls/server.pem"
    key_file = "/consul/tls/server-key.pem"
  }
  https { verify_incoming = true }
}`
	return startContainer(t, spec{
		Image: consulImage, Name: "consul-tls",
		Entrypoint: []string{"/bin/consul"},
		Cmd:        append([]string{"agent", "-dev", "-client=0.0.0.0"}, consulAgentArgs("-hcl", hcl)...),
		Files:      files,
		Port:       "8501/tcp",
		Ready:      consulTLSReady(t, pki),
	})
}

// consulTLSReady is consulReady over TLS, with pki's client certificate.
func consulTLSReady(t *testing.T, pki testpki.PKI) func(ctx context.Context, endpoint string) error {
	ca, err := os.ReadFile(pki.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca)
	cert, err := tls.LoadX509KeyPair(pki.ClientCert, pki.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}}
	return func(ctx context.Context, endpoint string) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+endpoint+"/v1/status/leader", nil)
		if err != nil {
			return err
		}
		tr := &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if s := strings.TrimSpace(string(body)); resp.StatusCode != http.StatusOK || s == `""` || s == "" {
			return errors.New("no leader yet: " + resp.Status + " " + s)
		}
		return nil
	}
}

// TestConsulTLS: the Store reaches an agent that requires TLS and client
// certificates with the CA and the client certificate of Config.TLS; a
// missing client certificate, or an agent certificate the CA does not
// verify, fails with ErrUnavailable and says why.
func TestConsulTLS(t *testing.T) {
	pki := testpki.New(t, t.TempDir())
	other := testpki.New(t, t.TempDir())
	agent := startConsulTLS(t, pki)
	ctx := testCtx(t, time.Minute)

	for i, ep := range []string{"https://" + agent.Endpoint(), agent.Endpoint()} {
		st := newConsul(t, consul.Config{
			Endpoints: []string{ep},
			TLS:       &consul.TLSFiles{CAFile: pki.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey},
		})
		kv, err := st.Create(ctx, fmt.Sprintf("tls/%d", i), []byte("v"))
		if err != nil {
			t.Fatalf("Create over TLS at %s: %v", ep, err)
		}
		if got, err := st.Get(ctx, kv.Key); err != nil || got.Version != kv.Version || string(got.Value) != "v" {
			t.Errorf("Get over TLS at %s = %+v, %v; want %+v", ep, got, err, kv)
		}
		s, err := st.NewSession(ctx, core.SessionOptions{TTL: consulTTL})
		if err != nil {
			t.Fatalf("NewSession over TLS at %s: %v", ep, err)
		}
		if _, err := s.Register(ctx, kv.Key+"/member", []byte("v")); err != nil {
			t.Errorf("Register over TLS at %s: %v", ep, err)
		}
		if err := s.Close(ctx); err != nil {
			t.Errorf("Session.Close over TLS at %s: %v", ep, err)
		}
	}

	for name, files := range map[string]*consul.TLSFiles{
		"no client certificate":                       {CAFile: pki.CAFile},
		"a client certificate of another CA":          {CAFile: pki.CAFile, CertFile: other.ClientCert, KeyFile: other.ClientKey},
		"an agent certificate the CA does not verify": {CAFile: other.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey},
	} {
		st := newConsul(t, consul.Config{Endpoints: []string{"https://" + agent.Endpoint()}, TLS: files})
		_, err := st.Get(ctx, "tls/k")
		t.Logf("Get with %s: %v", name, err)
		if !errors.Is(err, core.ErrUnavailable) || !strings.Contains(err.Error(), "certificate") {
			t.Errorf("Get with %s: %v, want ErrUnavailable saying why", name, err)
		}
	}
}
