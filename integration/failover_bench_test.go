//go:build integration

package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/concordha/concord/backends/consul"
	"github.com/concordha/concord/backends/etcd"
	"github.com/concordha/concord/backends/zookeeper"
	"github.com/concordha/concord/core"
	"github.com/concordha/concord/internal/failoverbench"
)

// benchTTL is the nodes' session TTL in every store's failover
// benchmark, so that the figures compare: each test server grants it
// (etcd's single server 1s leases and up, the Consul agents sessions
// from consulTTL, ZooKeeper timeouts from 2 to 20 ticks).
const benchTTL = 2 * time.Second

// The failover benchmarks run internal/failoverbench (see its package
// doc for what is measured) against one server of each store in a
// container, for 3 and 5 nodes, each node on its own client and its own
// netfault link to the server, which the crash cuts. Each reports the
// medians over its iterations of:
//
//   - concord-crash-above-ttl-ms: from the cut to the next primary knowing
//     it is primary, minus benchTTL, the same bound for every store;
//   - concord-after-expiry-ms: from an observer seeing the dead primary's
//     member record deleted by the store to the next primary knowing;
//   - concord-handover-ms: a graceful hand-over (Resign), from the call to
//     the next primary knowing.
//
// Each server keeps its data in memory or skips fsync (etcd
// --unsafe-no-fsync, a Consul dev agent, ZooKeeper forceSync=no), so that
// no store pays for a disk the others do not. The benchmarks need Docker,
// and skip or fail without it as the tests do (requireDocker). Run them
// with
//
//	go test -tags integration -run '^$' -bench Failover -benchtime=3x ./integration/

// BenchmarkFailoverEtcd: the reference, on the same etcd server as the
// integration tests (startEtcd). The lease ends at most a TTL after the
// cut; etcd checks for expired leases every 500ms.
func BenchmarkFailoverEtcd(b *testing.B) {
	requireDocker(b)
	srv := startEtcd(b)
	benchFailover(b, srv.Endpoint(), func(b *testing.B, addr string) core.Store {
		st, err := etcd.New(etcd.Config{Endpoints: []string{"http://" + addr}, DialTimeout: benchTTL})
		if err != nil {
			b.Fatal(err)
		}
		return st
	})
}

// BenchmarkFailoverConsul: on a Consul dev agent that grants benchTTL
// sessions. Consul's server may keep a silent session for up to twice
// its TTL (it invalidates sessions at 2xTTL after their last renewal),
// so the crash figure, reported above the TTL like the others', can be
// up to a TTL higher than another store's for the same election.
func BenchmarkFailoverConsul(b *testing.B) {
	requireDocker(b)
	agent := startConsul(b, consulAgentArgs()...)
	benchFailover(b, agent.Endpoint(), func(b *testing.B, addr string) core.Store {
		st, err := consul.New(consul.Config{Endpoints: []string{"http://" + addr}, DialTimeout: benchTTL})
		if err != nil {
			b.Fatal(err)
		}
		return st
	})
}

// BenchmarkFailoverZooKeeper: on a standalone ZooKeeper with the test
// tick (200ms). ZooKeeper expires a session a timeout after the last
// request it received, rounded up to the next tick.
func BenchmarkFailoverZooKeeper(b *testing.B) {
	requireDocker(b)
	srv := startZK(b, map[string]string{"ZOO_CFG_EXTRA": "forceSync=no"})
	benchFailover(b, srv.Endpoint(), func(b *testing.B, addr string) core.Store {
		st, err := zookeeper.New(zookeeper.Config{Endpoints: []string{addr}, DialTimeout: benchTTL})
		if err != nil {
			b.Fatal(err)
		}
		return st
	})
}

// benchFailover runs the sub-benchmarks nodes=3 and nodes=5 on the server
// at endpoint (host:port), each member's client opened by open through a
// link of its own.
func benchFailover(b *testing.B, endpoint string, open func(b *testing.B, addr string) core.Store) {
	setup := failoverbench.Setup{TTL: benchTTL, NewMember: failoverbench.Linked(endpoint, open)}
	for _, n := range []int{3, 5} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			failoverbench.Report(b, setup, n, fmt.Sprintf("bench/nodes%d/", n), "concord", benchTTL)
		})
	}
}
