package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/concordha/concord/internal/testpki"
)

// tlsFiles writes two test PKIs and a file that is not PEM, and returns
// a replacer of the placeholders the cases below use: @CA@, @CERT@ and
// @KEY@ (a member certificate for server and client authentication),
// @SONLY@ and @SONLYKEY@ (server authentication only), @CCERT@ and
// @CKEY@ (a client certificate), @OTHERCA@, @OTHERCCERT@ and @OTHERCKEY@
// (of another CA), @JUNK@ (not PEM).
func tlsFiles(t *testing.T) *strings.Replacer {
	t.Helper()
	pki := testpki.New(t, t.TempDir())
	other := testpki.New(t, t.TempDir())
	junk := filepath.Join(t.TempDir(), "junk.pem")
	if err := os.WriteFile(junk, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return strings.NewReplacer(
		"@OTHERCCERT@", other.ClientCert, "@OTHERCKEY@", other.ClientKey, "@OTHERCA@", other.CAFile,
		"@SONLYKEY@", pki.ServerOnlyKey, "@SONLY@", pki.ServerOnlyCert,
		"@CCERT@", pki.ClientCert, "@CKEY@", pki.ClientKey,
		"@CERT@", pki.ServerCert, "@KEY@", pki.ServerKey, "@CA@", pki.CAFile, "@JUNK@", junk,
	)
}

// storeYAML is a valid file but for its store section; store starts on
// line 4.
func storeYAML(store string) string {
	return "node:\n  id: node-a\nstore:\n" + store + "services: [{name: db}]\n"
}

// TestEmbeddedTLSErrors: every rule of store.embedded.client_tls and
// peer_tls, and of store.tls against etcd endpoints, fails with the file,
// line, key and fix.
func TestEmbeddedTLSErrors(t *testing.T) {
	repl := tlsFiles(t)
	const member = "{cert_file: @CERT@, key_file: @KEY@, ca_file: @CA@}"
	cases := []struct {
		name  string
		store string
		want  []string
	}{
		// Schemes.
		{"client tls with http client_url", "  embedded:\n    client_url: http://127.0.0.1:2379\n    client_tls: " + member + "\n",
			[]string{`FILE:5: store.embedded.client_url: "http://127.0.0.1:2379" uses http, but store.embedded.client_tls is set, so the member serves only TLS there; write https://, or remove store.embedded.client_tls`}},
		{"https client_url without client tls", "  embedded:\n    client_url: https://127.0.0.1:2379\n",
			[]string{`FILE:5: store.embedded.client_url: "https://127.0.0.1:2379" uses https, but store.embedded.client_tls is not set; set store.embedded.client_tls (cert_file and key_file at least) to serve TLS, or write http://`}},
		{"peer tls with http peer_url", "  embedded:\n    peer_url: http://127.0.0.1:2380\n    peer_tls: " + member + "\n",
			[]string{`FILE:5: store.embedded.peer_url: "http://127.0.0.1:2380" uses http, but store.embedded.peer_tls is set`, "write https://, or remove store.embedded.peer_tls"}},
		{"https peer_url without peer tls", "  embedded:\n    peer_url: https://127.0.0.1:2380\n",
			[]string{`FILE:5: store.embedded.peer_url: "https://127.0.0.1:2380" uses https, but store.embedded.peer_tls is not set`}},
		{"peer tls with an http member", "  embedded:\n    peer_tls: " + member + "\n    initial_cluster: node-a=https://127.0.0.1:2380,node-b=http://127.0.0.1:2480\n",
			[]string{`FILE:6: store.embedded.initial_cluster: member node-b: "http://127.0.0.1:2480" uses http, but store.embedded.peer_tls is set`, "(every member's peer URL uses the same scheme)"}},
		{"https member without peer tls", "  embedded:\n    initial_cluster: node-a=http://127.0.0.1:2380,node-b=https://127.0.0.1:2480\n",
			[]string{`FILE:5: store.embedded.initial_cluster: member node-b: "https://127.0.0.1:2480" uses https, but store.embedded.peer_tls is not set`}},

		// Keys and files.
		{"client tls without key", "  embedded:\n    client_tls:\n      cert_file: @CERT@\n",
			[]string{"FILE:5: store.embedded.client_tls.key_file: missing; the member needs the private key of store.embedded.client_tls.cert_file: set it, or remove store.embedded.client_tls"}},
		{"peer tls without cert", "  embedded:\n    peer_tls:\n      key_file: @KEY@\n",
			[]string{"FILE:5: store.embedded.peer_tls.cert_file: missing; with store.embedded.peer_tls set the member serves TLS with this certificate: set cert_file and key_file, or remove store.embedded.peer_tls"}},
		{"only ca_file", "  embedded:\n    client_tls: {ca_file: @CA@}\n",
			[]string{"store.embedded.client_tls.cert_file: missing", "store.embedded.client_tls.key_file: missing"}},
		{"missing files", "  embedded:\n    peer_tls:\n      cert_file: certs/nope.pem\n      key_file: certs/nope-key.pem\n      ca_file: certs/nope-ca.pem\n",
			[]string{
				`FILE:6: store.embedded.peer_tls.cert_file: "certs/nope.pem" does not exist; give the path of a readable file (relative paths start at the working directory)`,
				`FILE:7: store.embedded.peer_tls.key_file: "certs/nope-key.pem" does not exist`,
				`FILE:8: store.embedded.peer_tls.ca_file: "certs/nope-ca.pem" does not exist`,
			}},
		{"client_cert_auth without ca", "  embedded:\n    client_tls:\n      cert_file: @CERT@\n      key_file: @KEY@\n      client_cert_auth: true\n",
			[]string{"FILE:8: store.embedded.client_tls.client_cert_auth: is true, but store.embedded.client_tls.ca_file is not set; give the CA bundle that verifies the certificates presented to the member, or set client_cert_auth to false"}},
		{"peer client_cert_auth without ca", "  embedded:\n    peer_tls: {cert_file: @CERT@, key_file: @KEY@, client_cert_auth: true}\n",
			[]string{"FILE:5: store.embedded.peer_tls.client_cert_auth: is true, but store.embedded.peer_tls.ca_file is not set"}},
		{"cert not PEM", "  embedded:\n    client_tls: {cert_file: @JUNK@, key_file: @KEY@, ca_file: @CA@}\n",
			[]string{"FILE:5: store.embedded.client_tls.cert_file: \"@JUNK@\" with store.embedded.client_tls.key_file \"@KEY@\":", "give a PEM certificate and, in store.embedded.client_tls.key_file, its PEM private key"}},
		{"key of another certificate", "  embedded:\n    peer_tls: {cert_file: @CERT@, key_file: @CKEY@, ca_file: @CA@}\n",
			[]string{"store.embedded.peer_tls.cert_file: \"@CERT@\" with store.embedded.peer_tls.key_file \"@CKEY@\": tls: private key does not match public key"}},
		{"ca not PEM", "  embedded:\n    client_tls: {cert_file: @CERT@, key_file: @KEY@, ca_file: @JUNK@}\n",
			[]string{`FILE:5: store.embedded.client_tls.ca_file: "@JUNK@" holds no PEM certificate; give the CA bundle`}},
		{"client tls with etcd", "  type: etcd\n  endpoints: [a:1]\n  embedded:\n    client_tls:\n      cert_file: @CERT@\n",
			[]string{"FILE:8: store.embedded.client_tls.cert_file: is set, but only the embedded store uses it and store.type is etcd; remove it, or fix store.type"}},
		{"peer tls with memory", "  type: memory\n  embedded:\n    peer_tls: {client_cert_auth: true}\n",
			[]string{"FILE:6: store.embedded.peer_tls.client_cert_auth: is set, but only the embedded store uses it and store.type is memory"}},
		{"store.tls with embedded", "  tls: {ca_file: @CA@}\n",
			[]string{"FILE:4: store.tls.ca_file: is set, but only the etcd, consul and zookeeper stores use it and store.type is embedded"}},

		// The node's own client must trust the member's certificate.
		{"certificate for another host", "  embedded:\n    client_url: https://10.0.0.1:2379\n    client_tls: " + member + "\n",
			[]string{`FILE:6: store.embedded.client_tls.cert_file: "@CERT@" does not name 10.0.0.1, the host of store.embedded.client_url, so this node's own client, which dials store.embedded.client_url, would refuse it; reissue it with 10.0.0.1 among its subject alternative names, or write client_url with a host it names`}},
		{"private CA without ca_file", "  embedded:\n    client_tls: {cert_file: @CERT@, key_file: @KEY@}\n",
			[]string{`FILE:5: store.embedded.client_tls.cert_file: "@CERT@" is not signed by a CA this system trusts, and store.embedded.client_tls.ca_file is not set, so this node's own client`, "set ca_file to the CA bundle that signed it"}},
		{"ca_file of another CA", "  embedded:\n    client_tls: {cert_file: @CERT@, key_file: @KEY@, ca_file: @OTHERCA@}\n",
			[]string{`store.embedded.client_tls.cert_file: "@CERT@" is not signed by the CA in store.embedded.client_tls.ca_file "@OTHERCA@"`}},

		// The certificate the node's own client presents.
		{"own certificate not for clients", "  embedded:\n    client_tls: {cert_file: @SONLY@, key_file: @SONLYKEY@, ca_file: @CA@, client_cert_auth: true}\n",
			[]string{`FILE:5: store.embedded.client_tls.cert_file: "@SONLY@" is not valid for client authentication (its extended key usage lacks clientAuth), but with client_cert_auth this node's own client presents it to the member; reissue it with clientAuth as well as serverAuth, or set store.embedded.client_tls.client_cert_file and store.embedded.client_tls.client_key_file`}},
		{"client cert without client_cert_auth", "  embedded:\n    client_tls: {cert_file: @CERT@, key_file: @KEY@, ca_file: @CA@, client_cert_file: @CCERT@, client_key_file: @CKEY@}\n",
			[]string{"FILE:5: store.embedded.client_tls.client_cert_file: is set, but store.embedded.client_tls.client_cert_auth is not true, so the member asks no client for a certificate and this node's client presents none; remove it, or set client_cert_auth: true"}},
		{"client key alone", "  embedded:\n    client_tls: {cert_file: @CERT@, key_file: @KEY@, ca_file: @CA@, client_cert_auth: true, client_key_file: @CKEY@}\n",
			[]string{"store.embedded.client_tls.client_key_file: is set but store.embedded.client_tls.client_cert_file is not; this node's client key needs its certificate: set both or neither"}},
		{"client cert alone", "  embedded:\n    client_tls: {cert_file: @CERT@, key_file: @KEY@, ca_file: @CA@, client_cert_auth: true, client_cert_file: @CCERT@}\n",
			[]string{"store.embedded.client_tls.client_cert_file: is set but store.embedded.client_tls.client_key_file is not"}},
		{"client cert missing", "  embedded:\n    client_tls: {cert_file: @CERT@, key_file: @KEY@, ca_file: @CA@, client_cert_auth: true, client_cert_file: nope.pem, client_key_file: @CKEY@}\n",
			[]string{`store.embedded.client_tls.client_cert_file: "nope.pem" does not exist`}},
		{"client cert of another CA", "  embedded:\n    client_tls: {cert_file: @CERT@, key_file: @KEY@, ca_file: @CA@, client_cert_auth: true, client_cert_file: @OTHERCCERT@, client_key_file: @OTHERCKEY@}\n",
			[]string{`store.embedded.client_tls.client_cert_file: "@OTHERCCERT@" is not signed by the CA in store.embedded.client_tls.ca_file "@CA@", which the member checks client certificates against, so it would refuse this node's own client`}},
		{"client cert not for clients", "  embedded:\n    client_tls: {cert_file: @CERT@, key_file: @KEY@, ca_file: @CA@, client_cert_auth: true, client_cert_file: @SONLY@, client_key_file: @SONLYKEY@}\n",
			[]string{`store.embedded.client_tls.client_cert_file: "@SONLY@" is not valid for client authentication (its extended key usage does not allow it), so the member would refuse this node's own client, which presents it; reissue it with the clientAuth extended key usage`}},

		// Peers.
		{"peer certificate not for clients", "  embedded:\n    peer_tls: {cert_file: @SONLY@, key_file: @SONLYKEY@, ca_file: @CA@, client_cert_auth: true}\n",
			[]string{`FILE:5: store.embedded.peer_tls.cert_file: "@SONLY@" is not valid for client authentication (its extended key usage lacks clientAuth), but with store.embedded.peer_tls.client_cert_auth the member presents it when it dials the other members, which would refuse it; reissue it with clientAuth as well as serverAuth, or set client_cert_auth to false`}},
		{"peer private CA without ca_file", "  embedded:\n    peer_tls: {cert_file: @CERT@, key_file: @KEY@}\n",
			[]string{`store.embedded.peer_tls.cert_file: "@CERT@" is not signed by a CA this system trusts, and store.embedded.peer_tls.ca_file is not set, so the other members (which normally share ca_file) would refuse it; set ca_file to the CA bundle that signed it, on every member`}},
		{"peer ca_file of another CA", "  embedded:\n    peer_tls: {cert_file: @CERT@, key_file: @KEY@, ca_file: @OTHERCA@}\n",
			[]string{`store.embedded.peer_tls.cert_file: "@CERT@" is not signed by the CA in store.embedded.peer_tls.ca_file "@OTHERCA@"`}},

		// External etcd: endpoint schemes against store.tls.
		{"etcd mixed schemes", "  type: etcd\n  endpoints: [http://a:1, https://b:1, c:1]\n",
			[]string{"FILE:5: store.endpoints: mixes http:// (store.endpoints[0] is http://a:1) and https:// (store.endpoints[1] is https://b:1), but etcd's client dials every endpoint with the same scheme; write them all https:// (TLS, set up by store.tls), or all http:// (plaintext)"}},
		{"etcd tls with http endpoints", "  type: etcd\n  endpoints: [http://a:1, b:1, http://c:1]\n  tls:\n    ca_file: @CA@\n",
			[]string{"FILE:6: store.tls: is set, but store.endpoints[0] is http://a:1, store.endpoints[2] is http://c:1: http:// is plaintext, so the TLS settings would not be used; write the endpoints as https:// (or host:port), or remove store.tls"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, p, err := loadYAML(t, repl.Replace(storeYAML(tc.store)))
			if f != nil {
				t.Errorf("Load returned a File with the error")
			}
			for _, w := range tc.want {
				wantErr(t, err, strings.ReplaceAll(repl.Replace(w), "FILE", p))
			}
		})
	}
}

// TestEmbeddedTLSValid: valid TLS setups load, with https defaults, the
// right certificate for the node's own client, and no warnings.
func TestEmbeddedTLSValid(t *testing.T) {
	repl := tlsFiles(t)
	cases := []struct {
		name, store            string
		clientURL, peerURL     string
		nodeCert, nodeKey      string // NodeClientCert
		wantClient, wantPeerOn bool
	}{
		{"both, own certificate for the node's client",
			"  embedded:\n    client_tls: {cert_file: @CERT@, key_file: @KEY@, ca_file: @CA@, client_cert_auth: true}\n    peer_tls: {cert_file: @CERT@, key_file: @KEY@, ca_file: @CA@, client_cert_auth: true}\n",
			"https://127.0.0.1:2379", "https://127.0.0.1:2380", "@CERT@", "@KEY@", true, true},
		{"server-only member certificate, explicit client certificate",
			"  embedded:\n    client_url: https://localhost:2379\n    client_tls: {cert_file: @SONLY@, key_file: @SONLYKEY@, ca_file: @CA@, client_cert_auth: true, client_cert_file: @CCERT@, client_key_file: @CKEY@}\n",
			"https://localhost:2379", "http://127.0.0.1:2380", "@CCERT@", "@CKEY@", true, false},
		{"clients over TLS without client certificates",
			"  embedded:\n    client_tls: {cert_file: @SONLY@, key_file: @SONLYKEY@, ca_file: @CA@}\n",
			"https://127.0.0.1:2379", "http://127.0.0.1:2380", "", "", true, false},
		{"peers only, in a loopback cluster",
			"  embedded:\n    peer_url: https://127.0.0.1:2380\n    peer_tls: {cert_file: @CERT@, key_file: @KEY@, ca_file: @CA@, client_cert_auth: true}\n    initial_cluster: node-a=https://127.0.0.1:2380,node-b=https://127.0.0.1:2480\n",
			"http://127.0.0.1:2379", "https://127.0.0.1:2380", "", "", false, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, _, err := loadYAML(t, repl.Replace(storeYAML(tc.store)))
			if err != nil {
				t.Fatal(err)
			}
			e := f.Store.Embedded
			if e.ClientURL != tc.clientURL || e.PeerURL != tc.peerURL {
				t.Errorf("client_url, peer_url = %s, %s; want %s, %s", e.ClientURL, e.PeerURL, tc.clientURL, tc.peerURL)
			}
			if !strings.Contains(e.InitialCluster, "node-a="+tc.peerURL) {
				t.Errorf("initial_cluster = %s; want node-a=%s in it", e.InitialCluster, tc.peerURL)
			}
			if e.ClientTLS.Enabled() != tc.wantClient || e.PeerTLS.Enabled() != tc.wantPeerOn {
				t.Errorf("client_tls, peer_tls enabled = %v, %v", e.ClientTLS.Enabled(), e.PeerTLS.Enabled())
			}
			cert, key := e.ClientTLS.NodeClientCert()
			if want, wantKey := repl.Replace(tc.nodeCert), repl.Replace(tc.nodeKey); cert != want || key != wantKey {
				t.Errorf("NodeClientCert = %q, %q; want %q, %q", cert, key, want, wantKey)
			}
			if w := f.Warnings(); len(w) > 0 {
				t.Errorf("warnings: %q", w)
			}
		})
	}
}

