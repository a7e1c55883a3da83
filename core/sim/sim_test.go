package sim

import (
	"flag"
	"github.com/concordha/concord/core/internal/testhooks"
	"testing"
)

var (
	seedFlag  = flag.Uint64("seed", 0, "replay this seed (TestReplay)")
	seedsFlag = flag.Int("seeds", 200, "how many seeded schedules TestSchedules runs")
	firstSeed = flag.Uint64("first", 1, "the first seed TestSchedules runs")
)

func TestSchedules(t *testing.T) {
	for i := 0; i < *seedsFlag; i++ {
		seed := *firstSeed + uint64(i)
		res := Run(Config{Seed: seed})
		if res.Violation != nil {
			t.Fatalf("%s", res.Report())
		}
	}
}

func TestReplay(t *testing.T) {
	if *seedFlag == 0 {
		t.Skip("give -seed=N to replay one schedule")
	}
	res := Run(Config{Seed: *seedFlag, TraceLines: 100000})
	for _, l := range res.Trace {
		t.Log(l)
	}
	if res.Violation != nil {
		t.Fatalf("%s", res.Report())
	}
	t.Logf("ok: %+v", res.Stats)
}

func TestPeek(t *testing.T) {
	for s := uint64(1); s <= 10; s++ {
		res := Run(Config{Seed: s, TraceLines: 100000})
		t.Logf("seed %d nodes=%d svcs=%d faults=%d stats=%+v", s, res.Config.Nodes, res.Config.Services, res.Config.Faults, res.Stats)
	}
}

func TestMutPeek(t *testing.T) {
	muts := map[string]testhooks.Mutations{
		"reverse": {ReverseRank: true}, "skipcas": {SkipClaimCAS: true}, "ignoreloss": {IgnoreSessionLoss: true},
		"breaksticky": {BreakSticky: true}, "ignoreroster": {IgnoreRoster: true},
	}
	for name, m := range muts {
		caught := 0
		first := ""
		for s := uint64(1); s <= 200; s++ {
			res := Run(Config{Seed: s, Mutations: m})
			if res.Violation != nil {
				caught++
				if first == "" {
					first = res.Violation.Error()
				}
			}
		}
		t.Logf("%s: caught in %d/200; first: %s", name, caught, first)
	}
}
