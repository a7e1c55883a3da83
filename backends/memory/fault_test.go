package memory

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/concordha/concord/core"
)

func TestFaultByOp(t *testing.T) {
	ctx := testCtx(t)
	srv, _ := manual(t, Options{ManualExpiry: true})
	c := srv.Client("c")
	defer c.Close()
	_, err := c.Create(ctx, "/k", []byte("v"))
	noErr(t, "Create", err)

	remove := srv.InjectFault(Fault{Ops: []string{"get"}})
	_, err = c.Get(ctx, "/k")
	wantIs(t, "Get with a get fault", err, core.ErrUnavailable)
	_, err = c.List(ctx, "/")
	noErr(t, "List with a get fault", err)
	r := srv.Do("c", core.Op{Kind: core.OpGet, Key: "/k"})
	wantIs(t, "Do(OpGet) with a get fault", r.Err, core.ErrUnavailable)
	remove()
	remove() // idempotent
	_, err = c.Get(ctx, "/k")
	noErr(t, "Get after the fault was removed", err)

	// Every op name reaches its call.
	s, err := c.NewSession(ctx, core.SessionOptions{TTL: time.Minute})
	noErr(t, "NewSession", err)
	defer s.Close(ctx)
	other := srv.Client("other")
	defer other.Close()
	calls := map[string]func() error{
		"get":      func() error { _, err := c.Get(ctx, "/k"); return err },
		"list":     func() error { _, err := c.List(ctx, "/"); return err },
		"create":   func() error { _, err := c.Create(ctx, "/new", nil); return err },
		"cas":      func() error { _, err := c.CompareAndSwap(ctx, "/k", nil, 1); return err },
		"delete":   func() error { return c.DeleteVersion(ctx, "/k", 1) },
		"txn":      func() error { _, err := c.Txn(ctx, []core.Op{{Kind: core.OpGet, Key: "/k"}}); return err },
		"watch":    func() error { _, err := c.Watch(ctx, "/"); return err },
		"session":  func() error { _, err := c.NewSession(ctx, core.SessionOptions{TTL: time.Minute}); return err },
		"register": func() error { _, err := s.Register(ctx, "/reg", nil); return err },
		"expire":   func() error { return c.ExpireSession(ctx, "no-such-session") },
	}
	sentinel := errors.New("boom")
	for op, call := range calls {
		remove := srv.InjectFault(Fault{Ops: []string{op}, Err: sentinel})
		if err := call(); !errors.Is(err, sentinel) {
			t.Errorf("%s with a %q fault: err = %v, want the injected error", op, op, err)
		}
		if _, err := other.Get(ctx, "/k"); err != nil && op != "get" {
			t.Errorf("Get with a %q fault: %v", op, err)
		}
		remove()
	}
	if isDone(s) {
		t.Fatalf("a failed register ended the session: %v", s.Err())
	}
	if _, err := c.Get(ctx, "/new"); !errors.Is(err, core.ErrNotFound) {
		t.Fatalf("Get(/new) after a Create that failed by fault: err = %v, want ErrNotFound", err)
	}
	if _, err := c.Get(ctx, "/k"); err != nil {
		t.Fatalf("Get(/k) after a DeleteVersion that failed by fault: %v", err)
	}
	remove = srv.InjectFault(Fault{Ops: []string{"delete"}, KeyPrefix: "/k"})
	wantIs(t, "DeleteVersion(/k) with a delete fault on /k", srv.DeleteVersion("c", "/k", 1), core.ErrUnavailable)
	remove()
}

