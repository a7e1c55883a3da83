package etcd

import (
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/concordha/concord/core"
)

// TestTxnManyOps runs 500 ops of every kind, most guarded, in one Txn
// against a server with --max-txn-ops 1024.
func TestTxnManyOps(t *testing.T) {
	srv := startServer(t)
	st := openStore(t, srv.Endpoints())
	ctx := ctxFor(t, time.Minute)
	const n = 500
	guard, err := st.Create(ctx, "/many/guard", []byte("g"))
	if err != nil {
		t.Fatal(err)
	}
	existing := make([]core.KV, n)
	for i := 0; i < n; i += 5 {
		if existing[i], err = st.Create(ctx, fmt.Sprintf("/many/cas/%03d", i), []byte("0")); err != nil {
			t.Fatal(err)
		}
		if existing[i+4], err = st.Create(ctx, fmt.Sprintf("/many/ro/%03d", i+4), []byte("r")); err != nil {
			t.Fatal(err)
		}
	}
	ops := make([]core.Op, n)
	want := make([]error, n)
	for i := range ops {
		key := fmt.Sprintf("/many/cas/%03d", i)
		switch i % 5 {
		case 0: // applies
			ops[i] = core.Op{Kind: core.OpCAS, Key: key, Value: []byte("1"), Version: existing[i].Version,
				Guards: []core.Guard{{Key: guard.Key, Revision: guard.Revision}}}
		case 1: // applies
			ops[i] = core.Op{Kind: core.OpCreate, Key: fmt.Sprintf("/many/new/%03d", i), Value: []byte(strconv.Itoa(i)),
				Guards: []core.Guard{{Key: guard.Key, Revision: guard.Revision}}}
		case 2: // a stale guard
			ops[i] = core.Op{Kind: core.OpCreate, Key: fmt.Sprintf("/many/new/%03d", i), Value: []byte("x"),
				Guards: []core.Guard{{Key: guard.Key, Revision: guard.Revision - 1}}}
			want[i] = core.ErrConflict
		case 3: // a CAS of a missing key
			ops[i] = core.Op{Kind: core.OpCAS, Key: key, Value: []byte("x"), Version: guard.Version}
			want[i] = core.ErrNotFound
		case 4: // a read
			ops[i] = core.Op{Kind: core.OpGet, Key: existing[i].Key}
		}
	}
	start := time.Now()
	res, err := st.Txn(ctx, ops)
	if err != nil {
		t.Fatalf("Txn of %d ops: %v", n, err)
	}
	t.Logf("Txn of %d ops took %v", n, time.Since(start))
	var rev int64
	for i, r := range res {
		if want[i] == nil && r.Err != nil || want[i] != nil && !errors.Is(r.Err, want[i]) {
			t.Fatalf("op %d (%v %q): err %v, want %v", i, ops[i].Kind, ops[i].Key, r.Err, want[i])
		}
		switch {
		case ops[i].Kind == core.OpGet:
			if w := existing[i]; r.KV.Key != w.Key || r.KV.Revision != w.Revision || string(r.KV.Value) != string(w.Value) {
				t.Fatalf("op %d: Get = %+v, want the value before the Txn %+v", i, r.KV, w)
			}
		case r.Err == nil:
			if rev == 0 {
				rev = r.KV.Revision
			}
			if r.KV.Revision != rev || r.KV.Version != rev {
				t.Fatalf("op %d: write at Revision %d Version %d, want every write of the Txn at %d", i, r.KV.Revision, r.KV.Version, rev)
			}
		}
	}
	snap, err := st.List(ctx, "/many/new/")
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.KVs) != n/5 {
		t.Errorf("List after the Txn: %d new keys, want %d", len(snap.KVs), n/5)
	}
}

// TestTxnGuardBudget checks MaxTxnOps against the server's own counting:
// a batch of MaxTxnOps ops with 7 guards each runs, and ops with more
// guards than the server's limit leaves are refused before sending.
func TestTxnGuardBudget(t *testing.T) {
	srv := startServer(t)
	st := openStore(t, srv.Endpoints())
	ctx := ctxFor(t, time.Minute)
	if got, want := st.MaxTxnOps(), testMaxTxnOps-8; got != want {
		t.Fatalf("MaxTxnOps() = %d, want %d", got, want)
	}
	guards := make([]core.Guard, maxGuards)
	for i := range guards {
		kv, err := st.Create(ctx, fmt.Sprintf("/budget/guard/%d", i), []byte("g"))
		if err != nil {
			t.Fatal(err)
		}
		guards[i] = core.Guard{Key: kv.Key, Revision: kv.Revision}
	}
	full := make([]core.Op, st.MaxTxnOps())
	for i := range full {
		full[i] = core.Op{Kind: core.OpCreate, Key: fmt.Sprintf("/budget/full/%04d", i), Guards: guards}
	}
	res, err := st.Txn(ctx, full)
	if err != nil {
		t.Fatalf("Txn of %d ops with %d guards each: %v", len(full), maxGuards, err)
	}
	for i, r := range res {
		if r.Err != nil {
			t.Fatalf("op %d: %v", i, r.Err)
		}
	}
	over := append([]core.Op(nil), full[:len(full)-1]...)
	over[0].Guards = append(append([]core.Guard(nil), guards...), guards[0], guards[1])
	if _, err := st.Txn(ctx, over); !errors.Is(err, core.ErrInvalidArgument) {
		t.Errorf("Txn whose op has %d guards in a batch of %d: %v, want ErrInvalidArgument", len(over[0].Guards), len(over), err)
	}
	if _, err := st.Txn(ctx, append(full, core.Op{Kind: core.OpGet, Key: "/budget/x"})); !errors.Is(err, core.ErrInvalidArgument) {
		t.Errorf("Txn of MaxTxnOps+1 ops: %v, want ErrInvalidArgument", err)
	}
}

// TestTxnServerCountsNestedConditions shows why MaxTxnOps keeps
// txnReserve: etcd refuses an outer transaction of n nested ones whose
// conditions exceed what n leaves of --max-txn-ops, even though n alone
// is within it.
func TestTxnServerCountsNestedConditions(t *testing.T) {
	srv := startServer(t)
	st := openStore(t, srv.Endpoints())
	ctx := ctxFor(t, time.Minute)
	build := func(n, conds int) []clientv3.Op {
		ops := make([]clientv3.Op, n)
		for i := range ops {
			key := fmt.Sprintf("/raw/%04d", i)
			cmps := make([]clientv3.Cmp, conds)
			for j := range cmps {
				cmps[j] = clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
			}
			ops[i] = clientv3.OpTxn(cmps, []clientv3.Op{clientv3.OpPut(key, "v")}, nil)
		}
		return ops
	}
	fits := build(testMaxTxnOps-txnReserve, txnReserve)
	if _, err := st.Client().Txn(ctx).Then(fits...).Commit(); err != nil {
		t.Fatalf("%d nested txns of %d conditions, with --max-txn-ops %d: %v", len(fits), txnReserve, testMaxTxnOps, err)
	}
	tooMany := build(testMaxTxnOps-txnReserve+1, txnReserve)
	_, err := st.Client().Txn(ctx).Then(tooMany...).Commit()
	if !errors.Is(rpctypes.Error(err), rpctypes.ErrTooManyOps) {
		t.Fatalf("%d nested txns of %d conditions, with --max-txn-ops %d: %v, want etcd's too many operations", len(tooMany), txnReserve, testMaxTxnOps, err)
	}
}
