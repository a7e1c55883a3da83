package replica

import (
	"slices"
	"testing"

	"github.com/concordha/concord/core"
)

// TestPlanOrder: secondaries stay first (freshest first); spares follow,
// least loaded first, then by priority and ID; the primary is left out.
func TestPlanOrder(t *testing.T) {
	prov := func(prio int) map[string]core.ServiceRecord {
		return map[string]core.ServiceRecord{"db": {Priority: prio}}
	}
	members := map[string]core.MemberRecord{
		"p":  {Node: "p", Services: prov(0)},
		"s1": {Node: "s1", Services: prov(0)},
		"s2": {Node: "s2", Services: prov(0)},
		"x":  {Node: "x", Services: prov(9)}, // busy elsewhere
		"y":  {Node: "y", Services: prov(1)},
		"z":  {Node: "z", Services: prov(5)},
		"w":  {Node: "w", Services: map[string]core.ServiceRecord{"other": {}}},
	}
	secs := []core.SecondaryEntry{{Node: "s1", AckToken: 5, AckSeq: 1}, {Node: "s2", AckToken: 5, AckSeq: 9}}
	load := map[string]int{"x": 2, "p": 1, "s1": 1, "s2": 1}
	got := planOrder("db", "p", secs, members, load)
	want := []string{"s2", "s1", "z", "y", "x"}
	if !slices.Equal(got, want) {
		t.Fatalf("planOrder = %v, want %v", got, want)
	}
}