func TestFaultByKeyPrefixAndClient(t *testing.T) {
	ctx := testCtx(t)
	srv, _ := manual(t, Options{ManualExpiry: true})
	a, b := srv.Client("a"), srv.Client("b")
	defer a.Close()
	defer b.Close()
	for _, k := range []string{"/x/1", "/y/1"} {
		_, err := a.Create(ctx, k, nil)
		noErr(t, "Create "+k, err)
	}
	remove := srv.InjectFault(Fault{Client: "a", KeyPrefix: "/x/"})
	defer remove()
	_, err := a.Get(ctx, "/x/1")
	wantIs(t, "a: Get(/x/1)", err, core.ErrUnavailable)
	_, err = a.Get(ctx, "/y/1")
	noErr(t, "a: Get(/y/1)", err)
	_, err = b.Get(ctx, "/x/1")
	noErr(t, "b: Get(/x/1)", err)
	_, err = a.List(ctx, "/x/")
	wantIs(t, "a: List(/x/)", err, core.ErrUnavailable)
	_, err = a.List(ctx, "/")
	noErr(t, "a: List(/), a prefix the fault's does not cover", err)
	// A Txn fails whole when any op's key matches.
	_, err = a.Txn(ctx, []core.Op{{Kind: core.OpGet, Key: "/y/1"}, {Kind: core.OpGet, Key: "/x/1"}})
	wantIs(t, "a: Txn touching /x/", err, core.ErrUnavailable)
	_, err = a.Txn(ctx, []core.Op{{Kind: core.OpGet, Key: "/y/1"}})
	noErr(t, "a: Txn not touching /x/", err)
	_, err = srv.Txn("a", []core.Op{{Kind: core.OpCreate, Key: "/x/2"}})
	wantIs(t, "Server.Txn as a touching /x/", err, core.ErrUnavailable)
	// Calls without a key match only faults without a KeyPrefix.
	_, err = a.NewSession(ctx, core.SessionOptions{TTL: time.Minute})
	if err != nil {
		t.Fatalf("a: NewSession with a key-prefix fault: %v", err)
	}
	srv.ClearFaults()
	_, err = a.Get(ctx, "/x/1")
	noErr(t, "a: Get(/x/1) after ClearFaults", err)
}

func TestFaultTimes(t *testing.T) {
	ctx := testCtx(t)
	srv, _ := manual(t, Options{ManualExpiry: true})
	c := srv.Client("c")
	defer c.Close()
	_, err := c.Create(ctx, "/k", []byte("v"))
	noErr(t, "Create", err)
	custom := errors.New("disk on fire")
	remove := srv.InjectFault(Fault{Ops: []string{"get", "cas"}, Err: custom, Times: 2})
	defer remove()
	_, err = c.Get(ctx, "/k")
	wantIs(t, "first Get", err, custom)
	if errors.Is(err, core.ErrUnavailable) {
		t.Errorf("an injected custom error also matches ErrUnavailable: %v", err)
	}
	_, err = c.List(ctx, "/") // does not match: does not count
	noErr(t, "List", err)
	r := srv.Do("c", core.Op{Kind: core.OpCAS, Key: "/k", Version: 1})
	wantIs(t, "Do(OpCAS), second matching call", r.Err, custom)
	for i := range 3 {
		_, err = c.Get(ctx, "/k")
		noErr(t, "Get after the fault's Times ran out", err)
		_ = i
	}
	if kv, _ := c.Get(ctx, "/k"); kv.Version != 1 {
		t.Errorf("a CAS that failed by fault wrote: version %d", kv.Version)
	}
}

func TestFaultSessionOps(t *testing.T) {
	srv, _ := manual(t, Options{ManualExpiry: true})
	id, err := srv.Grant("sim", time.Minute)
	noErr(t, "Grant", err)
	remove := srv.InjectFault(Fault{Client: "sim", Ops: []string{"keepalive", "revoke", "register", "session"}})
	wantIs(t, "KeepAlive with a fault", srv.KeepAlive("sim", id), core.ErrUnavailable)
	wantIs(t, "Revoke with a fault", srv.Revoke("sim", id), core.ErrUnavailable)
	_, err = srv.Register("sim", id, "/k", nil)
	wantIs(t, "Register with a fault", err, core.ErrUnavailable)
	_, err = srv.Grant("sim", time.Minute)
	wantIs(t, "Grant with a fault", err, core.ErrUnavailable)
	noErr(t, "KeepAlive of another client", srv.KeepAlive("other", id))
	remove()
	noErr(t, "Revoke after the fault", srv.Revoke("sim", id))
	if srv.SessionAlive(id) {
		t.Fatal("session alive after Revoke")
	}
}

