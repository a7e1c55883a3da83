//go:build integration

package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/concordha/concord/backends/zookeeper"
	"github.com/concordha/concord/core"
	"github.com/concordha/concord/internal/testpki"
)

// zkSecurePort is the secureClientPort of the TLS test server, the only
// port the tests reach.
const zkSecurePort = "2281"

// zkTLSConfig are the zoo.cfg lines (ZOO_CFG_EXTRA) of a server that
// serves clients over TLS on zkSecurePort, with the PEM files that
// startZKTLS copies in, and requires client certificates. ZooKeeper 3.8
// turns zoo.cfg keys it does not know into "zookeeper."-prefixed system
// properties before it creates its connection factories, so the
// factory and the ssl.* settings, which it reads as such properties
// (zookeeper.serverCnxnFactory, zookeeper.ssl.keyStore.location, ...),
// can be given here rather than as JVM flags. TLS needs the Netty
// factory: the default NIO one has no TLS.
var zkTLSConfig = []string{
	"secureClientPort=" + zkSecurePort,
	"serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory",
	"ssl.keyStore.location=/tls/server.pem",
	"ssl.keyStore.type=PEM",
	"ssl.trustStore.location=/tls/ca.pem",
	"ssl.trustStore.type=PEM",
	"ssl.clientAuth=need",
}

// startZKTLS starts a standalone ZooKeeper with the test tick that
// serves clients over TLS on zkSecurePort, with pki's server certificate,
// and requires client certificates of pki's CA; it waits until the
// server answers a read over TLS. extra are more zoo.cfg lines.
func startZKTLS(t *testing.T, pki testpki.PKI, extra ...string) *container {
	t.Helper()
	ca, err := os.ReadFile(pki.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	return startContainer(t, spec{
		Image: zookeeperImage, Name: "zookeeper-tls",
		Env: map[string]string{
			"ZOO_TICK_TIME":        strconv.FormatInt(zkTick.Milliseconds(), 10),
			"ZOO_MAX_CLIENT_CNXNS": "0",
			"ZOO_CFG_EXTRA":        strings.Join(append(slices.Clone(zkTLSConfig), extra...), " "),
		},
		Files: map[string][]byte{
			"/tls/ca.pem":     ca,
			"/tls/server.pem": zkKeyStore(t, pki),
		},
		Port: zkSecurePort + "/tcp",
		Ready: func(ctx context.Context, endpoint string) error {
			st, err := zookeeper.New(zookeeper.Config{Endpoints: []string{endpoint}, TLS: zkTLSFiles(pki)})
			if err != nil {
				return err
			}
			defer st.Close()
			if _, err := st.Get(ctx, "/concord-probe"); !errors.Is(err, core.ErrNotFound) {
				return fmt.Errorf("Get over TLS: %v", err)
			}
			return nil
		},
	})
}

// zkKeyStore is ZooKeeper's PEM key store of the server: its private key,
// which ZooKeeper reads as PKCS#8 only ("PRIVATE KEY"; testpki writes
// SEC 1 "EC PRIVATE KEY"), then its certificate.
func zkKeyStore(t *testing.T, pki testpki.PKI) []byte {
	t.Helper()
	keyPEM, err := os.ReadFile(pki.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		t.Fatalf("%s holds no PEM block", pki.ServerKey)
	}
	key, err := x509.ParseECPrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := os.ReadFile(pki.ServerCert)
	if err != nil {
		t.Fatal(err)
	}
	return append(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), cert...)
}

// zkTLSFiles are the client files of pki: its CA and client certificate.
func zkTLSFiles(pki testpki.PKI) *zookeeper.TLSFiles {
	return &zookeeper.TLSFiles{CAFile: pki.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey}
}

