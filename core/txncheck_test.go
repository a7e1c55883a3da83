package core_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/concordha/concord/core"
)

func TestCheckTxn(t *testing.T) {
	w := func(k string) core.Op { return core.Op{Kind: core.OpCreate, Key: k} }
	cases := []struct {
		name string
		ops  []core.Op
		want string // "" means accepted
	}{
		{"independent reads and writes", []core.Op{w("a/1"), {Kind: core.OpGet, Key: "b"}, {Kind: core.OpList, Key: "c/"}, {Kind: core.OpCAS, Key: "a/2", Guards: []core.Guard{{Key: "m", Revision: 1}}}}, ""},
		{"empty batch", nil, ""},
		{"unknown kind", []core.Op{{Kind: 99, Key: "a"}}, "unknown kind"},
		{"empty key", []core.Op{{Kind: core.OpGet}}, "empty key"},
		{"empty guard key", []core.Op{{Kind: core.OpCAS, Key: "a", Guards: []core.Guard{{}}}}, "guard with an empty key"},
		{"a key written twice", []core.Op{w("a"), {Kind: core.OpCAS, Key: "a"}}, `writes "a" twice`},
		{"a read of a written key", []core.Op{{Kind: core.OpGet, Key: "a"}, w("a")}, `reads "a"`},
		{"a list over a written key", []core.Op{{Kind: core.OpList, Key: "a/"}, w("a/x")}, `lists "a/"`},
	}
	for _, c := range cases {
		err := core.CheckTxn(c.ops)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v, want accepted", c.name, err)
		case c.want != "" && (!errors.Is(err, core.ErrInvalidArgument) || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v, want ErrInvalidArgument saying %q", c.name, err, c.want)
		}
	}
}
