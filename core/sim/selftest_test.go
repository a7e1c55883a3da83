package sim

import (
	"testing"

	"github.com/concordha/concord/core/internal/testhooks"
)

// TestCheckerCatchesBugs is the checker's own test: with a deliberate bug
// in every node, some schedule among the first few hundred must break the
// invariant the bug breaks, and the checker must say so. A checker that
// passes a broken election proves nothing.
func TestCheckerCatchesBugs(t *testing.T) {
	cases := []struct {
		name      string
		bug       testhooks.Mutations
		invariant string
	}{
		{"reversed rank order", testhooks.Mutations{ReverseRank: true}, "rank"},
		{"skipped candidate compare-and-set", testhooks.Mutations{SkipCandidateCAS: true}, "agreement"},
		{"primary ignores session loss", testhooks.Mutations{IgnoreSessionLoss: true}, "self-fencing"},
		{"live primary replaced", testhooks.Mutations{BreakSticky: true}, "sticky"},
		{"roster ignored: spare before secondary", testhooks.Mutations{IgnoreRoster: true}, "rank"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			for seed := uint64(1); seed <= 300; seed++ {
				res := Run(Config{Seed: seed, Mutations: c.bug})
				if res.Violation == nil {
					continue
				}
				if res.Violation.Invariant != c.invariant {
					t.Fatalf("seed %d: the bug broke %q, want %q: %v", seed, res.Violation.Invariant, c.invariant, res.Violation)
				}
				t.Logf("caught at seed %d: %v", seed, res.Violation)
				return
			}
			t.Fatalf("no schedule of 300 caught the bug: the checker is blind to it")
		})
	}
	// And the same schedules pass without a bug, so what was caught is
	// the bug, not the schedule.
	for seed := uint64(1); seed <= 50; seed++ {
		if res := Run(Config{Seed: seed}); res.Violation != nil {
			t.Fatalf("seed %d fails without any bug: %s", seed, res.Report())
		}
	}
}
