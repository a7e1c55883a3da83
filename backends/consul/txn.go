package consul

import (
	"bytes"
	"context"
	"fmt"
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/concordha/concord/core"
)

// A Consul transaction is all or nothing: one failed operation rolls back
// the whole of it. core.Txner wants each op to fail alone, all of them
// judged against one state. Txn gets there in rounds, each one Consul
// transaction:
//
//  1. It first runs the batch as if every condition held: the guards'
//     "check-index" first, then each write with its own condition ("cas"
//     at index 0 for a create, "check-index" and "set" for a
//     compare-and-swap), then the reads ("get-or-empty", "get-tree").
//     Consul evaluates the operations in order against one state and, on
//     a rollback, reports every failed one with what it found (the key
//     missing, or its current index).
//  2. If it rolled back, each op with a failed condition is known to
//     fail, and the next round replaces its operations by an assertion of
//     that failure ("check-not-exists", "check-index" at the index found,
//     or "get" for a key found to exist) and, if the failure is a guard's,
//     a "get-or-empty" of the op's own key, which tells its own error.
//     A condition whose key was found past the version it wants, or
//     missing while Consul's index had already passed that version, can
//     never hold again (Raft indexes only grow: a key written again, or
//     created again, gets a greater one): its op needs no assertion, only
//     that read. The other ops stay as they were.
//  3. A round that succeeds is the result: in its state, every op that
//     applied had its conditions hold, every op that failed had one fail
//     (the assertions say so), and the reads saw that same state. A round
//     that rolls back only because the state moved since the previous one
//     applied nothing; Txn tries again, up to maxTxnRounds rounds.
//
// Guards are checked before any write, so they see the state before the
// Txn even when another op of it writes the guard's key; the rules of
// core.Txner keep every other check and read off the keys the Txn writes.
const maxTxnRounds = 5

// MaxTxnOps implements core.Txner: half of Config.MaxTxnOps, since a
// compare-and-swap takes two Consul operations. Each guard takes one
// more: a batch whose ops and guards exceed Config.MaxTxnOps fails with
// core.ErrInvalidArgument.
func (s *Store) MaxTxnOps() int { return s.cfg.MaxTxnOps / 2 }

// Txn implements core.Txner (see the rounds above). All the writes of a
// Txn get the same Revision (and Version): the Raft index of its
// transaction. An OpList reports the largest ModifyIndex under its
// prefix, a lower bound after a deletion (0 for an empty prefix): Consul
// gives a transaction no index. Guards on reads are ignored.
func (s *Store) Txn(ctx context.Context, ops []core.Op) ([]core.OpResult, error) {
	if err := s.validateTxn(ops); err != nil {
		return nil, err
	}
	cctx, end, err := s.begin(ctx, opTxn)
	if err != nil {
		return nil, err
	}
	defer end()
	if len(ops) == 0 {
		return []core.OpResult{}, nil
	}
	what := fmt.Sprintf("txn of %d ops, first %q", len(ops), ops[0].Key)
	fails := make([]*failure, len(ops))
	for i, o := range ops {
		fails[i] = staticFailure(o)
	}
	var floor uint64 // the greatest index Consul's answers showed
	for round := 1; ; round++ {
		p := plan(ops, fails)
		resp, failed, err := s.txn(cctx, p.ops, !p.writes)
		if err != nil {
			return nil, s.convertError(ctx, what, "", err)
		}
		if !failed {
			return p.results(ops, fails, resp.Results)
		}
		if err := p.learn(ops, fails, resp.Errors, &floor); err != nil {
			return nil, fmt.Errorf("consul: %s: %w", what, err)
		}
		if round == maxTxnRounds {
			return nil, fmt.Errorf("consul: %s: the keys kept changing through %d attempts; nothing was applied", what, round)
		}
	}
}

