package sim

import (
	"testing"

	"github.com/concordha/concord/core/internal/testhooks"
)

// TestCheckerCatchesBugs is the checker's own test: with a deliberate bug
// in every node (in core, or in what the simulation plays itself: the
// replica layer and the configuration), some schedule among the first few
// hundred must break the invariant the bug breaks, and the checker must
// say so. A checker that passes a broken election proves nothing.
func TestCheckerCatchesBugs(t *testing.T) {
	cases := []struct {
		name      string
		bug       testhooks.Mutations
		broken    Broken
		invariant string
	}{
		{"reversed rank order", testhooks.Mutations{ReverseRank: true}, Broken{}, "rank"},
		{"skipped candidate compare-and-set", testhooks.Mutations{SkipCandidateCAS: true}, Broken{}, "agreement"},
		{"primary ignores session loss", testhooks.Mutations{IgnoreSessionLoss: true}, Broken{}, "self-fencing"},
		{"live primary replaced", testhooks.Mutations{BreakSticky: true}, Broken{}, "sticky"},
		{"roster ignored: spare before secondary", testhooks.Mutations{IgnoreRoster: true}, Broken{}, "rank"},
		{"checkpoints applied without the gate", testhooks.Mutations{}, Broken{SkipGate: true}, "checkpoint-epoch"},
		{"checkpoints acknowledged unapplied", testhooks.Mutations{}, Broken{AckUnapplied: true}, "fresh-promotion"},
		{"depends_on left out on some nodes", testhooks.Mutations{}, Broken{DropDependsOn: true}, "colocated"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			for seed := uint64(1); seed <= 300; seed++ {
				res := Run(Config{Seed: seed, Mutations: c.bug, Broken: c.broken})
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
