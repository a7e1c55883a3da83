//go:build integration

package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/concordha/concord/backends/etcd"
	"github.com/concordha/concord/backends/storetest"
	"github.com/concordha/concord/core"
)

// etcdURLs are the client URLs of servers.
func etcdURLs(servers []*container) []string {
	var out []string
	for _, s := range servers {
		out = append(out, "http://"+s.Endpoint())
	}
	return out
}

// openEtcd is a client of servers, closed by t's cleanup.
func openEtcd(t *testing.T, servers []*container) core.Store {
	t.Helper()
	st, err := etcd.New(etcd.Config{Endpoints: etcdURLs(servers), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// etcdKind runs the scenarios on etcd: one server from startEtcd, or
// three on a Docker network.
var etcdKind = &storeKind{
	name:         "etcd",
	start:        startEtcd,
	startCluster: startEtcdCluster,
	leader:       etcdLeader,
	storeYAML: func(servers []*container) string {
		return fmt.Sprintf("  type: etcd\n  endpoints: [%s]\n", strings.Join(etcdURLs(servers), ", "))
	},
	open: openEtcd,
	expire: func(ctx context.Context, st core.Store, session string) error {
		return st.(core.Expirer).ExpireSession(ctx, session)
	},
	// etcd grants these leases as asked: the single server's election
	// timeout allows 1s leases, the cluster's 2s ones.
	timing: nodeTiming{sessionTTL: 2 * time.Second, opTimeout: 500 * time.Millisecond, electionTimeout: 3 * time.Second},
}

// TestEtcdConformance runs the store contract's suite against a real
// etcd server in a container.
func TestEtcdConformance(t *testing.T) {
	srv := startEtcd(t)
	storetest.Run(t, storetest.Factory{
		New: func(t *testing.T) core.Store { return openEtcd(t, []*container{srv}) },
		// The shortest lease the server grants (see etcdHeartbeat), as
		// backends/etcd's own conformance test uses.
		TTL:  time.Second,
		Root: "/storetest/",
	})
}

// TestEtcdNodes runs the scenarios with three concord processes on etcd.
func TestEtcdNodes(t *testing.T) { runScenarios(t, etcdKind) }

// Raft timing of the three-server cluster: slower than the single
// server's, since three members share two cores with the nodes; it still
// grants 2s leases.
const (
	etcdClusterHeartbeat = 100 * time.Millisecond
	etcdClusterElection  = time.Second
)

// startEtcdCluster starts a three-member etcd cluster on a new Docker
// network; the members find each other by their network aliases.
func startEtcdCluster(t *testing.T) []*container {
	t.Helper()
	network := newNetwork(t)
	names := []string{"etcd0", "etcd1", "etcd2"}
	var initial []string
	for _, n := range names {
		initial = append(initial, fmt.Sprintf("%s=http://%s:2380", n, n))
	}
	var servers []*container
	for _, n := range names {
		// No readiness check yet: a member serves only once a quorum is up.
		servers = append(servers, startContainer(t, spec{
			Image: etcdImage, Name: n,
			Entrypoint: []string{"/usr/local/bin/etcd"},
			Cmd: append([]string{
				"--name=" + n, "--data-dir=/data",
				"--listen-client-urls=http://0.0.0.0:2379", "--advertise-client-urls=http://" + n + ":2379",
				"--listen-peer-urls=http://0.0.0.0:2380", "--initial-advertise-peer-urls=http://" + n + ":2380",
				"--initial-cluster=" + strings.Join(initial, ","),
				"--initial-cluster-state=new", "--initial-cluster-token=concord-integration",
			}, etcdTimingFlags(etcdClusterHeartbeat, etcdClusterElection)...),
			Port:    "2379/tcp",
			Network: network,
			Aliases: []string{n},
		}))
	}
	for _, s := range servers {
		ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
		err := retryUntil(ctx, readyTimeout, func(ctx context.Context) error { return etcdReady(ctx, s.Endpoint()) })
		cancel()
		if err != nil {
			t.Fatalf("%s not ready: %v\n%s", s.spec.Name, err, s.Logs())
		}
	}
	return servers
}

// etcdLeader asks the members that answer, through the maintenance
// Status API, which one leads.
func etcdLeader(t *testing.T, servers []*container) int {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: etcdURLs(servers), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	leader := -1
	eventually(t, 30*time.Second, "an etcd leader that answers", func() error {
		ids := map[uint64]int{}
		var lead uint64
		var errs []string
		for i, url := range etcdURLs(servers) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			st, err := cli.Status(ctx, url)
			cancel()
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", servers[i].spec.Name, err))
				continue
			}
			ids[st.Header.MemberId] = i
			if st.Leader != 0 {
				lead = st.Leader
			}
		}
		i, ok := ids[lead]
		if !ok {
			return fmt.Errorf("no answering member leads (leader %x; %s)", lead, strings.Join(errs, "; "))
		}
		leader = i
		return nil
	})
	return leader
}
