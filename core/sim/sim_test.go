package sim

import (
	"flag"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
)

var (
	seedFlag  = flag.Uint64("seed", 0, "replay this seed (TestReplay)")
	seedsFlag = flag.Int("seeds", 5000, "how many seeded schedules TestSchedules runs")
	firstSeed = flag.Uint64("first", 1, "the first seed TestSchedules runs")
	workers   = flag.Int("workers", 2, "schedules run at once")
	soak      = flag.Bool("soak", false, "also run the largest shapes")
)

// TestSchedules plays -seeds seeded schedules and fails on the first
// broken invariant, printing the seed, the command that replays it and
// the tail of its trace. Over many seeds it also checks that the
// schedules reach what the invariants are about: refused checkpoints,
// promotions after a full transfer, claims by secondaries and claims of
// dependents.
func TestSchedules(t *testing.T) {
	var next atomic.Uint64
	next.Store(*firstSeed)
	last := *firstSeed + uint64(*seedsFlag)
	var mu sync.Mutex
	var failed []Result
	var total Stats
	ran, withDeps := 0, 0
	var wg sync.WaitGroup
	for i := 0; i < *workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				seed := next.Add(1) - 1
				if seed >= last {
					return
				}
				res := Run(Config{Seed: seed})
				mu.Lock()
				total = addStats(total, res.Stats)
				ran++
				if res.Config.Dependents > 0 {
					withDeps++
				}
				if res.Violation != nil {
					failed = append(failed, res)
					mu.Unlock()
					next.Store(last) // stop the others early
					return
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, res := range failed {
		t.Errorf("%s", res.Report())
	}
	t.Logf("%d seeds, %d with dependencies: %d checkpoints applied, %d refused, %d lost; %d promotions; %d claims by secondaries, %d of dependents",
		ran, withDeps, total.Checkpoints, total.Refused, total.Lost, total.Promotions, total.SecondaryClaims, total.DependentClaims)
	if len(failed) == 0 && ran >= 1000 {
		for _, c := range []struct {
			what string
			n    int
		}{
			{"dependencies", withDeps}, {"refused checkpoints", total.Refused},
			{"lost checkpoints", total.Lost}, {"promotions", total.Promotions},
			{"claims by secondaries", total.SecondaryClaims}, {"claims of dependents", total.DependentClaims},
		} {
			if c.n == 0 {
				t.Errorf("%d schedules had no %s: the simulation no longer covers them", ran, c.what)
			}
		}
	}
}

func addStats(a, b Stats) Stats {
	a.Checkpoints += b.Checkpoints
	a.Refused += b.Refused
	a.Lost += b.Lost
	a.Promotions += b.Promotions
	a.SecondaryClaims += b.SecondaryClaims
	a.DependentClaims += b.DependentClaims
	return a
}

// TestReplay plays one seed again with its whole trace: -seed=N.
func TestReplay(t *testing.T) {
	if *seedFlag == 0 {
		t.Skip("give -seed=N to replay one schedule")
	}
	res := Run(Config{Seed: *seedFlag, Trace: true, TraceLines: 1 << 20})
	for _, l := range res.Trace {
		t.Log(l)
	}
	if res.Violation != nil {
		t.Fatalf("%v", res.Violation)
	}
	t.Logf("ok: %+v", res.Stats)
}

// TestDeterministic: a seed replays exactly.
func TestDeterministic(t *testing.T) {
	for _, cfg := range []Config{{Seed: 3}, {Seed: 42}, {Seed: 1234}, {Seed: 8, Services: 6, Dependents: 4}} {
		a, b := Run(cfg), Run(cfg)
		if a.Digest != b.Digest || a.Stats != b.Stats {
			t.Fatalf("seed %d ran two ways: digest %x vs %x, stats %+v vs %+v", cfg.Seed, a.Digest, b.Digest, a.Stats, b.Stats)
		}
		if a.Stats.Checkpoints == 0 || cfg.Dependents > 0 && a.Stats.DependentClaims == 0 {
			t.Fatalf("seed %d applied no checkpoint or claimed no dependent (%+v): determinism is not tested on them", cfg.Seed, a.Stats)
		}
	}
	if Run(Config{Seed: 5}).Digest == Run(Config{Seed: 6}).Digest {
		t.Fatal("two seeds gave the same digest: the digest does not follow the run")
	}
}

// TestScale runs the edges of the range: many nodes, many services, and
// both. The largest shape (50 nodes and 1,000 services) runs in the soak.
func TestScale(t *testing.T) {
	shapes := []Config{
		{Nodes: 50, Services: 3},
		{Nodes: 25, Services: 100},
		{Nodes: 5, Services: 1000},
	}
	if *soak {
		shapes = append(shapes, Config{Nodes: 50, Services: 1000, Faults: 2})
	}
	for _, c := range shapes {
		c.Seed = 77
		t.Run(fmt.Sprintf("%dx%d", c.Nodes, c.Services), func(t *testing.T) {
			t.Parallel()
			if res := Run(c); res.Violation != nil {
				t.Fatalf("%s", res.Report())
			}
		})
	}
}