// TestEtcdSchemesValid: https endpoints need no store.tls (the system's
// roots verify them); host:port goes with either.
func TestEtcdSchemesValid(t *testing.T) {
	repl := tlsFiles(t)
	for _, store := range []string{
		"  type: etcd\n  endpoints: [https://a:1, https://b:1]\n",
		"  type: etcd\n  endpoints: [https://a:1, b:1]\n  tls: {ca_file: @CA@}\n",
		"  type: etcd\n  endpoints: [http://a:1, b:1]\n",
		"  type: etcd\n  endpoints: [a:1]\n  tls: {ca_file: @CA@}\n",
	} {
		if _, _, err := loadYAML(t, repl.Replace(storeYAML(store))); err != nil {
			t.Errorf("%s: %v", store, err)
		}
	}
}

// TestEmbeddedPeerWarning: an embedded cluster whose peers talk plain
// http is warned about; one with peer_tls, and a single member, are not.
func TestEmbeddedPeerWarning(t *testing.T) {
	repl := tlsFiles(t)
	const want = "store.embedded.peer_url: http://10.0.0.1:2380 is not https, so the traffic between the members of store.embedded.initial_cluster is unencrypted and unauthenticated: whoever reaches a peer port can read the store and speak as a member; set store.embedded.peer_tls (with client_cert_auth) on every member and write every peer URL as https://"
	f, p, err := loadYAML(t, storeYAML("  embedded:\n    peer_url: http://10.0.0.1:2380\n    initial_cluster: node-a=http://10.0.0.1:2380,node-b=http://10.0.0.2:2380\n"))
	if err != nil {
		t.Fatal(err)
	}
	if w := strings.Join(f.Warnings(), "\n"); !strings.Contains(w, p+":5: "+want) {
		t.Errorf("warnings lack %q:\n%s", want, w)
	}
	for _, store := range []string{
		"  embedded:\n    peer_url: http://10.0.0.1:2380\n",
		"  embedded:\n    peer_tls: {cert_file: @CERT@, key_file: @KEY@, ca_file: @CA@, client_cert_auth: true}\n    initial_cluster: node-a=https://127.0.0.1:2380,node-b=https://127.0.0.1:2480\n",
	} {
		f, _, err := loadYAML(t, repl.Replace(storeYAML(store)))
		if err != nil {
			t.Fatal(err)
		}
		if w := f.Warnings(); len(w) > 0 {
			t.Errorf("%s: warnings %q", store, w)
		}
	}
}
