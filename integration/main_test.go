//go:build integration

package integration

import (
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/concordha/concord/internal/leakcheck"
)

// TestMain disables Ryuk (testcontainers' reaper is an image to pull; the
// tests terminate their containers themselves), gives the concord binary
// a temporary directory, removed after the tests, and checks that no
// goroutine outlives the tests, as leakcheck.Main does (which cannot be
// used here, since it exits before the directory could be removed).
// testcontainers leaves no goroutine of its own behind, so nothing is
// ignored.
func TestMain(m *testing.M) {
	if os.Getenv("TESTCONTAINERS_RYUK_DISABLED") == "" {
		os.Setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
	}
	dir, err := os.MkdirTemp("", "concord-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	if err := os.RemoveAll(dir); err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
	}
	if code == 0 {
		code = noLeaks(leakcheck.LingerBound)
	}
	os.Exit(code)
}

// noLeaks waits up to bound for the goroutines the tests started to end.
func noLeaks(bound time.Duration) int {
	deadline := time.Now().Add(bound)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		err := goleak.Find()
		if err == nil {
			return 0
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(os.Stderr, "goleak: goroutines still running %v after the tests: %v\n", bound, err)
			return 1
		}
		<-tick.C
	}
}