// validateTxn checks the rules that make a batch run or fail as a whole:
// core.CheckTxn's, Consul's keys, and the op limits.
func (s *Store) validateTxn(ops []core.Op) error {
	if limit := s.MaxTxnOps(); len(ops) > limit {
		return fmt.Errorf("consul: txn of %d ops, more than MaxTxnOps %d: %w", len(ops), limit, core.ErrInvalidArgument)
	}
	if err := core.CheckTxn(ops); err != nil {
		return fmt.Errorf("consul: %w", err)
	}
	n := 0
	for _, o := range ops {
		if err := checkPrefix(opTxn, o.Key); err != nil {
			return err
		}
		n += 1 + len(o.Guards)
		switch o.Kind {
		case core.OpCAS:
			n++
		case core.OpGet, core.OpList:
			n -= len(o.Guards) // ignored
			continue
		}
		for _, g := range o.Guards {
			if err := checkPrefix(opTxn, g.Key); err != nil {
				return err
			}
		}
	}
	if n > s.cfg.MaxTxnOps {
		return fmt.Errorf("consul: txn of %d ops and their guards needs %d Consul operations, more than Config.MaxTxnOps %d; use fewer guards or smaller batches: %w",
			len(ops), n, s.cfg.MaxTxnOps, core.ErrInvalidArgument)
	}
	return nil
}

// failure is what is known of a write op that fails: nil for an op not
// known to fail. Either its own condition failed (own), or one of its
// guards did (guard, the index in the op's Guards, and found, what was
// found of the guard's key), or it fails in every state from now on
// (static). A static op, or one whose guard failed, needs a read of its
// own key in the round that applies, to tell its own error.
type failure struct {
	own    *state
	guard  int
	found  state
	static bool
}

// judge returns what an observation of the key of a condition makes of
// op o: the key of its own condition (guard < 0), or of its guard. Raft
// indexes only grow, so a key found past the version a condition wants
// fails that condition for good, and so does a key found missing when
// the version is not above floor, an index Consul had reached by then:
// created again, the key would get a greater one. The op then becomes
// static. A condition found to hold now returns nil: the op may apply.
func judge(o core.Op, guard int, found state, floor uint64) *failure {
	want := o.Version
	if guard >= 0 {
		want = o.Guards[guard].Revision
	}
	switch {
	case guard < 0 && o.Kind == core.OpCreate && !found.exists:
		return nil
	case guard < 0 && o.Kind == core.OpCreate:
		return &failure{own: &found}
	case found.exists && found.index == 0:
		return nil // present at an index not known: look again
	case found.exists && int64(found.index) == want:
		return nil
	case found.exists && int64(found.index) > want, !found.exists && want <= int64(floor):
		return &failure{static: true}
	case guard < 0:
		return &failure{own: &found}
	default:
		return &failure{guard: guard, found: found}
	}
}

// merge combines two failures of one op found in the same round: a
// static one stands, then one of the op's own condition (which decides
// its error).
func merge(a, b *failure) *failure {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	case a.static || b.static:
		return &failure{static: true}
	case a.own != nil:
		return a
	}
	return b
}

// staticFailure returns the failure of a write op that no state can let
// apply, or nil.
func staticFailure(o core.Op) *failure {
	switch o.Kind {
	case core.OpCreate, core.OpCAS:
	default:
		return nil
	}
	if o.Kind == core.OpCAS && o.Version <= 0 {
		return &failure{static: true}
	}
	for _, g := range o.Guards {
		if g.Revision <= 0 {
			return &failure{static: true}
		}
	}
	return nil
}

// role says what a Consul operation of a round is for.
type role uint8

const (
	roleGuard    role = iota + 1 // a guard's check-index
	roleAssert                   // an assertion of a failing op's failure
	roleWrite                    // the op's write: the result is the record written
	roleOwnCheck                 // a compare-and-swap's check-index, before its set
	roleRead                     // an OpGet's get-or-empty
	roleOwnRead                  // a failing op's get-or-empty of its own key
	roleList                     // an OpList's get-tree
)

// step is one Consul operation of a round: which op it serves, in what
// role, on what key, and for a guard or an assertion, which guard of the
// op (-1: none, the op's own key).
type step struct {
	op    int
	role  role
	key   string
	guard int
}

// round is the Consul transaction of one attempt.
type round struct {
	ops    api.TxnOps
	steps  []step
	writes bool
}