// TestFaultKeepAliveRetried: one failed keep-alive is retried at TTL/10
// and the session survives; failing them all loses it at the local
// deadline, before the server would expire it.
func TestFaultKeepAliveRetried(t *testing.T) {
	ctx := testCtx(t)
	srv, clk := manual(t, Options{ManualExpiry: true})
	c := srv.Client("c")
	defer c.Close()
	const ttl = 30 * time.Second
	s, err := c.NewSession(ctx, core.SessionOptions{TTL: ttl})
	noErr(t, "NewSession", err)
	srv.InjectFault(Fault{Ops: []string{"keepalive"}, Times: 1})
	clk.Advance(ttl / 3) // the first keep-alive fails
	waitTimer(t, clk, t0.Add(ttl/3+ttl/10))
	clk.Advance(ttl / 10) // the retry succeeds
	eventually(t, "deadline pushed by the retried keep-alive", func() error {
		if d, _ := leaseDeadline(srv, s.ID()); !d.Equal(t0.Add(ttl/3 + ttl/10 + ttl)) {
			return errors.New("deadline " + d.Sub(t0).String())
		}
		return nil
	})
	if isDone(s) {
		t.Fatalf("session lost after one failed keep-alive: %v", s.Err())
	}

	srv.InjectFault(Fault{Ops: []string{"keepalive"}}) // now every one fails
	last := t0.Add(ttl/3 + ttl/10)
	localDeadline := last.Add(ttl - ttl/10)
	for clk.Now().Before(localDeadline.Add(-time.Second)) {
		clk.Advance(time.Second)
	}
	if isDone(s) {
		t.Fatalf("session lost at %v, before its local deadline %v: %v", clk.Now().Sub(t0), localDeadline.Sub(t0), s.Err())
	}
	clk.Set(localDeadline)
	waitDone(t, s, "keep-alives failing until the local deadline")
	wantIs(t, "Err", s.Err(), core.ErrSessionLost)
	if !srv.SessionAlive(s.ID()) {
		t.Fatalf("server expired the session no later than the client declared it lost")
	}
	clk.Set(last.Add(ttl))
	if got := srv.ExpireDue(); len(got) != 1 || got[0] != s.ID() {
		t.Fatalf("ExpireDue at the server deadline = %v, want [%s]", got, s.ID())
	}
}

func TestLatencyOnManualClock(t *testing.T) {
	ctx := testCtx(t)
	srv, clk := manual(t, Options{ManualExpiry: true})
	slow, fast := srv.Client("slow"), srv.Client("fast")
	defer slow.Close()
	defer fast.Close()
	srv.SetLatency("slow", 5*time.Second)
	_, err := fast.Create(ctx, "/k", []byte("v")) // not delayed: returns without the clock moving
	noErr(t, "fast Create", err)

	res := make(chan error, 1)
	go func() {
		_, err := slow.Get(ctx, "/k")
		res <- err
	}()
	waitTimer(t, clk, t0.Add(5*time.Second))
	clk.Advance(4 * time.Second)
	quiet(t, res, 20*time.Millisecond, "slow Get before its latency passed")
	clk.Advance(time.Second)
	noErr(t, "slow Get after its latency", recv(t, res, "slow Get"))

	// The context ends the wait.
	cctx, cancel := context.WithCancel(ctx)
	go func() {
		_, err := slow.Get(cctx, "/k")
		res <- err
	}()
	waitTimer(t, clk, clk.Now().Add(5*time.Second))
	cancel()
	wantIs(t, "slow Get cancelled during its latency", recv(t, res, "cancelled Get"), context.Canceled)

	// "" sets every client and drops per-client settings.
	srv.SetLatency("", 2*time.Second)
	go func() {
		_, err := fast.Get(ctx, "/k")
		res <- err
	}()
	waitTimer(t, clk, clk.Now().Add(2*time.Second))
	clk.Advance(2 * time.Second)
	noErr(t, "fast Get with the default latency", recv(t, res, "fast Get"))
	srv.SetLatency("", 0)
	_, err = slow.Get(ctx, "/k")
	noErr(t, "slow Get with latency cleared", err)

	// The simulation API ignores latency.
	srv.SetLatency("", time.Hour)
	if r := srv.Do("slow", core.Op{Kind: core.OpGet, Key: "/k"}); r.Err != nil {
		t.Fatalf("Do with latency set: %v", r.Err)
	}
}

func TestHang(t *testing.T) {
	ctx := testCtx(t)
	srv := New(Options{ManualExpiry: true})
	defer srv.Close()
	c := srv.Client("c")
	defer c.Close()
	_, err := c.Create(ctx, "/k", []byte("v"))
	noErr(t, "Create", err)

	srv.SetHung(true)
	srv.SetHung(true) // idempotent
	res := make(chan error, 2)
	go func() {
		_, err := c.Get(ctx, "/k")
		res <- err
	}()
	go func() {
		_, err := c.CompareAndSwap(ctx, "/k", []byte("v2"), 1)
		res <- err
	}()
	quiet(t, res, 50*time.Millisecond, "calls while hung")
	if r := srv.Do("c", core.Op{Kind: core.OpGet, Key: "/k"}); r.Err != nil {
		t.Fatalf("Do while hung: %v", r.Err)
	}
	tctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	_, err = c.List(tctx, "/")
	wantIs(t, "List while hung, until its context ends", err, context.DeadlineExceeded)

	srv.SetHung(false)
	noErr(t, "first call after unhang", recv(t, res, "call after unhang"))
	noErr(t, "second call after unhang", recv(t, res, "call after unhang"))
	srv.SetHung(false) // idempotent
}

