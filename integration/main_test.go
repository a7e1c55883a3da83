//go:build integration

package integration

import (
	"fmt"
	"os"
	"testing"

	"github.com/concordha/concord/internal/leakcheck"
)

// TestMain disables Ryuk (testcontainers' reaper is an image to pull; the
// tests terminate their containers themselves), gives the concord binary
// a temporary directory, removed after the tests, and checks that no
// goroutine outlives the tests, with leakcheck.Verify (leakcheck.Main
// cannot be used here: it exits before the directory could be removed).
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
		code = leakcheck.Verify(leakcheck.LingerBound)
	}
	os.Exit(code)
}
