package core

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"
)

func TestRankOrder(t *testing.T) {
	// Highest first: role, then freshness, then priority, then node ID.
	ordered := []Rank{
		{Class: ClassPrimary, Node: "z"},
		{Class: ClassSecondary, FreshToken: 9, FreshSeq: 1, Node: "z"},
		{Class: ClassSecondary, FreshToken: 8, FreshSeq: 50, Node: "a"},
		{Class: ClassSecondary, FreshToken: 8, FreshSeq: 49, Priority: 9, Node: "a"},
		{Class: ClassSecondary, FreshToken: 8, FreshSeq: 49, Priority: 1, Node: "a"},
		{Class: ClassSecondary, FreshToken: 8, FreshSeq: 49, Priority: 1, Node: "b"},
		{Class: ClassSpare, Priority: 100, Node: "a"},
		{Class: ClassSpare, Priority: 0, Node: "a"},
		{Class: ClassResigned, Priority: 100, Node: "a"},
	}
	for i := range ordered {
		for j := range ordered {
			want := 0
			switch {
			case i < j:
				want = 1
			case i > j:
				want = -1
			}
			if got := ordered[i].Compare(ordered[j]); got != want {
				t.Errorf("%+v.Compare(%+v) = %d, want %d", ordered[i], ordered[j], got, want)
			}
		}
	}
}

func TestFig7Rule(t *testing.T) {
	m, _ := NewMachine(MachineConfig{Node: "b", Services: []ServiceConfig{{Name: "s"}}})
	s := m.svcs["s"]
	s.el.round = Round{Epoch: 10, Gen: 5}
	s.el.myRank = Rank{Class: ClassSpare, Priority: 1, Node: "b"}
	cand := func(r Round, rank Rank) candState {
		return candState{exists: true, rec: CandidateRecord{Round: r, Node: rank.Node, Rank: rank}}
	}
	lower := Rank{Class: ClassSpare, Priority: 0, Node: "c"}
	higher := Rank{Class: ClassSecondary, Node: "a"}
	cases := []struct {
		name string
		cur  candState
		want verdict
	}{
		{"absent", candState{}, vWrite},
		{"garbage", candState{exists: true, bad: true}, vWrite},
		{"older epoch, higher rank", cand(Round{9, 99}, higher), vWrite},
		{"older generation", cand(Round{10, 4}, higher), vWrite},
		{"same round, lower rank", cand(Round{10, 5}, lower), vWrite},
		{"same round, us", cand(Round{10, 5}, s.el.myRank), vSatisfied},
		{"same round, higher rank", cand(Round{10, 5}, higher), vOutranked},
		{"newer round", cand(Round{11, 0}, lower), vBehind},
	}
	for _, c := range cases {
		if got := m.fig7(s, c.cur); got != c.want {
			t.Errorf("%s: verdict %d, want %d", c.name, got, c.want)
		}
	}
}

func TestBatchKeepsTxnsValid(t *testing.T) {
	reqs := []Request{
		{ID: 1, Op: Op{Kind: OpGet, Key: "p/a"}},
		{ID: 2, Op: Op{Kind: OpList, Key: "c/a/"}},
		{ID: 3, Op: Op{Kind: OpCAS, Key: "c/b/x"}},
		{ID: 4, Op: Op{Kind: OpCAS, Key: "c/a/x"}}, // under a listed prefix: new batch
		{ID: 5, Op: Op{Kind: OpCAS, Key: "c/a/x"}}, // written twice: new batch
		{ID: 6, Op: Op{Kind: OpGet, Key: "c/a/x"}}, // reads a written key: new batch
		{ID: 7, Op: Op{Kind: OpGet, Key: "q"}},
		{ID: 8, Op: Op{Kind: OpGet, Key: "r"}}, // over the limit of 2: new batch
	}
	var got [][]uint64
	for _, g := range batch(reqs, 3) {
		var ids []uint64
		for _, r := range g {
			ids = append(ids, r.ID)
		}
		got = append(got, ids)
	}
	want := [][]uint64{{1, 2, 3}, {4}, {5}, {6, 7, 8}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("batches %v, want %v", got, want)
	}
}

