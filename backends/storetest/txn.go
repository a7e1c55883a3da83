package storetest

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/concordha/concord/core"
)

var txnChecks = []namedCheck{
	{"TxnIndependentOps", checkTxnIndependentOps},
	{"TxnGuards", checkTxnGuards},
	{"TxnOneState", checkTxnOneState},
	{"TxnInvalidBatch", checkTxnInvalidBatch},
	{"TxnMaxOps", checkTxnMaxOps},
}

// txner returns the Txner of a new client, or skips the check.
func (c *check) txner() (core.Store, core.Txner) {
	c.t.Helper()
	st := c.client()
	tx, ok := st.(core.Txner)
	if !ok {
		c.t.Skip("the store does not implement core.Txner")
	}
	return st, tx
}

func (c *check) mustTxn(tx core.Txner, ops []core.Op) []core.OpResult {
	c.t.Helper()
	res, err := tx.Txn(c.ctx, ops)
	if err != nil {
		c.t.Fatalf("Txn of %d ops: %v", len(ops), err)
	}
	if len(res) != len(ops) {
		c.t.Fatalf("Txn of %d ops returned %d results", len(ops), len(res))
	}
	return res
}

// stale returns key's current record and a version it held before.
func (c *check) stale(st core.Store, key string) (current core.KV, stale int64) {
	c.t.Helper()
	first := c.mustCreate(st, key, "first")
	return c.mustCAS(st, key, "second", first.Version), first.Version
}

func wantErr(c *check, what string, got, want error) {
	c.t.Helper()
	switch {
	case want == nil && got != nil:
		c.t.Errorf("%s: err = %v, want success", what, got)
	case want != nil && !errors.Is(got, want):
		c.t.Errorf("%s: err = %v, want %v", what, got, want)
	}
}

// checkTxnIndependentOps: each op's condition decides for that op alone.
func checkTxnIndependentOps(c *check) {
	st, tx := c.txner()
	observer := c.client()
	a := c.mustCreate(st, c.key("a"), "a1")
	b, bStale := c.stale(st, c.key("b"))
	d := c.mustCreate(st, c.key("d"), "d1")
	g := c.mustCreate(st, c.key("g"), "g1")
	before := c.mustList(st, c.root).Revision
	ops := []core.Op{
		{Kind: core.OpCAS, Key: a.Key, Value: []byte("a2"), Version: a.Version},  // applies
		{Kind: core.OpCAS, Key: b.Key, Value: []byte("b-lost"), Version: bStale}, // ErrConflict
		{Kind: core.OpCreate, Key: c.key("c"), Value: []byte("c1")},              // applies
		{Kind: core.OpCreate, Key: d.Key, Value: []byte("d-again")},              // ErrExists
		{Kind: core.OpCAS, Key: c.key("e"), Value: []byte("e1"), Version: 1},     // ErrNotFound
		{Kind: core.OpGet, Key: g.Key},                                           // reads g
		{Kind: core.OpGet, Key: c.key("missing")},                                // ErrNotFound
		{Kind: core.OpList, Key: c.key("g")},                                     // lists g
	}
	res := c.mustTxn(tx, ops)
	wantErr(c, "Txn op 0, CAS with the right version", res[0].Err, nil)
	wantErr(c, "Txn op 1, CAS with a stale version", res[1].Err, core.ErrConflict)
	wantErr(c, "Txn op 2, Create of a new key", res[2].Err, nil)
	wantErr(c, "Txn op 3, Create of an existing key", res[3].Err, core.ErrExists)
	wantErr(c, "Txn op 4, CAS of a missing key", res[4].Err, core.ErrNotFound)
	wantErr(c, "Txn op 5, Get of an existing key", res[5].Err, nil)
	wantErr(c, "Txn op 6, Get of a missing key", res[6].Err, core.ErrNotFound)
	wantErr(c, "Txn op 7, List", res[7].Err, nil)
	if c.t.Failed() {
		c.t.FailNow()
	}
	c.wantKV("Txn CAS result", res[0].KV, a.Key, "a2")
	c.wantKV("Txn Create result", res[2].KV, c.key("c"), "c1")
	c.sameKV("Txn Get result", res[5].KV, g)
	if !sameContent(res[7].List.KVs, []core.KV{g}) || res[7].List.Err != nil {
		c.t.Errorf("Txn List(%q) = %s (Err %v), want %s", c.key("g"), fmtKeys(res[7].List.KVs), res[7].List.Err, fmtKV(g))
	}
	for _, i := range []int{0, 2} {
		if res[i].KV.Revision <= before {
			c.t.Errorf("Txn op %d wrote %q with Revision %d, want > %d, the revision before the Txn", i, res[i].KV.Key, res[i].KV.Revision, before)
		}
	}
	c.sameKV(fmt.Sprintf("Get(%q) after the Txn", a.Key), c.mustGet(observer, a.Key), res[0].KV)
	c.sameKV(fmt.Sprintf("Get(%q) after the Txn", b.Key), c.mustGet(observer, b.Key), b)
	c.sameKV(fmt.Sprintf("Get(%q) after the Txn", c.key("c")), c.mustGet(observer, c.key("c")), res[2].KV)
	c.sameKV(fmt.Sprintf("Get(%q) after the Txn", d.Key), c.mustGet(observer, d.Key), d)
	if _, err := observer.Get(c.ctx, c.key("e")); !errors.Is(err, core.ErrNotFound) {
		c.t.Errorf("Get(%q) after a failed CAS in a Txn: err = %v, want ErrNotFound", c.key("e"), err)
	}
}

