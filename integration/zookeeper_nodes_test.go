//go:build integration

package integration

import (
	"testing"
	"time"

	"github.com/concordha/concord/backends/zookeeper"
	"github.com/concordha/concord/core"
)

// zookeeperKind runs the scenarios on one ZooKeeper server with the test
// tick (startZK), which grants the nodes' 2s session timeout (2 to 20
// ticks: 400ms to 4s). ZooKeeper ends a session only for a client that
// presents its password, which a node keeps to itself, so the kind has
// no expire: the forced-expiry scenario cuts the node off from the
// server instead, through the netfault links every node reaches it by,
// and the server expires the session (see forcedSessionExpiry).
var zookeeperKind = &storeKind{
	name:  "zookeeper",
	start: func(t testing.TB) *container { return startZK(t, nil) },
	storeYAML: func(servers []*container) string {
		return "  type: zookeeper\n  endpoints: [" + quoteAll(zkEndpoints(servers)) + "]\n"
	},
	open:   openZKServers,
	timing: nodeTiming{sessionTTL: 2 * time.Second, opTimeout: 500 * time.Millisecond, electionTimeout: 3 * time.Second},
}

// TestZooKeeperNodes runs the scenarios with three concord processes on
// ZooKeeper. The store-leader-loss scenario skips: there is no ensemble
// setup here.
func TestZooKeeperNodes(t *testing.T) { runScenarios(t, zookeeperKind) }

// zkEndpoints are the client endpoints of servers, host:port.
func zkEndpoints(servers []*container) []string {
	var out []string
	for _, s := range servers {
		out = append(out, s.Endpoint())
	}
	return out
}

// openZKServers is a client of servers, closed by t's cleanup.
func openZKServers(t *testing.T, servers []*container) core.Store {
	t.Helper()
	st, err := zookeeper.New(zookeeper.Config{Endpoints: zkEndpoints(servers), DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("zookeeper.New(%v): %v", zkEndpoints(servers), err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}