// store is a minimal in-package store for driving machines by hand: one
// map, a revision counter, exact semantics of Get, List, Create and CAS.
type store struct {
	rev    int64
	kvs    map[string]KV
	tomb   map[string]int64
	claims int // writes attempted on primary records
}

func newStore() *store { return &store{kvs: map[string]KV{}, tomb: map[string]int64{}} }

func (st *store) apply(op Op) OpResult {
	kv, ok := st.kvs[op.Key]
	if (op.Kind == OpCreate || op.Kind == OpCAS) && len(op.Key) > 8 && op.Key[:8] == "primary/" {
		st.claims++
	}
	for _, g := range op.Guards {
		if gk, ok := st.kvs[g.Key]; !ok || gk.Revision != g.Revision {
			return OpResult{Err: ErrConflict}
		}
	}
	switch op.Kind {
	case OpGet:
		if !ok {
			return OpResult{Err: ErrNotFound}
		}
		return OpResult{KV: kv}
	case OpList:
		var snap Snapshot
		var keys []string
		for k := range st.kvs {
			if len(k) >= len(op.Key) && k[:len(op.Key)] == op.Key {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		for _, k := range keys {
			snap.KVs = append(snap.KVs, st.kvs[k])
			snap.Revision = max(snap.Revision, st.kvs[k].Revision)
		}
		for k, r := range st.tomb {
			if len(k) >= len(op.Key) && k[:len(op.Key)] == op.Key {
				snap.Revision = max(snap.Revision, r)
			}
		}
		return OpResult{List: snap}
	case OpCreate:
		if ok {
			return OpResult{Err: ErrExists}
		}
	case OpCAS:
		if !ok {
			return OpResult{Err: ErrNotFound}
		}
		if kv.Version != op.Version {
			return OpResult{Err: ErrConflict}
		}
	}
	st.rev++
	nkv := KV{Key: op.Key, Value: op.Value, Version: kv.Version + 1, Revision: st.rev}
	st.kvs[op.Key] = nkv
	return OpResult{KV: nkv}
}

func (st *store) del(key string) {
	st.rev++
	delete(st.kvs, key)
	st.tomb[key] = st.rev
}

// join registers a member record for m and returns its KV.
func (st *store) join(m *Machine, session string) KV {
	key, val := m.MemberRecord(session, "")
	return st.apply(Op{Kind: OpCreate, Key: key, Value: val}).KV
}

// drive delivers every outstanding request of the machines, in the order
// given by pick, until none is left.
func drive(t *testing.T, st *store, ms []*Machine, pick func(ops []Op) int) {
	t.Helper()
	type pending struct {
		m   *Machine
		req Request
	}
	var q []pending
	collect := func() {
		for _, m := range ms {
			for _, r := range m.Ready().Requests {
				q = append(q, pending{m, r})
			}
		}
	}
	collect()
	for steps := 0; len(q) > 0; steps++ {
		if steps > 10000 {
			t.Fatal("the machines never went quiet")
		}
		ops := make([]Op, len(q))
		for k, p := range q {
			ops[k] = p.req.Op
		}
		i := pick(ops)
		p := q[i]
		q = append(q[:i], q[i+1:]...)
		p.m.Deliver(p.req.ID, st.apply(p.req.Op))
		collect()
	}
}

// TestClaimContention: two nodes that each see a view in which they rank
// first both reach the claim; the compare-and-swap lets exactly one win,
// and the other, reading again, follows it.
func TestClaimContention(t *testing.T) {
	for order := 0; order < 2; order++ {
		t.Run(fmt.Sprintf("order%d", order), func(t *testing.T) {
			st := newStore()
			a, _ := NewMachine(MachineConfig{Node: "a", Services: []ServiceConfig{{Name: "s", Priority: 1}}})
			b, _ := NewMachine(MachineConfig{Node: "b", Services: []ServiceConfig{{Name: "s", Priority: 0}}})
			// b joins, and its watch shows it alone; then a joins, but b's
			// watch is late, so b thinks it ranks first. a sees both.
			bkv := st.join(b, "sb")
			onlyB := st.apply(Op{Kind: OpList, Key: a.keys.Members()}).List
			akv := st.join(a, "sa")
			all := st.apply(Op{Kind: OpList, Key: a.keys.Members()}).List
			a.SetView(all)
			b.SetView(onlyB)
			a.SetSession("sa", akv)
			b.SetSession("sb", bkv)
			// Every read goes before any write, b's candidate write before
			// a's (so that both get through the FIG. 7 rule), and every
			// write before any claim, so both claim from the same version;
			// then a's claim lands first, or b's.
			pick := func(ops []Op) int {
				best, bestPrio := 0, 99
				for i, op := range ops {
					byB := strings.Contains(string(op.Value), `"node":"b"`)
					prio := 0
					switch {
					case op.Kind == OpGet || op.Kind == OpList:
						prio = 0
					case op.Key != a.keys.Primary("s") && byB:
						prio = 1
					case op.Key != a.keys.Primary("s"):
						prio = 2
					case (order == 0) != byB:
						prio = 3
					default:
						prio = 4
					}
					if prio < bestPrio {
						best, bestPrio = i, prio
					}
				}
				return best
			}
			drive(t, st, []*Machine{a, b}, pick)
			if st.claims < 2 {
				t.Fatalf("%d claims were attempted, want at least 2: the test did not make the nodes contend", st.claims)
			}
			rec, err := DecodePrimary(st.kvs[a.keys.Primary("s")])
			if err != nil {
				t.Fatal(err)
			}
			primaries := 0
			for _, m := range []*Machine{a, b} {
				if m.IsPrimary("s") {
					primaries++
					if m.Node() != rec.Node {
						t.Errorf("%s acts as primary but the record names %s", m.Node(), rec.Node)
					}
				}
			}
			if primaries != 1 {
				t.Fatalf("%d nodes act as primary, want 1 (record names %s)", primaries, rec.Node)
			}
			// Once b sees the real view, it agrees.
			b.SetView(all)
			drive(t, st, []*Machine{a, b}, pick)
			sa, _ := a.Status("s")
			sb, _ := b.Status("s")
			if sa.Primary != rec.Node || sb.Primary != rec.Node {
				t.Fatalf("a says %q, b says %q, record says %q", sa.Primary, sb.Primary, rec.Node)
			}
		})
	}
}

// TestStickyPrimary: a new view does not move a live primary, even when
// a higher-ranked provider joins; the primary writes itself into every
// candidate variable of the new round.
func first([]Op) int { return 0 }

func TestStickyPrimary(t *testing.T) {
	st := newStore()
	low, _ := NewMachine(MachineConfig{Node: "b", Services: []ServiceConfig{{Name: "s", Priority: 0}}})
	lkv := st.join(low, "s1")
	low.SetView(st.apply(Op{Kind: OpList, Key: low.keys.Members()}).List)
	low.SetSession("s1", lkv)
	drive(t, st, []*Machine{low}, first)
	if !low.IsPrimary("s") {
		t.Fatal("the only provider did not become primary")
	}
	high, _ := NewMachine(MachineConfig{Node: "a", Services: []ServiceConfig{{Name: "s", Priority: 9}}})
	hkv := st.join(high, "s2")
	view := st.apply(Op{Kind: OpList, Key: low.keys.Members()}).List
	for _, m := range []*Machine{low, high} {
		m.SetView(view)
		m.SetPrimaries(st.apply(Op{Kind: OpList, Key: low.keys.Primaries()}).List)
	}
	high.SetSession("s2", hkv)
	drive(t, st, []*Machine{low, high}, first)
	if !low.IsPrimary("s") || high.IsPrimary("s") {
		t.Fatalf("the live primary moved: b primary=%v, a primary=%v", low.IsPrimary("s"), high.IsPrimary("s"))
	}
	for _, n := range []string{"a", "b"} {
		c, err := DecodeCandidate(st.kvs[low.keys.Candidate("s", n)])
		if err != nil || c.Node != "b" || c.Round.Epoch != view.Revision {
			t.Errorf("%s's candidate variable = %+v (%v), want b in epoch %d", n, c, err, view.Revision)
		}
	}
	// The primary's session ends: its member record goes, and the other
	// provider takes over with a greater token.
	tok, _ := low.Token("s")
	st.del(low.keys.Member("b"))
	low.LoseSession()
	view = st.apply(Op{Kind: OpList, Key: low.keys.Members()}).List
	high.SetView(view)
	drive(t, st, []*Machine{low, high}, first)
	ntok, ok := high.Token("s")
	if !ok || ntok <= tok {
		t.Fatalf("after the primary left, a's token is %d (primary=%v), want above %d", ntok, ok, tok)
	}
}

func TestResignRanksLast(t *testing.T) {
	st := newStore()
	var ms []*Machine
	for i, n := range []string{"a", "b", "c"} {
		m, _ := NewMachine(MachineConfig{Node: n, Services: []ServiceConfig{{Name: "s", Priority: 3 - i}}})
		ms = append(ms, m)
	}
	kvs := make([]KV, len(ms))
	for i, m := range ms {
		kvs[i] = st.join(m, "s"+m.Node())
	}
	view := st.apply(Op{Kind: OpList, Key: ms[0].keys.Members()}).List
	for i, m := range ms {
		m.SetView(view)
		m.SetSession("s"+m.Node(), kvs[i])
	}
	drive(t, st, ms, first)
	if !ms[0].IsPrimary("s") {
		t.Fatal("a, the highest priority, should be primary")
	}
	if err := ms[1].Resign("s"); !errors.Is(err, ErrNotPrimary) {
		t.Fatalf("Resign by a non-primary = %v", err)
	}
	if err := ms[0].Resign("s"); err != nil {
		t.Fatal(err)
	}
	if ms[0].IsPrimary("s") {
		t.Fatal("a still acts as primary right after Resign")
	}
	for step := 0; step < 5; step++ {
		drive(t, st, ms, first)
		prims := st.apply(Op{Kind: OpList, Key: ms[0].keys.Primaries()}).List
		for _, m := range ms {
			m.SetPrimaries(prims)
			m.Advance(time.Time{}.Add(time.Duration(step) * time.Hour))
		}
	}
	if !ms[1].IsPrimary("s") {
		rec, _ := DecodePrimary(st.kvs[ms[0].keys.Primary("s")])
		t.Fatalf("after a resigned, the primary record is %+v; want b, the next in rank", rec)
	}
}

// TestResignRetriesWithBackoff: a resignation whose write fails is retried
// after a backoff, not at once, and completes when the store answers.
func TestResignRetriesWithBackoff(t *testing.T) {
	st := newStore()
	m, _ := NewMachine(MachineConfig{Node: "a", Services: []ServiceConfig{{Name: "s"}}, RetryMin: time.Second, RetryMax: time.Second})
	kv := st.join(m, "sa")
	m.SetView(st.apply(Op{Kind: OpList, Key: m.keys.Members()}).List)
	m.SetSession("sa", kv)
	drive(t, st, []*Machine{m}, first)
	if !m.IsPrimary("s") {
		t.Fatal("not primary")
	}
	t0 := time.Unix(1000, 0)
	m.Advance(t0)
	if err := m.Resign("s"); err != nil {
		t.Fatal(err)
	}
	reqs := m.Ready().Requests
	if len(reqs) != 1 {
		t.Fatalf("Resign issued %d requests, want 1", len(reqs))
	}
	m.Deliver(reqs[0].ID, OpResult{Err: ErrUnavailable})
	if r := m.Ready().Requests; len(r) != 0 {
		t.Fatalf("a failed resignation was retried at once: %d requests", len(r))
	}
	at, ok := m.NextDeadline()
	if !ok || !at.After(t0) {
		t.Fatalf("no retry deadline after the failure (%v, %v)", at, ok)
	}
	m.Advance(at)
	reqs = m.Ready().Requests
	if len(reqs) != 1 || reqs[0].Op.Key != m.keys.Primary("s") {
		t.Fatalf("after the backoff: %d requests, want the one retry", len(reqs))
	}
	m.Deliver(reqs[0].ID, st.apply(reqs[0].Op))
	if m.Resigning("s") {
		t.Fatal("still resigning after the write succeeded")
	}
}
