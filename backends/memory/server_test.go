package memory

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/concordha/concord/core"
)

func TestExpireDueManual(t *testing.T) {
	srv, clk := manual(t, Options{ManualExpiry: true})
	var ids []string
	for _, ttl := range []time.Duration{5 * time.Second, 10 * time.Second, 5 * time.Second} {
		id, err := srv.Grant("sim", ttl)
		noErr(t, "Grant", err)
		ids = append(ids, id)
	}
	for i, id := range ids {
		_, err := srv.Register("sim", id, fmt.Sprintf("/k/%d", i), nil)
		noErr(t, "Register", err)
	}
	if got := srv.ExpireDue(); len(got) != 0 {
		t.Fatalf("ExpireDue at t0 = %v", got)
	}
	clk.Advance(5*time.Second - 1)
	if got := srv.ExpireDue(); len(got) != 0 {
		t.Fatalf("ExpireDue 1ns before the first deadline = %v", got)
	}
	noErr(t, "KeepAlive of the 10s session", srv.KeepAlive("sim", ids[1])) // deadline t0+15s-1ns
	clk.Advance(1)
	// Without ExpireDue, sessions past their deadline are not alive but
	// their keys stay.
	if srv.SessionAlive(ids[0]) || !srv.SessionAlive(ids[1]) {
		t.Fatalf("SessionAlive at t0+5s: %v %v, want false true", srv.SessionAlive(ids[0]), srv.SessionAlive(ids[1]))
	}
	wantIs(t, "KeepAlive past the deadline", srv.KeepAlive("sim", ids[0]), core.ErrNotFound)
	_, err := srv.Register("sim", ids[0], "/late", nil)
	wantIs(t, "Register past the deadline", err, core.ErrSessionLost)
	if n := len(srv.Snapshot("/k/").KVs); n != 3 {
		t.Fatalf("%d keys before ExpireDue, want 3", n)
	}
	if got, want := srv.ExpireDue(), []string{ids[0], ids[2]}; !slices.Equal(got, want) {
		t.Fatalf("ExpireDue at t0+5s = %v, want %v", got, want)
	}
	if got := keysOf(srv.Snapshot("/k/")); !slices.Equal(got, []string{"/k/1"}) {
		t.Fatalf("keys after ExpireDue = %v, want [/k/1]", got)
	}
	clk.Set(t0.Add(15*time.Second - 2))
	if got := srv.ExpireDue(); len(got) != 0 {
		t.Fatalf("ExpireDue before the renewed deadline = %v", got)
	}
	clk.Advance(1)
	if got := srv.ExpireDue(); !slices.Equal(got, []string{ids[1]}) {
		t.Fatalf("ExpireDue at the renewed deadline = %v, want [%s]", got, ids[1])
	}
	wantIs(t, "KeepAlive of an expired session", srv.KeepAlive("sim", ids[1]), core.ErrNotFound)
	wantIs(t, "Revoke of an expired session", srv.Revoke("sim", ids[1]), core.ErrNotFound)
	_, err = srv.Grant("sim", 0)
	wantIs(t, "Grant with TTL 0", err, core.ErrInvalidArgument)
}

func TestReaper(t *testing.T) {
	srv, clk := manual(t, Options{})
	var (
		mu      sync.Mutex // the reaper reports from its own goroutine
		changes []Change
	)
	srv.OnChange(func(ch Change) {
		mu.Lock()
		defer mu.Unlock()
		changes = append(changes, ch)
	})
	id, err := srv.Grant("sim", 10*time.Second)
	noErr(t, "Grant", err)
	_, err = srv.Register("sim", id, "/k", nil)
	noErr(t, "Register", err)
	waitTimer(t, clk, t0.Add(10*time.Second))
	clk.Advance(10*time.Second - 1)
	if len(srv.Snapshot("/").KVs) != 1 {
		t.Fatal("key gone before the deadline")
	}
	clk.Advance(1)
	eventually(t, "the reaper expires the session", func() error {
		if n := len(srv.Snapshot("/").KVs); n != 0 {
			return fmt.Errorf("%d keys left", n)
		}
		return nil
	})
	mu.Lock()
	last := changes[len(changes)-1]
	mu.Unlock()
	if !last.Deleted || last.Key != "/k" || last.Client != "" || last.Session != id {
		t.Fatalf("last change %+v, want the deletion of /k by expiry of %s with no client", last, id)
	}
	// The reaper follows new sessions.
	id2, err := srv.Grant("sim", time.Second)
	noErr(t, "Grant", err)
	waitTimer(t, clk, clk.Now().Add(time.Second))
	clk.Advance(time.Second)
	eventually(t, "the reaper expires the second session", func() error {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		if _, ok := srv.leases[id2]; ok {
			return errors.New("still there")
		}
		return nil
	})
}

