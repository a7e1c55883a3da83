package memory

import (
	"testing"
	"time"

	"github.com/concordha/concord/backends/storetest"
	"github.com/concordha/concord/core"
)

// conformanceTTL is short enough to keep the suite quick and long enough
// that keep-alives every TTL/3 survive a loaded machine under -race.
const conformanceTTL = 500 * time.Millisecond

func TestConformance(t *testing.T) {
	srv := New(Options{})
	defer srv.Close()
	storetest.Run(t, storetest.Factory{
		New:               func(t *testing.T) core.Store { return srv.Client(t.Name()) },
		TTL:               conformanceTTL,
		Root:              "/storetest/",
		ExactListRevision: true,
	})
}

// TestConformanceWithLatency runs the suite again with every call delayed,
// so that calls overlap and keep-alives race with the rest.
func TestConformanceWithLatency(t *testing.T) {
	if testing.Short() {
		t.Skip("the suite with latency is slow")
	}
	srv := New(Options{})
	defer srv.Close()
	srv.SetLatency("", time.Millisecond)
	storetest.Run(t, storetest.Factory{
		New:               func(t *testing.T) core.Store { return srv.Client(t.Name()) },
		TTL:               conformanceTTL,
		ExactListRevision: true,
	})
}