func checkTxnGuards(c *check) {
	st, tx := c.txner()
	first := c.mustCreate(st, c.key("guard"), "first")
	g := c.mustCAS(st, first.Key, "second", first.Version)
	w := c.mustCreate(st, c.key("w"), "w1")
	ops := []core.Op{
		{Kind: core.OpCreate, Key: c.key("held"), Value: []byte("v"), Guards: []core.Guard{{Key: g.Key, Revision: g.Revision}}},
		{Kind: core.OpCreate, Key: c.key("stale"), Value: []byte("v"), Guards: []core.Guard{{Key: g.Key, Revision: first.Revision}}},
		{Kind: core.OpCreate, Key: c.key("absent"), Value: []byte("v"), Guards: []core.Guard{{Key: c.key("no-such-guard"), Revision: 1}}},
		{Kind: core.OpCAS, Key: w.Key, Value: []byte("w2"), Version: w.Version, Guards: []core.Guard{
			{Key: g.Key, Revision: g.Revision}, {Key: c.key("no-such-guard"), Revision: g.Revision},
		}},
	}
	res := c.mustTxn(tx, ops)
	wantErr(c, "Txn Create whose guard holds", res[0].Err, nil)
	wantErr(c, "Txn Create whose guard has a stale version", res[1].Err, core.ErrConflict)
	wantErr(c, "Txn Create whose guard key is missing", res[2].Err, core.ErrConflict)
	wantErr(c, "Txn CAS with one of two guards failing", res[3].Err, core.ErrConflict)
	if res[0].Err == nil {
		c.wantKV("Txn guarded Create", res[0].KV, c.key("held"), "v")
	}
	for _, k := range []string{c.key("stale"), c.key("absent")} {
		if _, err := st.Get(c.ctx, k); !errors.Is(err, core.ErrNotFound) {
			c.t.Errorf("Get(%q) after a Create whose guard failed: err = %v, want ErrNotFound", k, err)
		}
	}
	c.sameKV(fmt.Sprintf("Get(%q) after a CAS whose guard failed", w.Key), c.mustGet(st, w.Key), w)
	c.sameKV(fmt.Sprintf("Get(%q), the guard key, after the Txn", g.Key), c.mustGet(st, g.Key), g)

	// A guard taken on one incarnation of a key never holds for a later
	// one, even where the later one gets the same version again (a member
	// record in a new session).
	d, ok := st.(core.Deleter)
	if !ok {
		return
	}
	old := c.mustCreate(st, c.key("again"), "one")
	if err := d.DeleteVersion(c.ctx, old.Key, old.Version); err != nil {
		c.t.Fatalf("DeleteVersion(%q): %v", old.Key, err)
	}
	again := c.mustCreate(st, old.Key, "two")
	res = c.mustTxn(tx, []core.Op{
		{Kind: core.OpCreate, Key: c.key("by-old"), Value: []byte("v"), Guards: []core.Guard{{Key: old.Key, Revision: old.Revision}}},
		{Kind: core.OpCreate, Key: c.key("by-new"), Value: []byte("v"), Guards: []core.Guard{{Key: again.Key, Revision: again.Revision}}},
	})
	wantErr(c, "Txn Create guarded by a deleted incarnation of a key created again", res[0].Err, core.ErrConflict)
	wantErr(c, "Txn Create guarded by the current incarnation", res[1].Err, nil)
}

// checkTxnOneState: reads and conditions all see the state before the Txn,
// even a guard on a key another op of the same Txn writes.
func checkTxnOneState(c *check) {
	st, tx := c.txner()
	r := c.mustCreate(st, c.key("read/r"), "r1")
	k := c.mustCreate(st, c.key("write/k"), "k1")
	listed := c.mustList(st, c.key("read/"))
	res := c.mustTxn(tx, []core.Op{
		{Kind: core.OpCAS, Key: k.Key, Value: []byte("k2"), Version: k.Version},
		{Kind: core.OpGet, Key: r.Key},
		{Kind: core.OpList, Key: c.key("read/")},
		// Guarded by k's revision before the Txn, which op 0 changes.
		{Kind: core.OpCreate, Key: c.key("write/n"), Value: []byte("n1"), Guards: []core.Guard{{Key: k.Key, Revision: k.Revision}}},
	})
	wantErr(c, "Txn CAS", res[0].Err, nil)
	wantErr(c, "Txn Get", res[1].Err, nil)
	wantErr(c, "Txn Create guarded by the version before the Txn of a key the Txn writes", res[3].Err, nil)
	c.sameKV("Txn Get of a key the Txn does not write", res[1].KV, r)
	if !sameContent(res[2].List.KVs, listed.KVs) || res[2].List.Revision > listed.Revision {
		c.t.Errorf("Txn List(%q) = %s at Revision %d, want the state before the Txn: %s at Revision %d",
			c.key("read/"), fmtKeys(res[2].List.KVs), res[2].List.Revision, fmtKeys(listed.KVs), listed.Revision)
	}
	if res[0].Err == nil && res[3].Err == nil && res[3].KV.Revision <= listed.Revision {
		c.t.Errorf("Txn writes: Revision %d, want > %d", res[3].KV.Revision, listed.Revision)
	}
}