// TestHungKeepAliveLosesSession: a keep-alive stuck on a hung server does
// not hold the session past its local deadline.
func TestHungKeepAliveLosesSession(t *testing.T) {
	ctx := testCtx(t)
	srv, clk := manual(t, Options{ManualExpiry: true})
	c := srv.Client("c")
	defer c.Close()
	const ttl = 10 * time.Second
	s, err := c.NewSession(ctx, core.SessionOptions{TTL: ttl})
	noErr(t, "NewSession", err)
	srv.SetHung(true)
	for range 8 {
		clk.Advance(time.Second)
	}
	if isDone(s) {
		t.Fatalf("session lost at %v, before its local deadline: %v", clk.Now().Sub(t0), s.Err())
	}
	clk.Advance(time.Second) // t0+9s = t0 + TTL - TTL/10
	waitDone(t, s, "keep-alive hung past the local deadline")
	wantIs(t, "Err", s.Err(), core.ErrSessionLost)
	if !srv.SessionAlive(s.ID()) {
		t.Fatal("server no longer holds the session when the client declared it lost")
	}
	srv.SetHung(false)
	clk.Advance(time.Second)
	if got := srv.ExpireDue(); len(got) != 1 {
		t.Fatalf("ExpireDue at t0+TTL = %v, want the session", got)
	}
}

// TestIsolation: a cut-off client fails at once, its watches end, and its
// session is lost client-side strictly before the server expires it.
func TestIsolation(t *testing.T) {
	ctx := testCtx(t)
	srv, clk := manual(t, Options{ManualExpiry: true})
	a, b := srv.Client("a"), srv.Client("b")
	defer a.Close()
	defer b.Close()
	const ttl = 10 * time.Second
	s, err := a.NewSession(ctx, core.SessionOptions{TTL: ttl})
	noErr(t, "NewSession", err)
	kv, err := s.Register(ctx, "/svc/a", []byte("a"))
	noErr(t, "Register", err)
	wa, err := a.Watch(ctx, "/svc/")
	noErr(t, "a: Watch", err)
	wb, err := b.Watch(ctx, "/svc/")
	noErr(t, "b: Watch", err)
	recv(t, wb, "b: first snapshot")

	srv.Isolate("a", true)
	srv.SetLatency("a", time.Hour) // "at once": isolation does not wait for latency
	_, err = a.Get(ctx, "/svc/a")
	wantIs(t, "a: Get while cut off", err, core.ErrUnavailable)
	r := srv.Do("a", core.Op{Kind: core.OpGet, Key: "/svc/a"})
	wantIs(t, "Do as a while cut off", r.Err, core.ErrUnavailable)
	wantIs(t, "a: DeleteVersion while cut off", a.DeleteVersion(ctx, kv.Key, kv.Version), core.ErrUnavailable)
	wantIs(t, "DeleteVersion as a while cut off", srv.DeleteVersion("a", kv.Key, kv.Version), core.ErrUnavailable)
	_, err = a.Watch(ctx, "/svc/")
	wantIs(t, "a: Watch while cut off", err, core.ErrUnavailable)
	last := drain(t, wa, "a's watch after isolation")
	wantIs(t, "a's watch last snapshot", last.Err, core.ErrUnavailable)
	if len(last.KVs) != 0 {
		t.Errorf("a's watch: last snapshot with Err carries KVs %v", keysOf(last))
	}
	_, err = b.Get(ctx, "/svc/a")
	noErr(t, "b: Get while a is cut off", err)

	// Nothing a does reaches the server; its local deadline is t0+9s.
	for range 8 {
		clk.Advance(time.Second)
		if got := srv.ExpireDue(); len(got) != 0 {
			t.Fatalf("ExpireDue at %v = %v, want none", clk.Now().Sub(t0), got)
		}
	}
	if isDone(s) {
		t.Fatalf("session lost at %v, before its local deadline: %v", clk.Now().Sub(t0), s.Err())
	}
	clk.Advance(time.Second)
	waitDone(t, s, "cut-off client at its local deadline")
	lostAt := clk.Now()
	wantIs(t, "Err of the cut-off session", s.Err(), core.ErrSessionLost)
	if !srv.SessionAlive(s.ID()) || len(srv.ExpireDue()) != 0 {
		t.Fatal("server expired the session no later than the client declared it lost")
	}
	if _, err := b.Get(ctx, kv.Key); err != nil {
		t.Fatalf("b: Get(%q) when a's session was lost client-side: %v", kv.Key, err)
	}
	clk.Advance(time.Second)
	if got := srv.ExpireDue(); len(got) != 1 || got[0] != s.ID() {
		t.Fatalf("ExpireDue at %v = %v, want [%s]", clk.Now().Sub(t0), got, s.ID())
	}
	if !lostAt.Before(clk.Now()) {
		t.Fatalf("client lost the session at %v, server expired it at %v", lostAt.Sub(t0), clk.Now().Sub(t0))
	}
	for {
		snap := recv(t, wb, "b's watch")
		if len(snap.KVs) == 0 {
			break
		}
	}

	srv.Isolate("a", false)
	srv.SetLatency("a", 0)
	_, err = a.List(ctx, "/")
	noErr(t, "a: List after reconnecting", err)
}

