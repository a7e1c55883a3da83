package core

import (
	"context"
	"fmt"
	"strings"
)

// run executes one op on its own against the store. Guards need a Txn;
// without one they are dropped, which the backends guide documents: the
// claim then rests on the compare-and-swap alone, and a zombie claim is
// cut short by the client-side session deadline.
func run(ctx context.Context, st Store, op Op) OpResult {
	var res OpResult
	switch op.Kind {
	case OpGet:
		res.KV, res.Err = st.Get(ctx, op.Key)
	case OpList:
		res.List, res.Err = st.List(ctx, op.Key)
	case OpCreate:
		res.KV, res.Err = st.Create(ctx, op.Key, op.Value)
	case OpCAS:
		res.KV, res.Err = st.CompareAndSwap(ctx, op.Key, op.Value, op.Version)
	default:
		res.Err = fmt.Errorf("%w: op kind %d", ErrInvalidArgument, op.Kind)
	}
	return res
}

// batch packs requests into groups that one Txn may carry: at most limit
// ops, no key written twice, and no read of a key written in the same
// group. Order is kept within and across groups.
func batch(reqs []Request, limit int) [][]Request {
	var out [][]Request
	var cur []Request
	var writes, gets, lists []string
	conflicts := func(op Op) bool {
		switch op.Kind {
		case OpGet:
			for _, w := range writes {
				if w == op.Key {
					return true
				}
			}
		case OpList:
			for _, w := range writes {
				if strings.HasPrefix(w, op.Key) {
					return true
				}
			}
		case OpCreate, OpCAS:
			for _, w := range writes {
				if w == op.Key {
					return true
				}
			}
			for _, g := range gets {
				if g == op.Key {
					return true
				}
			}
			for _, l := range lists {
				if strings.HasPrefix(op.Key, l) {
					return true
				}
			}
		}
		return false
	}
	for _, r := range reqs {
		if len(cur) > 0 && (len(cur) >= limit || conflicts(r.Op)) {
			out = append(out, cur)
			cur, writes, gets, lists = nil, nil, nil, nil
		}
		cur = append(cur, r)
		switch r.Op.Kind {
		case OpGet:
			gets = append(gets, r.Op.Key)
		case OpList:
			lists = append(lists, r.Op.Key)
		default:
			writes = append(writes, r.Op.Key)
		}
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}