func TestOnChange(t *testing.T) {
	srv, _ := manual(t, Options{ManualExpiry: true})
	var changes []Change
	cancel := srv.OnChange(func(ch Change) { changes = append(changes, ch) })
	second := 0
	cancel2 := srv.OnChange(func(Change) { second++ })

	a := srv.Do("c1", core.Op{Kind: core.OpCreate, Key: "/a", Value: []byte("1")})
	b := srv.Do("c1", core.Op{Kind: core.OpCAS, Key: "/a", Value: []byte("2"), Version: a.KV.Version})
	srv.Do("c1", core.Op{Kind: core.OpCAS, Key: "/a", Value: []byte("x"), Version: a.KV.Version}) // conflict: no change
	id, _ := srv.Grant("c2", time.Minute)
	_, err := srv.Register("c2", id, "/s/y", []byte("y"))
	noErr(t, "Register", err)
	_, err = srv.Register("c2", id, "/s/x", []byte("x"))
	noErr(t, "Register", err)
	_, err = srv.Txn("c3", []core.Op{
		{Kind: core.OpCreate, Key: "/t/2", Value: []byte("t2")},
		{Kind: core.OpCreate, Key: "/a", Value: []byte("exists")}, // fails: no change
		{Kind: core.OpCreate, Key: "/t/1", Value: []byte("t1")},
	})
	noErr(t, "Txn", err)
	noErr(t, "Revoke", srv.Revoke("c4", id))
	cancel2()

	want := []Change{
		{Revision: 1, Key: "/a", KV: a.KV, Client: "c1"},
		{Revision: 2, Key: "/a", Prev: a.KV, KV: b.KV, Client: "c1"},
		{Revision: 3, Key: "/s/y", KV: core.KV{Key: "/s/y", Value: []byte("y"), Version: 1, Revision: 3}, Client: "c2", Session: id},
		{Revision: 4, Key: "/s/x", KV: core.KV{Key: "/s/x", Value: []byte("x"), Version: 1, Revision: 4}, Client: "c2", Session: id},
		{Revision: 5, Key: "/t/2", KV: core.KV{Key: "/t/2", Value: []byte("t2"), Version: 1, Revision: 5}, Client: "c3"},
		{Revision: 6, Key: "/t/1", KV: core.KV{Key: "/t/1", Value: []byte("t1"), Version: 1, Revision: 6}, Client: "c3"},
		// A session's keys go in key order.
		{Revision: 7, Key: "/s/x", Deleted: true, Prev: core.KV{Key: "/s/x", Value: []byte("x"), Version: 1, Revision: 4}, Client: "c4", Session: id},
		{Revision: 8, Key: "/s/y", Deleted: true, Prev: core.KV{Key: "/s/y", Value: []byte("y"), Version: 1, Revision: 3}, Client: "c4", Session: id},
	}
	if len(changes) != len(want) {
		t.Fatalf("%d changes, want %d: %+v", len(changes), len(want), changes)
	}
	for i := range want {
		if !sameChange(changes[i], want[i]) {
			t.Errorf("change %d = %+v, want %+v", i, changes[i], want[i])
		}
	}
	if second != len(want) {
		t.Errorf("second observer saw %d changes, want %d", second, len(want))
	}
	if srv.Revision() != 8 {
		t.Errorf("Revision() = %d, want 8", srv.Revision())
	}
	// Observers get copies.
	changes[0].KV.Value[0] = 'X'
	if r := srv.Do("c1", core.Op{Kind: core.OpGet, Key: "/a"}); string(r.KV.Value) != "2" {
		t.Fatalf("an observer's copy aliased the store: /a = %q", r.KV.Value)
	}
	cancel()
	cancel()
	srv.Do("c1", core.Op{Kind: core.OpCreate, Key: "/after"})
	if len(changes) != len(want) {
		t.Fatalf("observer called after cancel")
	}
}

