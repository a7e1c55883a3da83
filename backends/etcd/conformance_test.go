package etcd

import (
	"testing"
	"time"

	"github.com/concordha/concord/backends/storetest"
	"github.com/concordha/concord/core"
)

// conformanceTTL is the shortest TTL etcd grants with the test servers'
// election timeout (see helpers_test.go), and long enough that renewals
// every TTL/3 survive a loaded 2-core machine under -race.
const conformanceTTL = time.Second

// TestConformance runs the suite against one real member. List reports
// the lower bound the contract allows after a deletion, not the exact
// revision.
func TestConformance(t *testing.T) {
	srv := startServer(t)
	storetest.Run(t, storetest.Factory{
		New:  func(t *testing.T) core.Store { return openStore(t, srv.Endpoints()) },
		TTL:  conformanceTTL,
		Root: "/storetest/",
	})
}