// checkTxnInvalidBatch: batches that write a key twice, or read a key they
// write, fail as a whole and apply nothing.
func checkTxnInvalidBatch(c *check) {
	st, tx := c.txner()
	k := c.mustCreate(st, c.key("k"), "k1")
	fresh := c.key("fresh")
	batches := map[string][]core.Op{
		"two writes of one key": {
			{Kind: core.OpCreate, Key: fresh, Value: []byte("v")},
			{Kind: core.OpCAS, Key: k.Key, Value: []byte("k2"), Version: k.Version},
			{Kind: core.OpCAS, Key: k.Key, Value: []byte("k3"), Version: k.Version},
		},
		"two creates of one key": {
			{Kind: core.OpCreate, Key: c.key("twice"), Value: []byte("1")},
			{Kind: core.OpCreate, Key: c.key("twice"), Value: []byte("2")},
			{Kind: core.OpCreate, Key: fresh, Value: []byte("v")},
		},
		"a get of a written key": {
			{Kind: core.OpCreate, Key: fresh, Value: []byte("v")},
			{Kind: core.OpGet, Key: k.Key},
			{Kind: core.OpCAS, Key: k.Key, Value: []byte("k2"), Version: k.Version},
		},
		"a list over a written key": {
			{Kind: core.OpList, Key: c.root},
			{Kind: core.OpCreate, Key: fresh, Value: []byte("v")},
		},
	}
	for name, ops := range batches {
		res, err := tx.Txn(c.ctx, ops)
		if !errors.Is(err, core.ErrInvalidArgument) {
			c.t.Errorf("Txn with %s: err = %v (results %v), want ErrInvalidArgument", name, err, res)
		}
		if _, err := st.Get(c.ctx, fresh); !errors.Is(err, core.ErrNotFound) {
			c.t.Fatalf("Txn with %s was refused, yet %q exists: err = %v", name, fresh, err)
		}
		if _, err := st.Get(c.ctx, c.key("twice")); !errors.Is(err, core.ErrNotFound) {
			c.t.Fatalf("Txn with %s was refused, yet %q exists: err = %v", name, c.key("twice"), err)
		}
		c.sameKV(fmt.Sprintf("Get(%q) after a refused Txn with %s", k.Key, name), c.mustGet(st, k.Key), k)
	}
}

func checkTxnMaxOps(c *check) {
	st, tx := c.txner()
	maxOps := tx.MaxTxnOps()
	if maxOps <= 0 {
		c.t.Fatalf("MaxTxnOps() = %d, want > 0", maxOps)
	}
	const limit = 1024 // larger batches would only make the check slow
	if maxOps >= limit {
		c.t.Logf("MaxTxnOps() = %d: checking a batch of %d and not the limit itself", maxOps, limit)
	}
	creates := func(tag string, n int) []core.Op {
		ops := make([]core.Op, n)
		for i := range ops {
			ops[i] = core.Op{Kind: core.OpCreate, Key: c.key(tag, "/", strconv.Itoa(i)), Value: []byte("v")}
		}
		return ops
	}
	if maxOps < limit {
		res, err := tx.Txn(c.ctx, creates("over", maxOps+1))
		if !errors.Is(err, core.ErrInvalidArgument) {
			c.t.Errorf("Txn of MaxTxnOps()+1 = %d ops: err = %v (%d results), want ErrInvalidArgument", maxOps+1, err, len(res))
		}
		if snap := c.mustList(st, c.key("over/")); len(snap.KVs) != 0 {
			c.t.Errorf("Txn of too many ops was refused, yet it wrote %d keys: %s", len(snap.KVs), fmtKeys(snap.KVs))
		}
	}
	n := min(maxOps, limit)
	res := c.mustTxn(tx, creates("full", n))
	for i, r := range res {
		if r.Err != nil {
			c.t.Fatalf("Txn of %d creates: op %d: %v", n, i, r.Err)
		}
	}
	if snap := c.mustList(st, c.key("full/")); len(snap.KVs) != n {
		c.t.Errorf("Txn of %d creates: List shows %d keys", n, len(snap.KVs))
	}
}