func sameChange(a, b Change) bool {
	kvEq := func(x, y core.KV) bool {
		return x.Key == y.Key && string(x.Value) == string(y.Value) && x.Version == y.Version && x.Revision == y.Revision
	}
	return a.Revision == b.Revision && a.Key == b.Key && a.Deleted == b.Deleted && a.Client == b.Client &&
		a.Session == b.Session && kvEq(a.Prev, b.Prev) && kvEq(a.KV, b.KV)
}

func TestSnapshotRevisionExact(t *testing.T) {
	srv, _ := manual(t, Options{ManualExpiry: true})
	if got := srv.Snapshot("/a/"); got.Revision != 0 || len(got.KVs) != 0 {
		t.Fatalf("Snapshot of a prefix never written = %+v, want revision 0 and no keys", got)
	}
	x := srv.Do("c", core.Op{Kind: core.OpCreate, Key: "/a/x"}).KV
	srv.Do("c", core.Op{Kind: core.OpCreate, Key: "/b/y"})
	srv.Do("c", core.Op{Kind: core.OpCreate, Key: "/a"}) // not under /a/
	if got := srv.Snapshot("/a/").Revision; got != x.Revision {
		t.Fatalf("Snapshot(/a/).Revision = %d, want %d, that of /a/x", got, x.Revision)
	}
	id, _ := srv.Grant("c", time.Minute)
	z, err := srv.Register("c", id, "/a/z", nil)
	noErr(t, "Register", err)
	if got := srv.Snapshot("/a/").Revision; got != z.Revision {
		t.Fatalf("Snapshot(/a/).Revision = %d, want %d, that of /a/z", got, z.Revision)
	}
	noErr(t, "Revoke", srv.Revoke("c", id))
	deletedAt := srv.Revision()
	srv.Do("c", core.Op{Kind: core.OpCreate, Key: "/b/later"})
	for range 2 {
		if got := srv.Snapshot("/a/"); got.Revision != deletedAt || !slices.Equal(keysOf(got), []string{"/a/x"}) {
			t.Fatalf("Snapshot(/a/) after the deletion of /a/z = rev %d %v, want rev %d [/a/x]", got.Revision, keysOf(got), deletedAt)
		}
	}
	if got := srv.Snapshot("/a/z").Revision; got != deletedAt {
		t.Fatalf("Snapshot(/a/z) of a deleted key: revision %d, want %d", got, deletedAt)
	}
	// Re-creating the key replaces its tombstone.
	id2, _ := srv.Grant("c", time.Minute)
	z2, err := srv.Register("c", id2, "/a/z", nil)
	noErr(t, "Register again", err)
	if z2.Version != 1 || srv.Snapshot("/a/").Revision != z2.Revision {
		t.Fatalf("re-created /a/z: %+v, snapshot revision %d", z2, srv.Snapshot("/a/").Revision)
	}
	if l := srv.Do("c", core.Op{Kind: core.OpList, Key: "/a/"}).List; l.Revision != z2.Revision {
		t.Fatalf("Do(OpList) revision %d, want %d", l.Revision, z2.Revision)
	}
}