func (r *round) add(st step, verb api.KVOp, key string, index uint64, value []byte) {
	r.ops = append(r.ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: verb, Key: key, Index: index, Value: value}})
	st.key = key
	r.steps = append(r.steps, st)
	switch verb {
	case api.KVCAS, api.KVSet:
		r.writes = true
	}
}

// plan builds the round for ops, given what is known of their failures:
// guards and assertions first, then writes, then reads, with the
// prefix reads last so that their results, whose number is not known in
// advance, can be told apart.
func plan(ops []core.Op, fails []*failure) *round {
	r := &round{}
	for i, o := range ops {
		f := fails[i]
		switch {
		case o.Kind != core.OpCreate && o.Kind != core.OpCAS:
		case f == nil:
			for k, g := range o.Guards {
				r.add(step{op: i, role: roleGuard, guard: k}, api.KVCheckIndex, g.Key, uint64(g.Revision), nil)
			}
		case f.static:
		case f.own != nil:
			r.add(step{op: i, role: roleAssert, guard: -1}, assertVerb(*f.own), o.Key, f.own.index, nil)
		default:
			r.add(step{op: i, role: roleAssert, guard: f.guard}, assertVerb(f.found), o.Guards[f.guard].Key, f.found.index, nil)
		}
	}
	for i, o := range ops {
		if fails[i] != nil {
			continue
		}
		switch o.Kind {
		case core.OpCreate:
			r.add(step{op: i, role: roleWrite, guard: -1}, api.KVCAS, o.Key, 0, o.Value)
		case core.OpCAS:
			r.add(step{op: i, role: roleOwnCheck, guard: -1}, api.KVCheckIndex, o.Key, uint64(o.Version), nil)
			r.add(step{op: i, role: roleWrite, guard: -1}, api.KVSet, o.Key, 0, o.Value)
		}
	}
	for i, o := range ops {
		switch {
		case o.Kind == core.OpGet:
			r.add(step{op: i, role: roleRead}, api.KVGetOrEmpty, o.Key, 0, nil)
		case fails[i] != nil && fails[i].own == nil:
			r.add(step{op: i, role: roleOwnRead}, api.KVGetOrEmpty, o.Key, 0, nil)
		}
	}
	for i, o := range ops {
		if o.Kind == core.OpList {
			r.add(step{op: i, role: roleList}, api.KVGetTree, o.Key, 0, nil)
		}
	}
	return r
}

// assertVerb is the check that holds only in state st: the key missing,
// at a known index, or present (a "get", which fails on a missing key).
func assertVerb(st state) api.KVOp {
	switch {
	case !st.exists:
		return api.KVCheckNotExists
	case st.index != 0:
		return api.KVCheckIndex
	default:
		return api.KVGet
	}
}

// learn updates fails from the errors of a round that rolled back: each
// failed condition is judged by what Consul found of its key. A failed
// assertion means the state moved since the round that made it: what
// its failure found replaces what the op's failure was. floor is the
// greatest index the Txn has seen a key at: found in a failed check, or
// checked by one that did not fail (Consul reports every failed
// operation, so the others held). An error it cannot place is returned.
func (r *round) learn(ops []core.Op, fails []*failure, errs api.TxnErrors, floor *uint64) error {
	found := make([]state, len(errs))
	failed := make(map[int]bool, len(errs))
	for k, e := range errs {
		if e.OpIndex < 0 || e.OpIndex >= len(r.steps) {
			return fmt.Errorf("Consul reports operation %d of %d failed: %s", e.OpIndex, len(r.steps), e.What)
		}
		found[k] = parseState(e.What, r.steps[e.OpIndex].key)
		*floor = max(*floor, found[k].index)
		failed[e.OpIndex] = true
	}
	for k, op := range r.ops {
		if op.KV.Verb == api.KVCheckIndex && !failed[k] {
			*floor = max(*floor, op.KV.Index)
		}
	}
	next := make([]*failure, len(fails))
	copy(next, fails)
	for k, e := range errs {
		st := r.steps[e.OpIndex]
		o := ops[st.op]
		switch {
		case !found[k].known:
			return fmt.Errorf("op %d (%s %q): %s", st.op, kindName(o.Kind), o.Key, e.What)
		case st.role == roleAssert:
			next[st.op] = judge(o, st.guard, found[k], *floor)
		case st.role == roleGuard, st.role == roleOwnCheck, st.role == roleWrite && o.Kind == core.OpCreate:
			next[st.op] = merge(next[st.op], judge(o, st.guard, found[k], *floor))
		default:
			return fmt.Errorf("op %d (%s %q): %s", st.op, kindName(o.Kind), o.Key, e.What)
		}
	}
	copy(fails, next)
	return nil
}

