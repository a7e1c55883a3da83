package core_test

import (
	"errors"
	"testing"

	"github.com/concordha/concord/core"
)

func TestGateAdmitsOnlyNewerCheckpoints(t *testing.T) {
	var g core.Gate
	st := func(e, tok, seq int64) core.Stamp { return core.Stamp{Epoch: e, Token: tok, Seq: seq} }
	if err := g.Admit(st(1, 0, 1)); !errors.Is(err, core.ErrInvalidArgument) {
		t.Fatalf("zero token: %v, want ErrInvalidArgument", err)
	}
	if err := g.Admit(st(3, 10, 1)); err != nil {
		t.Fatalf("first checkpoint refused: %v", err)
	}
	g.Applied(st(3, 10, 1))
	for _, tc := range []struct {
		s    core.Stamp
		want error
	}{
		{st(3, 10, 1), core.ErrStaleCheckpoint}, // the same again
		{st(3, 10, 0), core.ErrInvalidArgument},
		{st(3, 9, 7), core.ErrStaleCheckpoint},  // an older primary
		{st(2, 11, 1), core.ErrStaleCheckpoint}, // an older epoch
		{st(3, 10, 2), nil},
		{st(4, 12, 1), nil}, // a new primary starts again at 1
	} {
		if err := g.Admit(tc.s); !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Errorf("Admit(%v) = %v, want %v", tc.s, err, tc.want)
		}
	}
	// Once a newer primary is known, its predecessor's checkpoints are
	// refused even if newer than the applied one.
	g.Observe(5, 20)
	if err := g.Admit(st(4, 12, 1)); !errors.Is(err, core.ErrStaleCheckpoint) {
		t.Fatalf("checkpoint of a replaced primary: %v, want ErrStaleCheckpoint", err)
	}
	if err := g.Admit(st(5, 20, 1)); err != nil {
		t.Fatalf("checkpoint of the newest primary refused: %v", err)
	}
	if g.Last() != st(3, 10, 1) {
		t.Fatalf("Last() = %v", g.Last())
	}
}