func TestServerClose(t *testing.T) {
	ctx := testCtx(t)
	srv := New(Options{})
	c := srv.Client("c")
	defer c.Close()
	s, err := c.NewSession(ctx, core.SessionOptions{TTL: time.Minute})
	noErr(t, "NewSession", err)
	_, err = s.Register(ctx, "/k", nil)
	noErr(t, "Register", err)
	w, err := c.Watch(ctx, "/")
	noErr(t, "Watch", err)
	hungCall := make(chan error, 1)
	srv.SetHung(true)
	go func() {
		_, err := c.Get(ctx, "/k")
		hungCall <- err
	}()
	quiet(t, hungCall, 10*time.Millisecond, "Get while hung")

	srv.Close()
	srv.Close()
	wantIs(t, "a call hung across Close", recv(t, hungCall, "hung Get"), core.ErrClosed)
	last := drain(t, w, "watch after server Close")
	if last.Err != core.ErrClosed {
		t.Fatalf("last snapshot of a watch after server Close: Err = %v, want core.ErrClosed", last.Err)
	}
	waitDone(t, s, "server Close")
	wantIs(t, "session Err after server Close", s.Err(), core.ErrSessionLost)
	noErr(t, "Session.Close after server Close", s.Close(ctx))
	if n := len(srv.Snapshot("/").KVs); n != 0 {
		t.Fatalf("%d keys of ended sessions left after Close", n)
	}
	_, err = c.Get(ctx, "/k")
	wantIs(t, "Get after server Close", err, core.ErrClosed)
	_, err = srv.Client("late").List(ctx, "/")
	wantIs(t, "List of a client made after Close", err, core.ErrClosed)
	wantIs(t, "Do after Close", srv.Do("c", core.Op{Kind: core.OpGet, Key: "/k"}).Err, core.ErrClosed)
	_, err = srv.Grant("c", time.Second)
	wantIs(t, "Grant after Close", err, core.ErrClosed)
	_, err = c.NewSession(ctx, core.SessionOptions{TTL: time.Second})
	wantIs(t, "NewSession after Close", err, core.ErrClosed)
	_, err = c.Watch(ctx, "/")
	wantIs(t, "Watch after Close", err, core.ErrClosed)
}

func TestClientClose(t *testing.T) {
	ctx := testCtx(t)
	srv, clk := manual(t, Options{ManualExpiry: true})
	c, other := srv.Client("c"), srv.Client("other")
	defer other.Close()
	s, err := c.NewSession(ctx, core.SessionOptions{TTL: 10 * time.Second})
	noErr(t, "NewSession", err)
	_, err = s.Register(ctx, "/k", nil)
	noErr(t, "Register", err)
	w, err := c.Watch(ctx, "/")
	noErr(t, "Watch", err)
	ow, err := other.Watch(ctx, "/")
	noErr(t, "other: Watch", err)

	noErr(t, "Close", c.Close())
	noErr(t, "Close again", c.Close())
	if !isDone(s) {
		t.Fatal("session not done when Client.Close returned")
	}
	wantIs(t, "session Err", s.Err(), core.ErrSessionLost)
	wantIs(t, "last snapshot", drain(t, w, "watch after Client.Close").Err, core.ErrClosed)
	_, err = c.Get(ctx, "/k")
	wantIs(t, "Get after Client.Close", err, core.ErrClosed)
	_, err = s.Register(ctx, "/k2", nil)
	wantIs(t, "Register after Client.Close", err, core.ErrSessionLost)
	noErr(t, "Session.Close after Client.Close", s.Close(ctx))

	// Not revoked: the server keeps it until its TTL passes.
	if !srv.SessionAlive(s.ID()) {
		t.Fatal("Client.Close revoked the session")
	}
	_, err = other.Get(ctx, "/k")
	noErr(t, "other: Get before expiry", err)
	clk.Advance(10 * time.Second)
	if got := srv.ExpireDue(); !slices.Equal(got, []string{s.ID()}) {
		t.Fatalf("ExpireDue = %v, want [%s]", got, s.ID())
	}
	_, err = other.Get(ctx, "/k")
	wantIs(t, "other: Get after expiry", err, core.ErrNotFound)
	for {
		snap := recv(t, ow, "other's watch")
		if snap.Err != nil {
			t.Fatalf("other's watch ended with its peer's client: %v", snap.Err)
		}
		if len(snap.KVs) == 0 {
			break // the expiry showed
		}
	}
}