// results reads the results of the round that applied.
func (r *round) results(ops []core.Op, fails []*failure, results api.TxnResults) ([]core.OpResult, error) {
	out := make([]core.OpResult, len(ops))
	next := 0
	take := func() (*api.KVPair, error) {
		if next >= len(results) || results[next].KV == nil {
			return nil, fmt.Errorf("consul: txn: %d results, fewer than expected", len(results))
		}
		next++
		return results[next-1].KV, nil
	}
	for k, st := range r.steps {
		verb := r.ops[k].KV.Verb
		o := ops[st.op]
		switch {
		case verb == api.KVCheckNotExists:
			// no result
		case st.role == roleList:
			prefix := o.Key
			var pairs api.KVPairs
			for next < len(results) && results[next].KV != nil && strings.HasPrefix(results[next].KV.Key, prefix) &&
				(len(pairs) == 0 || results[next].KV.Key > pairs[len(pairs)-1].Key) {
				pairs = append(pairs, results[next].KV)
				next++
			}
			out[st.op].List = snapshotOf(pairs, 0)
		default:
			p, err := take()
			if err != nil {
				return nil, err
			}
			if p.Key != st.key {
				return nil, fmt.Errorf("consul: txn: result for %q where %q was expected", p.Key, st.key)
			}
			switch st.role {
			case roleWrite:
				idx := int64(p.ModifyIndex)
				out[st.op].KV = core.KV{Key: o.Key, Value: bytes.Clone(o.Value), Version: idx, Revision: idx}
			case roleRead:
				if p.ModifyIndex == 0 {
					out[st.op].Err = fmt.Errorf("consul: txn get %q: %w", o.Key, core.ErrNotFound)
				} else {
					out[st.op].KV = toKV(p)
				}
			case roleOwnRead:
				own := state{known: true, exists: p.ModifyIndex != 0, index: p.ModifyIndex}
				fails[st.op].own = &own
			}
		}
	}
	if next != len(results) {
		return nil, fmt.Errorf("consul: txn: %d results, %d expected", len(results), next)
	}
	for i, o := range ops {
		if f := fails[i]; f != nil {
			out[i].Err = opError(o, f)
		}
	}
	return out, nil
}

// opError is the error of a write op that failed, from what the round
// that applied found of its own key.
func opError(o core.Op, f *failure) error {
	own := f.own
	switch {
	case o.Kind == core.OpCreate && own != nil && own.exists:
		return fmt.Errorf("consul: txn create %q: %w", o.Key, core.ErrExists)
	case o.Kind == core.OpCreate:
		return fmt.Errorf("consul: txn create %q: a guard does not hold: %w", o.Key, core.ErrConflict)
	case own != nil && !own.exists:
		return fmt.Errorf("consul: txn compare-and-swap %q: %w", o.Key, core.ErrNotFound)
	case own != nil && own.index != uint64(o.Version):
		return fmt.Errorf("consul: txn compare-and-swap %q at version %d (current %d): %w", o.Key, o.Version, own.index, core.ErrConflict)
	default:
		return fmt.Errorf("consul: txn compare-and-swap %q at version %d: a guard does not hold: %w", o.Key, o.Version, core.ErrConflict)
	}
}

func kindName(k core.OpKind) string {
	switch k {
	case core.OpGet:
		return "get"
	case core.OpList:
		return "list"
	case core.OpCreate:
		return "create"
	case core.OpCAS:
		return "compare-and-swap"
	}
	return fmt.Sprintf("kind %d", k)
}
