// Package testhooks holds deliberate bugs that the simulation's checker
// must catch. Only packages under core/ can set them, so production users
// of core cannot turn them on; a zero Mutations is the correct algorithm.
package testhooks

// Mutations switches on one or more injected bugs in a core.Machine.
type Mutations struct {
	// ReverseRank makes the machine compare ranks the wrong way round.
	ReverseRank bool
	// SkipCandidateCAS makes the writing node skip the FIG. 7
	// compare-and-set into the other providers' candidate variables.
	SkipCandidateCAS bool
	// IgnoreSessionLoss makes a primary keep acting after its session is
	// lost.
	IgnoreSessionLoss bool
	// BreakSticky makes a node treat a live primary as gone.
	BreakSticky bool
	// IgnoreRoster makes a node rank every provider as a spare.
	IgnoreRoster bool
}