func TestDo(t *testing.T) {
	srv, _ := manual(t, Options{ManualExpiry: true})
	r := srv.Do("c", core.Op{Kind: core.OpCreate, Key: "/a", Value: []byte("1")})
	noErr(t, "Do create", r.Err)
	if r.KV.Version != 1 || r.KV.Revision != 1 {
		t.Fatalf("Do create = %+v, want version 1 revision 1", r.KV)
	}
	wantIs(t, "Do create again", srv.Do("c", core.Op{Kind: core.OpCreate, Key: "/a"}).Err, core.ErrExists)
	wantIs(t, "Do CAS stale", srv.Do("c", core.Op{Kind: core.OpCAS, Key: "/a", Version: 7}).Err, core.ErrConflict)
	wantIs(t, "Do CAS missing", srv.Do("c", core.Op{Kind: core.OpCAS, Key: "/b", Version: 1}).Err, core.ErrNotFound)
	wantIs(t, "Do get missing", srv.Do("c", core.Op{Kind: core.OpGet, Key: "/b"}).Err, core.ErrNotFound)
	g := srv.Do("c", core.Op{Kind: core.OpCreate, Key: "/g"}).KV
	wantIs(t, "Do create with a failing guard",
		srv.Do("c", core.Op{Kind: core.OpCreate, Key: "/b", Guards: []core.Guard{{Key: "/g", Revision: g.Revision + 1}}}).Err, core.ErrConflict)
	wantIs(t, "Do CAS with a guard on a missing key",
		srv.Do("c", core.Op{Kind: core.OpCAS, Key: "/a", Version: 1, Guards: []core.Guard{{Key: "/none", Revision: 1}}}).Err, core.ErrConflict)
	r = srv.Do("c", core.Op{Kind: core.OpCAS, Key: "/a", Value: []byte("2"), Version: 1, Guards: []core.Guard{{Key: "/g", Revision: g.Revision}}})
	noErr(t, "Do CAS with a holding guard", r.Err)
	if r.KV.Version != 2 || string(r.KV.Value) != "2" {
		t.Fatalf("Do CAS = %+v", r.KV)
	}
	l := srv.Do("c", core.Op{Kind: core.OpList, Key: "/"})
	if !slices.Equal(keysOf(l.List), []string{"/a", "/g"}) || l.List.Revision != r.KV.Revision {
		t.Fatalf("Do list = %v rev %d", keysOf(l.List), l.List.Revision)
	}
	if all := srv.Do("c", core.Op{Kind: core.OpList}); len(all.List.KVs) != 2 {
		t.Fatalf("Do list of the empty prefix = %v, want every key", keysOf(all.List))
	}
	for _, op := range []core.Op{{Kind: 0, Key: "/a"}, {Kind: 99, Key: "/a"}, {Kind: core.OpGet}, {Kind: core.OpCreate},
		{Kind: core.OpCAS}, {Kind: core.OpCreate, Key: "/x", Guards: []core.Guard{{}}}} {
		wantIs(t, fmt.Sprintf("Do(%+v)", op), srv.Do("c", op).Err, core.ErrInvalidArgument)
	}
}

func TestTxnRevisionsAndLimits(t *testing.T) {
	ctx := testCtx(t)
	srv, _ := manual(t, Options{ManualExpiry: true, MaxTxnOps: 3})
	c := srv.Client("c")
	defer c.Close()
	if c.MaxTxnOps() != 3 {
		t.Fatalf("MaxTxnOps() = %d, want 3", c.MaxTxnOps())
	}
	ops := []core.Op{
		{Kind: core.OpCreate, Key: "/c"},
		{Kind: core.OpCreate, Key: "/a"},
		{Kind: core.OpCreate, Key: "/b"},
	}
	res, err := c.Txn(ctx, ops)
	noErr(t, "Txn", err)
	for i, r := range res {
		if r.Err != nil || r.KV.Revision != int64(i+1) || r.KV.Key != ops[i].Key {
			t.Fatalf("Txn result %d = %+v, want %s at revision %d (consecutive, in op order)", i, r, ops[i].Key, i+1)
		}
	}
	_, err = c.Txn(ctx, append(ops, core.Op{Kind: core.OpGet, Key: "/x"}))
	wantIs(t, "Txn of 4 ops, MaxTxnOps 3", err, core.ErrInvalidArgument)
	_, err = srv.Txn("c", make([]core.Op, 4))
	wantIs(t, "Server.Txn of 4 ops", err, core.ErrInvalidArgument)
	_, err = c.Txn(ctx, []core.Op{{Kind: core.OpGet, Key: ""}})
	wantIs(t, "Txn with an empty key", err, core.ErrInvalidArgument)
	_, err = c.Txn(ctx, []core.Op{{Kind: 42, Key: "/a"}})
	wantIs(t, "Txn with an unknown kind", err, core.ErrInvalidArgument)
	res, err = c.Txn(ctx, nil)
	if err != nil || len(res) != 0 {
		t.Fatalf("empty Txn = %v, %v; want no results and no error", res, err)
	}
	if srv.Revision() != 3 {
		t.Fatalf("Revision() = %d after refused batches, want 3", srv.Revision())
	}
	neg := New(Options{ManualExpiry: true, MaxTxnOps: -1})
	defer neg.Close()
	if neg.Client("c").MaxTxnOps() != DefaultMaxTxnOps {
		t.Fatal("negative MaxTxnOps not defaulted")
	}
}

