package etcd

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/concordha/concord/backends/etcd/embedded"
)

// Raft timing of the test servers: an election timeout of 500ms lets etcd
// grant leases of 1s (it grants no less than 1.5 election timeouts,
// rounded up to whole seconds).
const (
	testHeartbeat = 50 * time.Millisecond
	testElection  = 500 * time.Millisecond
	testMaxTxnOps = 1024
)

// memberConfig is a fast member in its own directory under dir.
func memberConfig(dir, name string) embedded.Config {
	return embedded.Config{
		Name:              name,
		DataDir:           filepath.Join(dir, name),
		HeartbeatInterval: testHeartbeat,
		ElectionTimeout:   testElection,
		MaxTxnOps:         testMaxTxnOps,
		StartTimeout:      time.Minute,
		UnsafeNoFsync:     true,
		Logger:            testLogger(),
	}
}

// startServer starts a one-member etcd, stopped when the test ends.
func startServer(t *testing.T) *embedded.Server {
	t.Helper()
	return startMember(t, memberConfig(t.TempDir(), "solo"))
}

func startMember(t *testing.T, cfg embedded.Config) *embedded.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := embedded.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start embedded etcd %q: %v", cfg.Name, err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return srv
}

// startCluster starts n members of one new cluster, concurrently since
// each Start waits for a leader.
func startCluster(t *testing.T, n int) []*embedded.Server {
	t.Helper()
	dir := t.TempDir()
	cfgs := make([]embedded.Config, n)
	members := make([]string, n)
	for i := range cfgs {
		cfgs[i] = memberConfig(dir, fmt.Sprintf("m%d", i))
		peer, err := embedded.FreeLoopbackURL()
		if err != nil {
			t.Fatal(err)
		}
		cfgs[i].PeerURL = peer
		members[i] = cfgs[i].Name + "=" + peer
	}
	servers := make([]*embedded.Server, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range cfgs {
		cfgs[i].InitialCluster = strings.Join(members, ",")
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			servers[i], errs[i] = embedded.Start(ctx, cfgs[i])
		}()
	}
	wg.Wait()
	for i, srv := range servers {
		if srv != nil {
			t.Cleanup(func() { _ = srv.Close() })
		}
		if errs[i] != nil {
			t.Fatalf("start member %d of %d: %v", i, n, errs[i])
		}
	}
	return servers
}

func endpoints(servers ...*embedded.Server) []string {
	var eps []string
	for _, s := range servers {
		eps = append(eps, s.Endpoints()...)
	}
	return eps
}

// openStore connects a Store to endpoints, closed when the test ends.
func openStore(t *testing.T, eps []string) *Store {
	t.Helper()
	st, err := New(Config{Endpoints: eps, MaxTxnOps: testMaxTxnOps, Logger: testLogger()})
	if err != nil {
		t.Fatalf("New(%v): %v", eps, err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// testLogger shows warnings with -v only.
func testLogger() *slog.Logger {
	if !testing.Verbose() {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// ctxFor is a context bounded by d, cancelled when the test ends.
func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// hostPort is the host:port of a URL such as "http://127.0.0.1:2379".
func hostPort(t *testing.T, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}
