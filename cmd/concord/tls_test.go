package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/concordha/concord/backends/etcd"
	"github.com/concordha/concord/backends/etcd/embedded"
	"github.com/concordha/concord/internal/testpki"
)

// TestRunEmbeddedTLS: a node whose embedded member serves clients over
// TLS with client certificates required, and peers over TLS too, reaches
// its member with TLS, presenting the certificate the config's rule
// names, and becomes primary; clients without a certificate are refused.
func TestRunEmbeddedTLS(t *testing.T) {
	pki := testpki.New(t, t.TempDir())
	cases := []struct {
		name      string
		clientTLS string
		peerTLS   bool
	}{
		{"the member's certificate for the node's client, peers over TLS",
			fmt.Sprintf("{cert_file: %s, key_file: %s, ca_file: %s, client_cert_auth: true}", pki.ServerCert, pki.ServerKey, pki.CAFile), true},
		{"a server-only member certificate and a client certificate",
			fmt.Sprintf("{cert_file: %s, key_file: %s, ca_file: %s, client_cert_auth: true, client_cert_file: %s, client_key_file: %s}",
				pki.ServerOnlyCert, pki.ServerOnlyKey, pki.CAFile, pki.ClientCert, pki.ClientKey), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clientURL, err := embedded.FreeLoopbackHTTPSURL()
			if err != nil {
				t.Fatal(err)
			}
			peerURL, peerTLS := "", ""
			if tc.peerTLS {
				peerURL, err = embedded.FreeLoopbackHTTPSURL()
				peerTLS = fmt.Sprintf("    peer_tls: {cert_file: %s, key_file: %s, ca_file: %s, client_cert_auth: true}\n", pki.ServerCert, pki.ServerKey, pki.CAFile)
			} else {
				peerURL, err = embedded.FreeLoopbackURL()
			}
			if err != nil {
				t.Fatal(err)
			}
			a := startRunner(t, writeConfig(t, embeddedConfig(t, "a",
				fmt.Sprintf("    client_url: %s\n    peer_url: %s\n    client_tls: %s\n%s", clientURL, peerURL, tc.clientTLS, peerTLS),
				oneService)))
			a.waitLog(t, 60*time.Second, "this node is primary")
			if !strings.Contains(a.logs.String(), "clients="+clientURL) {
				t.Errorf("the member does not serve clients at %s:\n%s", clientURL, a.logs)
			}

			obs, err := etcd.New(etcd.Config{Endpoints: []string{clientURL},
				TLS: &etcd.TLSFiles{CAFile: pki.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey}})
			if err != nil {
				t.Fatal(err)
			}
			defer obs.Close()
			if p := waitPrimary(t, obs, "db", "", 20*time.Second); p != "a" {
				t.Fatalf("primary = %s, want a", p)
			}

			noCert, err := etcd.New(etcd.Config{Endpoints: []string{clientURL}, TLS: &etcd.TLSFiles{CAFile: pki.CAFile}})
			if err != nil {
				t.Fatal(err)
			}
			defer noCert.Close()
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			if p, err := primaryOf(ctx, noCert, "db"); err == nil {
				t.Errorf("a client without a certificate read the primary record (%q)", p)
			}

			if tc.peerTLS { // the peer port speaks TLS, with the member's certificate
				checkTLSListener(t, peerURL, pki)
			}
		})
	}
}

// checkTLSListener completes a TLS handshake with the listener at url,
// verifying it with pki's CA, and checks that it presents pki's server
// certificate.
func checkTLSListener(t *testing.T, url string, pki testpki.PKI) {
	t.Helper()
	caPEM, err := os.ReadFile(pki.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	cert, err := tls.LoadX509KeyPair(pki.ServerCert, pki.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tls.Dial("tcp", strings.TrimPrefix(url, "https://"), &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatalf("TLS handshake with %s: %v", url, err)
	}
	defer conn.Close()
	if got := conn.ConnectionState().PeerCertificates[0].Raw; string(got) != string(cert.Certificate[0]) {
		t.Errorf("%s presents another certificate than peer_tls.cert_file", url)
	}
}