func TestRegisterSim(t *testing.T) {
	srv, _ := manual(t, Options{ManualExpiry: true})
	id, err := srv.Grant("sim", time.Minute)
	noErr(t, "Grant", err)
	kv, err := srv.Register("sim", id, "/k", []byte("v"))
	noErr(t, "Register", err)
	if kv.Version != 1 || kv.Revision != 1 || string(kv.Value) != "v" {
		t.Fatalf("Register = %+v", kv)
	}
	_, err = srv.Register("sim", id, "/k", nil)
	wantIs(t, "Register of an existing key", err, core.ErrExists)
	srv.Do("sim", core.Op{Kind: core.OpCreate, Key: "/plain"})
	_, err = srv.Register("sim", id, "/plain", nil)
	wantIs(t, "Register of a plain key", err, core.ErrExists)
	_, err = srv.Register("sim", "no-such", "/other", nil)
	wantIs(t, "Register in an unknown session", err, core.ErrSessionLost)
	_, err = srv.Register("sim", id, "", nil)
	wantIs(t, "Register of an empty key", err, core.ErrInvalidArgument)
	// A registered key may be CAS'd and stays bound to its session.
	r := srv.Do("sim", core.Op{Kind: core.OpCAS, Key: "/k", Value: []byte("v2"), Version: 1})
	noErr(t, "CAS of a registered key", r.Err)
	noErr(t, "Revoke", srv.Revoke("sim", id))
	if got := keysOf(srv.Snapshot("/")); !slices.Equal(got, []string{"/plain"}) {
		t.Fatalf("keys after Revoke = %v, want [/plain]", got)
	}
}

// TestDeterministicIDs: two servers driven alike hand out the same ids,
// which sort in creation order.
func TestDeterministicIDs(t *testing.T) {
	run := func() []string {
		srv, _ := manual(t, Options{ManualExpiry: true})
		var ids []string
		for i := range 12 {
			id, err := srv.Grant("sim", time.Duration(i+1)*time.Second)
			noErr(t, "Grant", err)
			ids = append(ids, id)
			if i%3 == 0 {
				noErr(t, "Revoke", srv.Revoke("sim", id))
			}
		}
		return ids
	}
	a, b := run(), run()
	if !slices.Equal(a, b) {
		t.Fatalf("ids differ between identical runs: %v vs %v", a, b)
	}
	if !slices.IsSorted(a) || len(slices.Compact(slices.Clone(a))) != len(a) {
		t.Fatalf("ids %v are not unique and in creation order", a)
	}
}

func TestValuesAreCopied(t *testing.T) {
	ctx := testCtx(t)
	srv, _ := manual(t, Options{ManualExpiry: true})
	c := srv.Client("c")
	defer c.Close()
	in := []byte("abc")
	kv, err := c.Create(ctx, "/k", in)
	noErr(t, "Create", err)
	in[0] = 'X'
	kv.Value[1] = 'Y'
	got, err := c.Get(ctx, "/k")
	noErr(t, "Get", err)
	got.Value[2] = 'Z'
	snap, err := c.List(ctx, "/")
	noErr(t, "List", err)
	if string(snap.KVs[0].Value) != "abc" {
		t.Fatalf("stored value = %q, want abc: the store aliases callers' slices", snap.KVs[0].Value)
	}
}

