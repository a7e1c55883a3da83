package etcd

import (
	"context"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/concordha/concord/backends/etcd/embedded"
	"github.com/concordha/concord/backends/storetest"
	"github.com/concordha/concord/core"
	"github.com/concordha/concord/internal/testpki"
)

// startTLSServer starts a one-member etcd that serves clients over TLS
// only, with the server certificate of pki, and requires a client
// certificate signed by pki's CA.
func startTLSServer(t *testing.T, pki testpki.PKI) *embedded.Server {
	t.Helper()
	cfg := memberConfig(t.TempDir(), "tls")
	cfg.ClientTLS = &embedded.TLS{
		CertFile:       pki.ServerCert,
		KeyFile:        pki.ServerKey,
		TrustedCAFile:  pki.CAFile,
		ClientCertAuth: true,
	}
	srv := startMember(t, cfg)
	if eps := srv.Endpoints(); len(eps) != 1 || !strings.HasPrefix(eps[0], "https://127.0.0.1:") {
		t.Fatalf("Endpoints() of a member with ClientTLS = %v, want one https loopback URL", eps)
	}
	return srv
}

// openTLSStore connects a Store to srv with the CA and the client
// certificate of pki, closed when the test ends.
func openTLSStore(t *testing.T, srv *embedded.Server, pki testpki.PKI) *Store {
	t.Helper()
	st, err := New(Config{
		Endpoints: srv.Endpoints(),
		TLS:       &TLSFiles{CAFile: pki.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey},
		MaxTxnOps: testMaxTxnOps,
		Logger:    testLogger(),
	})
	if err != nil {
		t.Fatalf("New over TLS: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// TestTLSStore: a Store with a CA and a client certificate works against
// a member that requires client certificates: writes, reads, a session
// and its key, a watch that sees them come and go.
func TestTLSStore(t *testing.T) {
	pki := testpki.New(t, t.TempDir())
	srv := startTLSServer(t, pki)
	st := openTLSStore(t, srv, pki)
	ctx := ctxFor(t, 30*time.Second)
	const p = "/tls/"

	kv, err := st.Create(ctx, p+"a", []byte("1"))
	if err != nil {
		t.Fatalf("Create over TLS: %v", err)
	}
	if kv, err = st.CompareAndSwap(ctx, p+"a", []byte("2"), kv.Version); err != nil {
		t.Fatalf("CompareAndSwap over TLS: %v", err)
	}
	if got, err := st.Get(ctx, p+"a"); err != nil || string(got.Value) != "2" || got.Version != kv.Version {
		t.Fatalf("Get over TLS = %+v, %v; want value 2 at version %d", got, err, kv.Version)
	}
	w := startWatch(t, st, p)
	w.until(10*time.Second, "first snapshot", holds(map[string]string{p + "a": "2"}))
	s, err := st.NewSession(ctx, core.SessionOptions{TTL: conformanceTTL})
	if err != nil {
		t.Fatalf("NewSession over TLS: %v", err)
	}
	if _, err := s.Register(ctx, p+"member", []byte("me")); err != nil {
		t.Fatalf("Register over TLS: %v", err)
	}
	w.until(10*time.Second, "the session's key", holds(map[string]string{p + "a": "2", p + "member": "me"}))
	if err := s.Close(ctx); err != nil {
		t.Fatalf("Session.Close over TLS: %v", err)
	}
	w.until(10*time.Second, "the session's key gone", holds(map[string]string{p + "a": "2"}))
}

// TestTLSConformance runs the whole suite over TLS with client
// certificates (about 25s; skipped with -short).
func TestTLSConformance(t *testing.T) {
	if testing.Short() {
		t.Skip("the suite over TLS takes about 25s")
	}
	pki := testpki.New(t, t.TempDir())
	srv := startTLSServer(t, pki)
	storetest.Run(t, storetest.Factory{
		New:  func(t *testing.T) core.Store { return openTLSStore(t, srv, pki) },
		TTL:  conformanceTTL,
		Root: "/storetest-tls/",
	})
}

// TestTLSRefused: a client whose TLS setup the member, or the client
// itself, refuses cannot connect. New does not wait for the cluster, so
// it succeeds; each call then fails when its context ends, no later, and
// says why no connection works. With Username set, New itself fails
// after DialTimeout, saying the same.
func TestTLSRefused(t *testing.T) {
	dir := t.TempDir()
	pki := testpki.New(t, dir)
	other := testpki.New(t, t.TempDir()) // another CA, same names
	srv := startTLSServer(t, pki)

	for _, tc := range []struct {
		name  string
		files *TLSFiles
		want  string // in the error
		x509  bool   // the client refused the server's certificate
	}{
		{"no CA", &TLSFiles{CertFile: pki.ClientCert, KeyFile: pki.ClientKey}, "certificate signed by unknown authority", true},
		{"wrong CA", &TLSFiles{CAFile: other.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey}, "certificate signed by unknown authority", true},
		{"no client certificate", &TLSFiles{CAFile: pki.CAFile}, "certificate required", false},
		{"client certificate of another CA", &TLSFiles{CAFile: pki.CAFile, CertFile: other.ClientCert, KeyFile: other.ClientKey}, "unknown certificate authority", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			st, err := New(Config{Endpoints: srv.Endpoints(), TLS: tc.files, Logger: testLogger()})
			if err != nil {
				t.Fatalf("New: %v, want it to succeed without waiting for the cluster", err)
			}
			defer st.Close()
			const bound = time.Second
			ctx, cancel := context.WithTimeout(context.Background(), bound)
			defer cancel()
			start := time.Now()
			_, err = st.Get(ctx, "/tls/k")
			took := time.Since(start)
			if took > bound+2*time.Second {
				t.Errorf("Get took %v with a context of %v", took, bound)
			}
			checkRefused(t, "Get", err, context.DeadlineExceeded, tc.want, tc.x509)

			// With Username set, New authenticates and so fails itself.
			start = time.Now()
			st2, err := New(Config{Endpoints: srv.Endpoints(), TLS: tc.files, Username: "u", Password: "p", DialTimeout: bound, Logger: testLogger()})
			took = time.Since(start)
			if err == nil {
				_ = st2.Close()
				t.Fatal("New with Username succeeded over a refused TLS connection")
			}
			if took > bound+2*time.Second {
				t.Errorf("New with Username took %v with a DialTimeout of %v", took, bound)
			}
			checkRefused(t, "New with Username", err, core.ErrUnavailable, tc.want, tc.x509)
		})
	}
}

func checkRefused(t *testing.T, what string, err, kind error, want string, isX509 bool) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Errorf("%s: %v, want one wrapping %v", what, err, kind)
	}
	// When the server refuses the client, the connection may end before
	// its alert is read: then the error says that the server closed it.
	if err == nil || !strings.Contains(err.Error(), "no working connection") ||
		!strings.Contains(err.Error(), want) && (isX509 || !strings.Contains(err.Error(), "closed by the server right after the handshake")) {
		t.Errorf("%s: %v, want it to say there is no working connection because of %q", what, err, want)
	}
	var unknown x509.UnknownAuthorityError
	if isX509 && !errors.As(err, &unknown) {
		t.Errorf("%s: %v, want x509.UnknownAuthorityError in the chain", what, err)
	}
}

