package etcd

import (
	"testing"

	"github.com/concordha/concord/internal/leakcheck"
)

// TestMain checks that no goroutine outlives the tests (see leakcheck for
// why it waits longer than goleak's default).
func TestMain(m *testing.M) { leakcheck.Main(m) }