func TestWatchKeepsNewest(t *testing.T) {
	ctx := testCtx(t)
	srv, _ := manual(t, Options{ManualExpiry: true})
	c := srv.Client("c")
	defer c.Close()
	wctx, cancel := context.WithCancel(ctx)
	w, err := c.Watch(wctx, "/p/")
	noErr(t, "Watch", err)
	if cap(w) != 1 {
		t.Fatalf("watch channel capacity %d, want 1", cap(w))
	}
	first := recv(t, w, "first snapshot")
	if first.Revision != 0 || len(first.KVs) != 0 {
		t.Fatalf("first snapshot of an empty prefix = %+v", first)
	}
	var last core.KV
	for i := range 50 {
		last = srv.Do("c", core.Op{Kind: core.OpCreate, Key: fmt.Sprintf("/p/%02d", i)}).KV
		srv.Do("c", core.Op{Kind: core.OpCreate, Key: fmt.Sprintf("/q/%02d", i)})
	}
	prev := first.Revision
	for {
		snap := recv(t, w, "snapshot after the writes")
		if snap.Revision <= prev {
			t.Fatalf("revision %d after %d", snap.Revision, prev)
		}
		prev = snap.Revision
		if snap.Revision == last.Revision {
			if len(snap.KVs) != 50 {
				t.Fatalf("snapshot at the last revision holds %d keys, want 50", len(snap.KVs))
			}
			break
		}
	}
	cancel()
	if snap := drain(t, w, "watch after cancel"); snap.Err != nil {
		t.Fatalf("snapshot with Err %v after cancel", snap.Err)
	}
}

// TestNoPanics feeds odd inputs to every entry point.
func TestNoPanics(t *testing.T) {
	ctx := testCtx(t)
	srv, _ := manual(t, Options{ManualExpiry: true})
	c := srv.Client("")
	defer c.Close()
	var nilClient *Client
	var zero Client
	var nilCtx context.Context // a nil context is one of the odd inputs
	for name, cl := range map[string]*Client{"nil": nilClient, "zero": &zero, "real": c} {
		_, err := cl.Get(nilCtx, "/k")
		if err == nil {
			t.Errorf("%s client: Get with a nil context: no error", name)
		}
		_, _ = cl.List(ctx, "")
		_, _ = cl.Create(ctx, "/k", nil)
		_, _ = cl.CompareAndSwap(ctx, "/k", nil, -1)
		_ = cl.DeleteVersion(ctx, "/k", -1)
		_ = cl.DeleteVersion(nilCtx, "", 0)
		_, _ = cl.Txn(ctx, []core.Op{{}, {Kind: core.OpList}})
		_, _ = cl.Txn(nilCtx, nil)
		_ = cl.ExpireSession(ctx, "")
		_ = cl.MaxTxnOps()
		_ = cl.Name()
		if w, err := cl.Watch(nilCtx, ""); err == nil {
			t.Errorf("%s client: Watch with a nil context: channel %v, no error", name, w)
		}
		if s, err := cl.NewSession(ctx, core.SessionOptions{TTL: -1}); err == nil {
			_ = s.Close(ctx)
			t.Errorf("%s client: NewSession with a negative TTL: no error", name)
		}
		if s, err := cl.NewSession(ctx, core.SessionOptions{TTL: 1}); err == nil {
			_, _ = s.Register(nilCtx, "/r", nil)
			_ = s.Close(nilCtx)
		}
		_ = cl.Close()
	}
	srv.Do("", core.Op{})
	_, _ = srv.Txn("", []core.Op{{Kind: core.OpCAS, Key: "/k", Guards: []core.Guard{{Key: "/k", Revision: -5}}}})
	_, _ = srv.Grant("", -time.Second)
	_ = srv.KeepAlive("", "")
	_, _ = srv.Register("", "", "/x", nil)
	_ = srv.Revoke("", "")
	_ = srv.DeleteVersion("", "", 0)
	_ = srv.DeleteVersion("", "/k", -1)
	_ = srv.ExpireSession("")
	srv.OnChange(nil)()
	srv.InjectFault(Fault{Times: -3})()
	srv.SetLatency("x", -time.Second)
	srv.Isolate("", true)
	srv.Isolate("", false)
	_ = srv.SessionAlive("")
	_ = srv.Snapshot("")
}

