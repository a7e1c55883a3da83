package agent

import (
	"testing"

	"github.com/concordha/concord/internal/leakcheck"
)

// TestMain checks that no goroutine outlives the tests.
func TestMain(m *testing.M) { leakcheck.Main(m) }