// openZKTLS returns a Store on endpoint over TLS with files, closed by
// t's cleanup.
func openZKTLS(t *testing.T, endpoint string, files *zookeeper.TLSFiles) *zookeeper.Store {
	t.Helper()
	st, err := zookeeper.New(zookeeper.Config{Endpoints: []string{endpoint}, TLS: files, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("zookeeper.New(%s) with TLS: %v", endpoint, err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// zkTLSVersion returns the TLS version the server at endpoint
// negotiates with a client that offers them all.
func zkTLSVersion(t *testing.T, endpoint string, pki testpki.PKI) uint16 {
	t.Helper()
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
	d := tls.Dialer{Config: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}}}
	ctx := zkCtx(t, 10*time.Second)
	c, err := d.DialContext(ctx, "tcp", endpoint)
	if err != nil {
		t.Fatalf("TLS dial of %s: %v", endpoint, err)
	}
	defer c.Close()
	return c.(*tls.Conn).ConnectionState().Version
}

// TestZooKeeperTLS runs a server that requires TLS and client
// certificates, with ZooKeeper 3.8's default protocol, TLS 1.2, and with
// TLS 1.3, where the server refuses a client certificate only after the
// client has finished its side of the handshake. With the CA and a
// client certificate, every connection of the Store works over TLS: its
// own (writes, reads, a watch), a session's (Register, and the key going
// when the session ends), and ExpireSession's. Without a client
// certificate, with one of another CA, or with a CA that did not sign
// the server's certificate, calls fail with core.ErrUnavailable and say
// why.
func TestZooKeeperTLS(t *testing.T) {
	for _, v := range []struct {
		name    string
		version uint16
		cfg     []string
	}{
		{"TLS 1.2", tls.VersionTLS12, nil},
		// ZooKeeper 3.8.0's default cipher suites are all TLS 1.2 ones:
		// with TLS 1.3 alone it refuses every handshake ("no appropriate
		// protocol") unless given TLS 1.3 suites.
		{"TLS 1.3", tls.VersionTLS13, []string{
			"ssl.protocol=TLSv1.3", "ssl.enabledProtocols=TLSv1.3",
			"ssl.ciphersuites=TLS_AES_128_GCM_SHA256,TLS_AES_256_GCM_SHA384,TLS_CHACHA20_POLY1305_SHA256",
		}},
	} {
		t.Run(v.name, func(t *testing.T) { testZooKeeperTLS(t, v.version, v.cfg) })
	}
}

func testZooKeeperTLS(t *testing.T, version uint16, cfg []string) {
	pki := testpki.New(t, t.TempDir())
	other := testpki.New(t, t.TempDir())
	zkc := startZKTLS(t, pki, cfg...)
	if got := zkTLSVersion(t, zkc.Endpoint(), pki); got != version {
		t.Fatalf("the server negotiated %s, want %s", tls.VersionName(got), tls.VersionName(version))
	}

	t.Run("works", func(t *testing.T) {
		ctx := zkCtx(t, 2*time.Minute)
		st := openZKTLS(t, zkc.Endpoint(), zkTLSFiles(pki))
		observer := openZKTLS(t, zkc.Endpoint(), zkTLSFiles(pki))

		kv, err := st.Create(ctx, "tls/app/k", []byte("v1"))
		if err != nil {
			t.Fatalf("Create over TLS: %v", err)
		}
		if got, err := observer.Get(ctx, kv.Key); err != nil || string(got.Value) != "v1" || got.Version != kv.Version {
			t.Fatalf("Get over TLS = %+v, %v; want %+v", got, err, kv)
		}
		kv2, err := st.CompareAndSwap(ctx, kv.Key, []byte("v2"), kv.Version)
		if err != nil {
			t.Fatalf("CompareAndSwap over TLS: %v", err)
		}
		if _, err := st.CompareAndSwap(ctx, kv.Key, []byte("v3"), kv.Version); !errors.Is(err, core.ErrConflict) {
			t.Errorf("CompareAndSwap at the old version over TLS: %v, want ErrConflict", err)
		}

		wctx, wcancel := context.WithCancel(ctx)
		defer wcancel()
		w, err := observer.Watch(wctx, "tls/app/")
		if err != nil {
			t.Fatalf("Watch over TLS: %v", err)
		}
		// until waits, bounded, for a snapshot of the watch with exactly
		// the keys and values of want.
		until := func(what string, want map[string]string) {
			t.Helper()
			timer := time.NewTimer(15 * time.Second)
			defer timer.Stop()
			var last core.Snapshot
			for {
				select {
				case snap, ok := <-w:
					if !ok {
						t.Fatalf("watch closed waiting for %s: %v", what, last.Err)
					}
					last = snap
					got := map[string]string{}
					for _, kv := range snap.KVs {
						got[kv.Key] = string(kv.Value)
					}
					if snap.Err == nil && maps.Equal(got, want) {
						return
					}
				case <-timer.C:
					t.Fatalf("watch: no snapshot with %s within 15s; last: %+v", what, last)
				}
			}
		}
		until("the key", map[string]string{kv2.Key: "v2"})

		s, err := st.NewSession(ctx, core.SessionOptions{TTL: 2 * time.Second})
		if err != nil {
			t.Fatalf("NewSession over TLS: %v", err)
		}
		defer s.Close(context.Background())
		member, err := s.Register(ctx, "tls/app/member", []byte("m"))
		if err != nil {
			t.Fatalf("Register over TLS: %v", err)
		}
		until("the registered key", map[string]string{kv2.Key: "v2", member.Key: "m"})

		// ExpireSession resumes the session on a connection of its own,
		// over TLS too, and ends it: Done fires and the key goes.
		if err := observer.ExpireSession(ctx, s.ID()); err != nil {
			t.Fatalf("ExpireSession over TLS: %v", err)
		}
		waitDone(t, s, 10*time.Second, "ExpireSession")
		if !errors.Is(s.Err(), core.ErrSessionLost) {
			t.Errorf("Err after ExpireSession = %v, want ErrSessionLost", s.Err())
		}
		until("the registered key gone", map[string]string{kv2.Key: "v2"})

		// A session closed by its holder ends at once too.
		s2, err := st.NewSession(ctx, core.SessionOptions{TTL: 2 * time.Second})
		if err != nil {
			t.Fatalf("second NewSession over TLS: %v", err)
		}
		if _, err := s2.Register(ctx, "tls/app/member2", []byte("m2")); err != nil {
			t.Fatalf("Register over TLS: %v", err)
		}
		until("the second registered key", map[string]string{kv2.Key: "v2", "tls/app/member2": "m2"})
		if err := s2.Close(ctx); err != nil {
			t.Errorf("Session.Close over TLS: %v", err)
		}
		until("the second registered key gone", map[string]string{kv2.Key: "v2"})
	})

	for _, tc := range []struct {
		name  string
		files *zookeeper.TLSFiles
		want  []string // what the error must say
	}{
		{"no client certificate", &zookeeper.TLSFiles{CAFile: pki.CAFile},
			[]string{"TLS", "refused", "client certificate"}},
		{"a client certificate of another CA", &zookeeper.TLSFiles{CAFile: pki.CAFile, CertFile: other.ClientCert, KeyFile: other.ClientKey},
			[]string{"TLS", "refused", "client certificate"}},
		{"a CA that did not sign the server's certificate", &zookeeper.TLSFiles{CAFile: other.CAFile, CertFile: pki.ClientCert, KeyFile: pki.ClientKey},
			[]string{"TLS handshake", "failed", "unknown authority"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := zkCtx(t, time.Minute)
			st := openZKTLS(t, zkc.Endpoint(), tc.files)
			check := func(call string, err error) {
				t.Helper()
				t.Logf("%s with %s: %v", call, tc.name, err)
				if !errors.Is(err, core.ErrUnavailable) {
					t.Errorf("%s with %s: %v, want one wrapping core.ErrUnavailable", call, tc.name, err)
				}
				for _, w := range tc.want {
					if err == nil || !strings.Contains(err.Error(), w) {
						t.Errorf("%s with %s: %v, want it to say %q", call, tc.name, err, w)
					}
				}
			}
			_, err := st.Get(ctx, "tls/app/k")
			check("Get", err)
			_, err = st.Create(ctx, "tls/app/intruder", []byte("x"))
			check("Create", err)
			s, err := st.NewSession(ctx, core.SessionOptions{TTL: 2 * time.Second})
			if s != nil {
				_ = s.Close(ctx)
			}
			check("NewSession", err)
		})
	}

	// Nothing the refused clients tried reached the server.
	ctx := zkCtx(t, time.Minute)
	if _, err := openZKTLS(t, zkc.Endpoint(), zkTLSFiles(pki)).Get(ctx, "tls/app/intruder"); !errors.Is(err, core.ErrNotFound) {
		t.Errorf("Get of the key the refused clients created: %v, want ErrNotFound", err)
	}
}