// TestTLSConfigErrors: TLS files that cannot be used fail New at once
// with ErrInvalidArgument and an error naming the field.
func TestTLSConfigErrors(t *testing.T) {
	dir := t.TempDir()
	pki := testpki.New(t, dir)
	other := testpki.New(t, t.TempDir())
	notPEM := dir + "/not.pem"
	testpki.WritePEM(t, notPEM, "NOTHING", nil)
	ep := []string{"https://127.0.0.1:1"}
	for _, tc := range []struct {
		name string
		cfg  Config
		want []string // words the error must contain
	}{
		{"missing CA file", Config{Endpoints: ep, TLS: &TLSFiles{CAFile: dir + "/no-such-ca.pem"}}, []string{"TLS.CAFile", "no-such-ca.pem"}},
		{"CA file without a certificate", Config{Endpoints: ep, TLS: &TLSFiles{CAFile: pki.ClientKey}}, []string{"TLS.CAFile", "no PEM certificate"}},
		{"cert without key", Config{Endpoints: ep, TLS: &TLSFiles{CertFile: pki.ClientCert}}, []string{"CertFile", "KeyFile", "both"}},
		{"key without cert", Config{Endpoints: ep, TLS: &TLSFiles{KeyFile: pki.ClientKey}}, []string{"CertFile", "KeyFile", "both"}},
		{"missing cert file", Config{Endpoints: ep, TLS: &TLSFiles{CertFile: dir + "/no-such-cert.pem", KeyFile: pki.ClientKey}}, []string{"TLS.CertFile", "no-such-cert.pem"}},
		{"key of another cert", Config{Endpoints: ep, TLS: &TLSFiles{CertFile: pki.ClientCert, KeyFile: other.ClientKey}}, []string{"TLS.CertFile", "KeyFile"}},
		{"cert file not PEM", Config{Endpoints: ep, TLS: &TLSFiles{CertFile: notPEM, KeyFile: pki.ClientKey}}, []string{"TLS.CertFile", "not.pem"}},
		{"TLS with http endpoints", Config{Endpoints: []string{"http://127.0.0.1:1"}, TLS: &TLSFiles{CAFile: pki.CAFile}}, []string{"Config.TLS", "https://"}},
		{"mixed schemes", Config{Endpoints: []string{"https://127.0.0.1:1", "http://127.0.0.1:2"}}, []string{"Config.Endpoints", "same scheme"}},
	} {
		st, err := New(tc.cfg)
		if err == nil {
			_ = st.Close()
			t.Errorf("%s: New succeeded", tc.name)
			continue
		}
		if !errors.Is(err, core.ErrInvalidArgument) {
			t.Errorf("%s: New = %v, want ErrInvalidArgument", tc.name, err)
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: New = %v, want it to name %q", tc.name, err, w)
			}
		}
	}
}

// TestTLSSystemRoots: https endpoints without Config.TLS are dialled over
// TLS verified by the system's roots, which do not know the test CA: the
// error says so. (clientv3 alone does the same, without the reason.)
func TestTLSSystemRoots(t *testing.T) {
	pki := testpki.New(t, t.TempDir())
	srv := startTLSServer(t, pki)
	st, err := New(Config{Endpoints: srv.Endpoints(), Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err = st.Get(ctx, "/k")
	checkRefused(t, "Get", err, context.DeadlineExceeded, "certificate signed by unknown authority", true)
}
