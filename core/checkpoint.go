package core

import (
	"errors"
	"fmt"
)

// ErrStaleCheckpoint is returned for a checkpoint that is not newer than
// what the receiver already holds, or that comes from a primary older
// than the newest one the receiver knows of.
var ErrStaleCheckpoint = errors.New("stale checkpoint")

// Stamp identifies a checkpoint: the membership epoch in which its sender
// was elected, the sender's fencing token, and the sequence number the
// sender gave it (from 1, per primary tenure). Stamps order by token,
// then sequence number: tokens strictly increase from one primary to the
// next, and so do the epochs they were elected in.
type Stamp struct {
	Epoch int64 `json:"epoch"`
	Token int64 `json:"token"`
	Seq   int64 `json:"seq"`
}

// After reports whether s is newer than o.
func (s Stamp) After(o Stamp) bool {
	if s.Token != o.Token {
		return s.Token > o.Token
	}
	return s.Seq > o.Seq
}

func (s Stamp) String() string {
	return fmt.Sprintf("epoch %d token %d seq %d", s.Epoch, s.Token, s.Seq)
}

// Gate decides which checkpoints a secondary may apply (design.md,
// "Checkpoints"): only one newer than the last it applied, never one from
// an older epoch, and never one whose sender has been replaced by a
// primary the secondary already knows of. The zero Gate admits any
// checkpoint with a positive token and sequence number. A Gate is not
// safe for concurrent use.
type Gate struct {
	applied Stamp
	// seenEpoch and seenToken are the newest primary the holder knows of.
	seenEpoch, seenToken int64
}

// Observe records that a primary with token and epoch exists (from the
// primary record). Checkpoints from older primaries are refused from now
// on.
func (g *Gate) Observe(epoch, token int64) {
	if token > g.seenToken {
		g.seenToken = token
	}
	if epoch > g.seenEpoch {
		g.seenEpoch = epoch
	}
}

// Admit returns nil if a checkpoint stamped s may be applied, and an error
// wrapping ErrStaleCheckpoint (or ErrInvalidArgument for a malformed
// stamp) that says why not.
func (g *Gate) Admit(s Stamp) error {
	switch {
	case s.Token <= 0 || s.Seq <= 0 || s.Epoch < 0:
		return fmt.Errorf("%w: checkpoint stamp (%v) needs a positive token and sequence number", ErrInvalidArgument, s)
	case s.Token < g.seenToken:
		return fmt.Errorf("%w: checkpoint (%v) comes from a primary older than token %d", ErrStaleCheckpoint, s, g.seenToken)
	case s.Epoch < g.seenEpoch || s.Epoch < g.applied.Epoch:
		return fmt.Errorf("%w: checkpoint (%v) comes from an epoch older than %d", ErrStaleCheckpoint, s, max(g.seenEpoch, g.applied.Epoch))
	case !s.After(g.applied):
		return fmt.Errorf("%w: checkpoint (%v) is not newer than the one applied (%v)", ErrStaleCheckpoint, s, g.applied)
	}
	return nil
}

// Applied records that the checkpoint stamped s was applied. Call it only
// after Admit(s) returned nil and the state was restored.
func (g *Gate) Applied(s Stamp) {
	g.applied = s
	g.Observe(s.Epoch, s.Token)
}

// Last returns the stamp of the last checkpoint applied (zero if none).
func (g *Gate) Last() Stamp { return g.applied }
