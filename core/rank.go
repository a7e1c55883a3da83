package core

import "fmt"

// Role is what a node is for a service.
type Role int8

const (
	// RoleNone: the node takes no part in the service now (it has no
	// session, or it is leaving).
	RoleNone Role = iota
	// RoleSpare: a live provider that gets no checkpoints.
	RoleSpare
	// RoleSecondary: a live provider that the primary checkpoints to.
	RoleSecondary
	// RolePrimary: the one provider that serves.
	RolePrimary
)

func (r Role) String() string {
	switch r {
	case RoleNone:
		return "none"
	case RoleSpare:
		return "spare"
	case RoleSecondary:
		return "secondary"
	case RolePrimary:
		return "primary"
	}
	return fmt.Sprintf("role(%d)", int8(r))
}

// RankClass orders providers by role for ranking. A node that has just
// resigned the service ranks below every spare, so that it wins only when
// it is the sole live provider.
type RankClass int8

// Rank classes, lowest first.
const (
	ClassResigned RankClass = iota
	ClassSpare
	ClassSecondary
	ClassPrimary
)

// Rank is a provider's place in the total order of a service's providers
// (design.md, claims 2 and 11): role first (primary > secondary > spare),
// then checkpoint freshness among secondaries, then configured priority
// (higher first), then node ID (lexicographically smaller first). Ranks
// are unique because node IDs are. For a service that depends on another,
// hosting the dependency's live primary comes before all of these.
type Rank struct {
	// Colocated: the provider hosts the live primary of the service this
	// one depends on. Only such a provider may become primary.
	Colocated bool      `json:"colocated,omitempty"`
	Class     RankClass `json:"class"`
	// Freshness of the provider's state: the fencing token of the primary
	// whose checkpoint it acknowledged, then that checkpoint's sequence
	// number. Zero for spares.
	FreshToken int64  `json:"fresh_token,omitempty"`
	FreshSeq   int64  `json:"fresh_seq,omitempty"`
	Priority   int    `json:"priority,omitempty"`
	Node       string `json:"node"`
}

// Compare returns +1 if r outranks o, -1 if o outranks r, and 0 if they
// are the same rank (the same node).
func (r Rank) Compare(o Rank) int {
	switch {
	case r.Colocated != o.Colocated:
		if r.Colocated {
			return 1
		}
		return -1
	case r.Class != o.Class:
		return sign(int64(r.Class) - int64(o.Class))
	case r.FreshToken != o.FreshToken:
		return sign(r.FreshToken - o.FreshToken)
	case r.FreshSeq != o.FreshSeq:
		return sign(r.FreshSeq - o.FreshSeq)
	case r.Priority != o.Priority:
		return sign(int64(r.Priority) - int64(o.Priority))
	case r.Node != o.Node:
		if r.Node < o.Node {
			return 1
		}
		return -1
	}
	return 0
}

func sign(x int64) int {
	switch {
	case x > 0:
		return 1
	case x < 0:
		return -1
	}
	return 0
}

// Round identifies one election of one service: the membership epoch it
// runs in, then the generation of the primary record it started from (the
// record's revision, 0 if absent). A resignation or a failed claim changes
// the generation, so a new election can run in the same view.
type Round struct {
	Epoch int64 `json:"epoch"`
	Gen   int64 `json:"gen"`
}

// Compare orders rounds: by epoch, then by generation.
func (r Round) Compare(o Round) int {
	if r.Epoch != o.Epoch {
		return sign(r.Epoch - o.Epoch)
	}
	return sign(r.Gen - o.Gen)
}

func (r Round) String() string { return fmt.Sprintf("%d.%d", r.Epoch, r.Gen) }