// TestKeepAliveOnManualClock: the session renews itself as the clock
// moves, far beyond its TTL.
func TestKeepAliveOnManualClock(t *testing.T) {
	ctx := testCtx(t)
	srv, clk := manual(t, Options{ManualExpiry: true})
	c := srv.Client("c")
	defer c.Close()
	const ttl = 10 * time.Second
	s, err := c.NewSession(ctx, core.SessionOptions{TTL: ttl})
	noErr(t, "NewSession", err)
	for range 60 {
		clk.Advance(time.Second)
		// Wait for the renewal the step made due, if any.
		eventually(t, "session renewed", func() error {
			d, ok := leaseDeadline(srv, s.ID())
			if !ok {
				return errors.New("session gone")
			}
			if left := d.Sub(clk.Now()); left <= ttl/2 {
				return errors.New("only " + left.String() + " left")
			}
			return nil
		})
		if got := srv.ExpireDue(); len(got) != 0 {
			t.Fatalf("ExpireDue at %v = %v", clk.Now().Sub(t0), got)
		}
	}
	if isDone(s) {
		t.Fatalf("session lost: %v", s.Err())
	}
	noErr(t, "Session.Close", s.Close(ctx))
	wantIs(t, "Err after Close", s.Err(), core.ErrSessionClosed)
	if srv.SessionAlive(s.ID()) {
		t.Fatal("session alive at the server after Close")
	}
}

func TestForcedExpiry(t *testing.T) {
	ctx := testCtx(t)
	srv := New(Options{})
	defer srv.Close()
	c, op := srv.Client("holder"), srv.Client("operator")
	defer c.Close()
	defer op.Close()
	s, err := c.NewSession(ctx, core.SessionOptions{TTL: time.Minute})
	noErr(t, "NewSession", err)
	_, err = s.Register(ctx, "/k", nil)
	noErr(t, "Register", err)
	noErr(t, "ExpireSession", srv.ExpireSession(s.ID()))
	// With a TTL of a minute, only the server's word can fire Done soon.
	waitDone(t, s, "forced expiry")
	wantIs(t, "Err", s.Err(), core.ErrSessionLost)
	_, err = op.Get(ctx, "/k")
	wantIs(t, "Get of the expired session's key", err, core.ErrNotFound)
	wantIs(t, "ExpireSession again", srv.ExpireSession(s.ID()), core.ErrNotFound)
	wantIs(t, "ExpireSession of an unknown id", srv.ExpireSession("nope"), core.ErrNotFound)
	wantIs(t, "Client.ExpireSession of an unknown id", op.ExpireSession(ctx, "nope"), core.ErrNotFound)
	_, err = s.Register(ctx, "/k2", nil)
	wantIs(t, "Register after forced expiry", err, core.ErrSessionLost)
	noErr(t, "Close of a lost session", s.Close(ctx))
	wantIs(t, "Err after Close of a lost session", s.Err(), core.ErrSessionLost)
}

// TestSessionCloseWhileHung: Close revokes with a context of its own,
// bounded by the TTL, and still counts as closed when that fails.
func TestSessionCloseWhileHung(t *testing.T) {
	ctx := testCtx(t)
	srv := New(Options{})
	defer srv.Close()
	c := srv.Client("c")
	defer c.Close()
	const ttl = 300 * time.Millisecond
	s, err := c.NewSession(ctx, core.SessionOptions{TTL: ttl})
	noErr(t, "NewSession", err)
	_, err = s.Register(ctx, "/k", nil)
	noErr(t, "Register", err)
	srv.SetHung(true)
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	err = s.Close(cancelled) // the caller's ctx is over: Close still tries, bounded
	srv.SetHung(false)
	wantIs(t, "Close on a hung server", err, context.DeadlineExceeded) // after minRevokeBound
	wantIs(t, "Err", s.Err(), core.ErrSessionClosed)
	eventually(t, "the server expires the unrevoked session", func() error {
		if srv.SessionAlive(s.ID()) || len(srv.Snapshot("/").KVs) != 0 {
			return errors.New("still there")
		}
		return nil
	})
}
