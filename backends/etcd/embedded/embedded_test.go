package embedded

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// testConfig is a quick member in its own directory.
func testConfig(t *testing.T, name string) Config {
	return Config{
		Name:              name,
		DataDir:           filepath.Join(t.TempDir(), name),
		HeartbeatInterval: 50 * time.Millisecond,
		ElectionTimeout:   500 * time.Millisecond,
		StartTimeout:      30 * time.Second,
		UnsafeNoFsync:     true,
		Logger:            testLogger(),
	}
}

func start(t *testing.T, cfg Config) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := Start(ctx, cfg)
	if err != nil {
		t.Fatalf("Start(%s): %v", cfg.Name, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func client(t *testing.T, endpoints ...string) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("clientv3.New(%v): %v", endpoints, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func put(t *testing.T, c *clientv3.Client, key, value string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Put(ctx, key, value); err != nil {
		t.Fatalf("Put(%q) via %v: %v", key, c.Endpoints(), err)
	}
}

func get(t *testing.T, c *clientv3.Client, key string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Get(ctx, key)
	if err != nil {
		t.Fatalf("Get(%q) via %v: %v", key, c.Endpoints(), err)
	}
	if len(resp.Kvs) == 0 {
		t.Fatalf("Get(%q) via %v: not found", key, c.Endpoints())
	}
	return string(resp.Kvs[0].Value)
}

func TestSingleMemberRestartKeepsData(t *testing.T) {
	s := start(t, testConfig(t, "solo"))
	if eps := s.Endpoints(); len(eps) != 1 || !strings.HasPrefix(eps[0], "http://127.0.0.1:") {
		t.Fatalf("Endpoints() = %v, want one loopback URL", eps)
	}
	c := client(t, s.Endpoints()...)
	put(t, c, "/k", "before restart")

	cfg := s.Config()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case <-s.Done():
	default:
		t.Fatal("Done still open after Close returned")
	}
	if !errors.Is(s.Err(), ErrClosed) {
		t.Errorf("Err after Close = %v, want ErrClosed", s.Err())
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v, want nil", err)
	}

	again := start(t, cfg)
	if got := get(t, client(t, again.Endpoints()...), "/k"); got != "before restart" {
		t.Fatalf("after restart on the same DataDir: /k = %q, want %q", got, "before restart")
	}
	if again.Err() != nil {
		t.Errorf("Err of a running server = %v, want nil", again.Err())
	}
}

// startCluster starts n members of one new cluster concurrently (each
// Start waits for a leader, which needs a majority); edit, if not nil,
// adjusts each member's config first. Members with PeerTLS get https
// peer URLs.
func startCluster(t *testing.T, n int, edit func(*Config)) []*Server {
	t.Helper()
	cfgs := make([]Config, n)
	members := make([]string, n)
	for i := range cfgs {
		cfgs[i] = testConfig(t, fmt.Sprintf("m%d", i))
		if edit != nil {
			edit(&cfgs[i])
		}
		free := FreeLoopbackURL
		if cfgs[i].PeerTLS != nil {
			free = FreeLoopbackHTTPSURL
		}
		peer, err := free()
		if err != nil {
			t.Fatal(err)
		}
		cfgs[i].PeerURL = peer
		members[i] = cfgs[i].Name + "=" + peer
	}
	servers := make([]*Server, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range cfgs {
		cfgs[i].InitialCluster = strings.Join(members, ",")
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			servers[i], errs[i] = Start(ctx, cfgs[i])
		}()
	}
	wg.Wait()
	for _, s := range servers {
		if s != nil {
			t.Cleanup(func() { _ = s.Close() })
		}
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("start a cluster of %d: %v", n, err)
	}
	return servers
}

func TestClusterServesAndSurvivesAMemberStop(t *testing.T) {
	servers := startCluster(t, 3, nil)
	clients := make([]*clientv3.Client, len(servers))
	for i, s := range servers {
		clients[i] = client(t, s.Endpoints()...)
	}
	put(t, clients[0], "/from-0", "written via member 0")
	if got := get(t, clients[1], "/from-0"); got != "written via member 0" {
		t.Fatalf("read via member 1: %q", got)
	}

	// Stop the leader: the hardest member to lose.
	leader := -1
	for i, c := range clients {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		st, err := c.Status(ctx, servers[i].Endpoints()[0])
		cancel()
		if err != nil {
			t.Fatalf("Status of member %d: %v", i, err)
		}
		if st.Leader == st.Header.MemberId {
			leader = i
		}
	}
	if leader < 0 {
		t.Fatal("no member says it leads")
	}
	if err := servers[leader].Close(); err != nil {
		t.Fatalf("Close of the leader: %v", err)
	}
	for i, c := range clients {
		if i == leader {
			continue
		}
		key := fmt.Sprintf("/after-stop-%d", i)
		put(t, c, key, "v")
		for j, other := range clients {
			if j != leader {
				if got := get(t, other, key); got != "v" {
					t.Fatalf("%s read via member %d = %q", key, j, got)
				}
			}
		}
	}
}

func TestValidate(t *testing.T) {
	ok := Config{DataDir: "/tmp/x"}
	if err := ok.Validate(); err != nil {
		t.Fatalf("Validate of a minimal config: %v", err)
	}
	tls := &TLS{CertFile: "c.pem", KeyFile: "k.pem", TrustedCAFile: "ca.pem", ClientCertAuth: true}
	secure := Config{DataDir: "/tmp/x", ClientURL: "https://127.0.0.1:2379", ClientTLS: tls,
		PeerURL: "https://127.0.0.1:2380", PeerTLS: tls, InitialCluster: "concord=https://127.0.0.1:2380,b=https://127.0.0.1:2381"}
	if err := secure.Validate(); err != nil {
		t.Fatalf("Validate of a config with TLS: %v", err)
	}
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // a word the error must contain
	}{
		{"no data dir", Config{}, "DataDir"},
		{"bad client URL", Config{DataDir: "d", ClientURL: "127.0.0.1:2379"}, "ClientURL"},
		{"https peer URL", Config{DataDir: "d", PeerURL: "https://127.0.0.1:2380"}, "PeerURL"},
		{"same URLs", Config{DataDir: "d", ClientURL: "http://127.0.0.1:2379", PeerURL: "http://127.0.0.1:2379"}, "own port"},
		{"bad state", Config{DataDir: "d", ClusterState: "old"}, "ClusterState"},
		{"existing without cluster", Config{DataDir: "d", ClusterState: "existing"}, "InitialCluster"},
		{"cluster without me", Config{DataDir: "d", Name: "a", InitialCluster: "b=http://127.0.0.1:1"}, "does not name"},
		{"cluster garbled", Config{DataDir: "d", InitialCluster: "concord"}, "InitialCluster"},
		{"peer mismatch", Config{DataDir: "d", PeerURL: "http://127.0.0.1:2", InitialCluster: "concord=http://127.0.0.1:1"}, "differs"},
		{"short election", Config{DataDir: "d", HeartbeatInterval: 100 * time.Millisecond, ElectionTimeout: 200 * time.Millisecond}, "ElectionTimeout"},
		{"long election", Config{DataDir: "d", ElectionTimeout: time.Minute}, "ElectionTimeout"},
		{"tiny heartbeat", Config{DataDir: "d", HeartbeatInterval: time.Microsecond}, "HeartbeatInterval"},
		{"negative txn ops", Config{DataDir: "d", MaxTxnOps: -1}, "MaxTxnOps"},
		{"negative quota", Config{DataDir: "d", QuotaBackendBytes: -1}, "QuotaBackendBytes"},
		{"negative timeout", Config{DataDir: "d", StartTimeout: -time.Second}, "StartTimeout"},
		{"bad name", Config{DataDir: "d", Name: "a=b"}, "Name"},
		{"https client URL without ClientTLS", Config{DataDir: "d", ClientURL: "https://127.0.0.1:2379"}, "needs ClientTLS, which is nil"},
		{"http client URL with ClientTLS", Config{DataDir: "d", ClientURL: "http://127.0.0.1:2379", ClientTLS: &TLS{CertFile: "c.pem", KeyFile: "k.pem"}}, `"https://127.0.0.1:2379"`},
		{"ClientTLS without cert", Config{DataDir: "d", ClientTLS: &TLS{KeyFile: "k.pem"}}, "ClientTLS.CertFile"},
		{"ClientTLS without key", Config{DataDir: "d", ClientTLS: &TLS{CertFile: "c.pem"}}, "ClientTLS.KeyFile"},
		{"ClientCertAuth without CA", Config{DataDir: "d", ClientTLS: &TLS{CertFile: "c.pem", KeyFile: "k.pem", ClientCertAuth: true}}, "ClientTLS.TrustedCAFile"},
		{"PeerTLS with an http peer URL", Config{DataDir: "d", PeerURL: "http://127.0.0.1:2380", PeerTLS: &TLS{CertFile: "c.pem", KeyFile: "k.pem"}}, "PeerURL"},
		{"PeerTLS with an http cluster", Config{DataDir: "d", InitialCluster: "concord=http://127.0.0.1:2380", PeerTLS: &TLS{CertFile: "c.pem", KeyFile: "k.pem"}}, "InitialCluster"},
		{"PeerTLS without key", Config{DataDir: "d", PeerTLS: &TLS{CertFile: "c.pem"}}, "PeerTLS.KeyFile"},
		{"same port, other scheme", Config{DataDir: "d", ClientURL: "https://127.0.0.1:2379", ClientTLS: &TLS{CertFile: "c.pem", KeyFile: "k.pem"}, PeerURL: "http://127.0.0.1:2379"}, "own port"},
	} {
		err := tc.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Validate() = %v, want an error naming %q", tc.name, err, tc.want)
		}
		if _, serr := Start(context.Background(), tc.cfg); serr == nil {
			t.Errorf("%s: Start succeeded with an invalid config", tc.name)
		}
	}
}

func TestStartPortInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	cfg := testConfig(t, "busy")
	cfg.ClientURL = "http://" + l.Addr().String()
	s, err := Start(context.Background(), cfg)
	if err == nil {
		_ = s.Close()
		t.Fatal("Start on a port in use succeeded")
	}
	if !strings.Contains(err.Error(), "taken") || !strings.Contains(err.Error(), l.Addr().String()) {
		t.Errorf("Start on a port in use: %v; want it to say the URL is taken", err)
	}
}

func TestStartDataDirNotWritable(t *testing.T) {
	file := filepath.Join(t.TempDir(), "a-file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, "nodir")
	cfg.DataDir = filepath.Join(file, "sub")
	_, err := Start(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "DataDir") {
		t.Fatalf("Start with DataDir under a file: %v, want an error naming DataDir", err)
	}
}

func TestStartTimesOutWithoutPeers(t *testing.T) {
	cfg := testConfig(t, "a")
	peers := make([]string, 3)
	for i := range peers {
		u, err := FreeLoopbackURL()
		if err != nil {
			t.Fatal(err)
		}
		peers[i] = fmt.Sprintf("%c=%s", 'a'+i, u)
	}
	cfg.InitialCluster = strings.Join(peers, ",")
	cfg.StartTimeout = time.Second
	start := time.Now()
	_, err := Start(context.Background(), cfg)
	if err == nil {
		t.Fatal("Start of one member of three succeeded alone")
	}
	if !strings.Contains(err.Error(), "StartTimeout") || !strings.Contains(err.Error(), cfg.InitialCluster) {
		t.Errorf("Start without peers: %v; want it to name StartTimeout and the InitialCluster", err)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("Start without peers took %v to fail with StartTimeout 1s", d)
	}
}

func TestStartHonoursContext(t *testing.T) {
	cfg := testConfig(t, "a")
	cfg.InitialCluster = "a=" + mustFree(t) + ",b=" + mustFree(t) // b never starts
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err := Start(ctx, cfg)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Start with a context that ends first: %v, want context.DeadlineExceeded", err)
	}
}