// TestDeleteVersion: the synchronous DeleteVersion and the Client's agree,
// report the deletion to observers and watches, and unbind a registered
// key from its session.
func TestDeleteVersion(t *testing.T) {
	ctx := testCtx(t)
	srv, _ := manual(t, Options{ManualExpiry: true})
	var changes []Change
	defer srv.OnChange(func(ch Change) { changes = append(changes, ch) })()
	c := srv.Client("c")
	defer c.Close()
	w, err := c.Watch(ctx, "/d/")
	noErr(t, "Watch", err)
	recv(t, w, "first snapshot")

	a := srv.Do("x", core.Op{Kind: core.OpCreate, Key: "/d/a", Value: []byte("1")}).KV
	wantIs(t, "DeleteVersion of a missing key", srv.DeleteVersion("c", "/d/none", 1), core.ErrNotFound)
	wantIs(t, "DeleteVersion at another version", srv.DeleteVersion("c", a.Key, a.Version+1), core.ErrConflict)
	wantIs(t, "DeleteVersion of the empty key", srv.DeleteVersion("c", "", 1), core.ErrInvalidArgument)
	wantIs(t, "Client.DeleteVersion of the empty key", c.DeleteVersion(ctx, "", 1), core.ErrInvalidArgument)
	if srv.Revision() != a.Revision || len(changes) != 1 {
		t.Fatalf("refused deletes wrote: revision %d (want %d), %d changes (want 1)", srv.Revision(), a.Revision, len(changes))
	}
	noErr(t, "DeleteVersion", srv.DeleteVersion("c", a.Key, a.Version))
	want := Change{Revision: a.Revision + 1, Key: a.Key, Deleted: true, Prev: a, Client: "c"}
	if len(changes) != 2 || !sameChange(changes[1], want) {
		t.Fatalf("changes %+v, want the last one %+v", changes, want)
	}
	if snap := srv.Snapshot("/d/"); len(snap.KVs) != 0 || snap.Revision != want.Revision {
		t.Fatalf("Snapshot after the delete: %v at revision %d, want none at %d", keysOf(snap), snap.Revision, want.Revision)
	}
	for snap := recv(t, w, "watch"); len(snap.KVs) != 0 || snap.Revision != want.Revision; snap = recv(t, w, "watch") {
	}

	// A registered key, deleted and created again, is no longer the
	// session's: revoking the session leaves it.
	id, err := srv.Grant("s", time.Minute)
	noErr(t, "Grant", err)
	reg, err := srv.Register("s", id, "/d/reg", []byte("r"))
	noErr(t, "Register", err)
	other, err := srv.Register("s", id, "/d/other", []byte("o"))
	noErr(t, "Register", err)
	noErr(t, "Client.DeleteVersion of a registered key", c.DeleteVersion(ctx, reg.Key, reg.Version))
	if last := changes[len(changes)-1]; !last.Deleted || last.Key != reg.Key || last.Session != "" || last.Client != "c" {
		t.Fatalf("change of DeleteVersion of a registered key: %+v, want a deletion by c with no Session", last)
	}
	if !srv.SessionAlive(id) {
		t.Fatal("session ended by the deletion of its key")
	}
	again := srv.Do("x", core.Op{Kind: core.OpCreate, Key: reg.Key, Value: []byte("plain")})
	noErr(t, "Create again", again.Err)
	if again.KV.Version != 1 {
		t.Errorf("created again: Version %d, want 1 (versions count from creation)", again.KV.Version)
	}
	noErr(t, "Revoke", srv.Revoke("s", id))
	if r := srv.Do("x", core.Op{Kind: core.OpGet, Key: reg.Key}); r.Err != nil || string(r.KV.Value) != "plain" {
		t.Fatalf("Get(%q) after its old session was revoked: %+v, %v; want the key created again", reg.Key, r.KV, r.Err)
	}
	wantIs(t, "Get of the session's other key", srv.Do("x", core.Op{Kind: core.OpGet, Key: other.Key}).Err, core.ErrNotFound)

	srv.Close()
	wantIs(t, "DeleteVersion after Close", srv.DeleteVersion("c", reg.Key, 1), core.ErrClosed)
	wantIs(t, "Client.DeleteVersion after Close", c.DeleteVersion(ctx, reg.Key, 1), core.ErrClosed)
}
