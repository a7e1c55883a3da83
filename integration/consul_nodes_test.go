//go:build integration

package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/concordha/concord/core"
)

// consulKind runs the scenarios on one Consul server that keeps its data
// across restarts (startConsulServer). The nodes' session TTL is 2s,
// which the server grants (session_ttl_min is lowered to consulTTL);
// Consul may keep a silent session for up to twice that, which the
// failover bound, 2 TTLs and some, allows for. Sessions are ended from
// outside through ExpireSession, which destroys any session by its ID.
var consulKind = &storeKind{
	name:  "consul",
	start: startConsulServer,
	storeYAML: func(servers []*container) string {
		return fmt.Sprintf("  type: consul\n  endpoints: [%s]\n", quoteAll(consulEndpoints(servers)))
	},
	open: openConsul,
	expire: func(ctx context.Context, st core.Store, session string) error {
		return st.(core.Expirer).ExpireSession(ctx, session)
	},
	timing: nodeTiming{sessionTTL: 2 * time.Second, opTimeout: 500 * time.Millisecond, electionTimeout: 3 * time.Second},
}

// TestConsulNodes runs the scenarios with three concord processes on
// Consul. The store-leader-loss scenario skips: there is no multi-server
// Consul setup here.
func TestConsulNodes(t *testing.T) { runScenarios(t, consulKind) }

// startConsulServer starts a single Consul server that bootstraps itself
// and keeps its state in the container's file system, so that it
// survives Stop and Start, as the restart scenarios need: a dev agent
// keeps everything in memory, and after a restart its Raft index, the
// fencing tokens' source, would start again from 1. The server binds to
// the container's loopback address, which a restart does not change
// (its Raft configuration names that address); Raft runs with a dev
// agent's timing (raft_multiplier 1), and sessions may be as short as
// consulTTL.
func startConsulServer(t testing.TB) *container {
	t.Helper()
	return startContainer(t, spec{
		Image: consulImage, Name: "consul-server",
		Entrypoint: []string{"/bin/consul"},
		Cmd: append([]string{
			"agent", "-server", "-bootstrap-expect=1", "-node=server",
			"-data-dir=/tmp/consul", "-client=0.0.0.0", "-bind=127.0.0.1",
			"-hcl", "performance { raft_multiplier = 1 }",
		}, consulAgentArgs()...),
		Port:  "8500/tcp",
		Ready: consulReady,
	})
}

// quoteAll renders ss as the items of a YAML flow sequence.
func quoteAll(ss []string) string {
	var out []string
	for _, s := range ss {
		out = append(out, fmt.Sprintf("%q", s))
	}
	return strings.Join(out, ", ")
}