func mustFree(t *testing.T) string {
	t.Helper()
	u, err := FreeLoopbackURL()
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// testLogger shows etcd's warnings with -v only.
func testLogger() *slog.Logger {
	if !testing.Verbose() {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// TestDoneWhenRemovedFromCluster: a member removed from its cluster stops
// on its own; Done fires and Err says it was not Close.
func TestDoneWhenRemovedFromCluster(t *testing.T) {
	servers := startCluster(t, 3, nil)
	victim := servers[2]
	c := client(t, servers[0].Endpoints()...)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	members, err := c.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var id uint64
	for _, m := range members.Members {
		if m.Name == victim.Config().Name {
			id = m.ID
		}
	}
	if id == 0 {
		t.Fatalf("member %q not in %v", victim.Config().Name, members.Members)
	}
	// etcd refuses to remove a member until every member has been
	// connected for 5s (its reconfiguration health check).
	for {
		_, err := c.MemberRemove(ctx, id)
		if err == nil {
			break
		}
		if !errors.Is(err, rpctypes.ErrUnhealthy) {
			t.Fatalf("MemberRemove: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	select {
	case <-victim.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("Done of a removed member still open after 20s")
	}
	if err := victim.Err(); err == nil || errors.Is(err, ErrClosed) {
		t.Errorf("Err of a removed member = %v, want why it stopped", err)
	}
	t.Logf("removed member stopped: %v", victim.Err())
	if err := victim.Close(); err != nil {
		t.Errorf("Close after it stopped on its own: %v", err)
	}
	put(t, client(t, servers[1].Endpoints()...), "/after-remove", "v")
}
