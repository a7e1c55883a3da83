package storetest

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/concordha/concord/core"
)

var sessionChecks = []namedCheck{
	{"SessionIDs", checkSessionIDs},
	{"SessionInvalidTTL", checkSessionInvalidTTL},
	{"SessionRegister", checkSessionRegister},
	{"SessionRegisterExisting", checkSessionRegisterExisting},
	{"SessionStaysAlive", checkSessionStaysAlive},
	{"SessionDeadline", checkSessionDeadline},
	{"SessionCloseDeletesKeys", checkSessionCloseDeletesKeys},
	{"SessionCloseWithCancelledContext", checkSessionCloseWithCancelledContext},
	{"SessionLostWhenClientCloses", checkSessionLostWhenClientCloses},
	{"ClientCloseEndsWatches", checkClientCloseEndsWatches},
	{"ExpireSession", checkExpireSession},
}

func checkSessionIDs(c *check) {
	st, other := c.client(), c.client()
	seen := map[string]bool{}
	for _, cl := range []core.Store{st, st, other} {
		s := c.session(cl)
		id := s.ID()
		if id == "" {
			c.t.Fatal("Session.ID() is empty")
		}
		if seen[id] {
			c.t.Fatalf("Session.ID() %q returned for two sessions", id)
		}
		seen[id] = true
		if again := s.ID(); again != id {
			c.t.Errorf("Session.ID() changed from %q to %q", id, again)
		}
		if isClosed(s.Done()) || s.Err() != nil {
			c.t.Errorf("session %q: new session already done (Err %v)", id, s.Err())
		}
	}
	// Ids are never reused, even after their session ended.
	closed := c.session(st)
	if err := closed.Close(c.ctx); err != nil {
		c.t.Fatalf("Session.Close: %v", err)
	}
	if next := c.session(st); next.ID() == closed.ID() || seen[next.ID()] {
		c.t.Errorf("Session.ID() %q reused", next.ID())
	}
}

func checkSessionInvalidTTL(c *check) {
	st := c.client()
	for _, ttl := range []time.Duration{0, -time.Second, -1} {
		s, err := st.NewSession(c.ctx, core.SessionOptions{TTL: ttl})
		if !errors.Is(err, core.ErrInvalidArgument) {
			if s != nil {
				_ = s.Close(c.ctx)
			}
			c.t.Errorf("NewSession(TTL %v): err = %v, want ErrInvalidArgument", ttl, err)
		}
	}
}

func checkSessionRegister(c *check) {
	holder, observer := c.client(), c.client()
	s := c.session(holder)
	key := c.key("member")
	kv := c.mustRegister(s, key, "me")
	c.wantKV("Register", kv, key, "me")
	c.sameKV(fmt.Sprintf("Get(%q) from a second client after Register", key), c.mustGet(observer, key), kv)
	// A registered key is an ordinary key for reads and CAS.
	next := c.mustCAS(observer, key, "updated", kv.Version)
	c.wantKV("CompareAndSwap of a registered key", next, key, "updated")
}

func checkSessionRegisterExisting(c *check) {
	holder, other := c.client(), c.client()
	s1, s2 := c.session(holder), c.session(other)
	plain := c.mustCreate(holder, c.key("plain"), "created")
	owned := c.mustRegister(s1, c.key("owned"), "s1")
	for _, tc := range []struct {
		s    core.Session
		want core.KV
	}{{s1, plain}, {s2, plain}, {s1, owned}, {s2, owned}} {
		_, err := tc.s.Register(c.ctx, tc.want.Key, []byte("intruder"))
		if !errors.Is(err, core.ErrExists) {
			c.t.Errorf("Register(%q) in session %q of an existing key: err = %v, want ErrExists", tc.want.Key, tc.s.ID(), err)
		}
		c.sameKV(fmt.Sprintf("Get(%q) after a refused Register", tc.want.Key), c.mustGet(other, tc.want.Key), tc.want)
	}
	if isClosed(s1.Done()) || isClosed(s2.Done()) {
		c.t.Errorf("a refused Register ended a session (Err %v, %v)", s1.Err(), s2.Err())
	}
}

// checkSessionStaysAlive: a session keeps itself alive for several TTLs
// while nobody touches it, and so do its keys.
func checkSessionStaysAlive(c *check) {
	holder, observer := c.client(), c.client()
	s := c.session(holder)
	kv := c.mustRegister(s, c.key("alive"), "v")
	c.consistently(3*c.ttl, fmt.Sprintf("session %q alive and %q present", s.ID(), kv.Key), func() error {
		if isClosed(s.Done()) {
			return fmt.Errorf("session %q done: %v", s.ID(), s.Err())
		}
		if s.Err() != nil {
			return fmt.Errorf("session %q: Err %v while Done is open", s.ID(), s.Err())
		}
		return nil
	})
	c.sameKV(fmt.Sprintf("Get(%q) after %v", kv.Key, 3*c.ttl), c.mustGet(observer, kv.Key), kv)
	c.wantKV("Register after several TTLs", c.mustRegister(s, c.key("later"), "v"), c.key("later"), "v")
}

func checkSessionCloseDeletesKeys(c *check) {
	holder, observer := c.client(), c.client()
	s := c.session(holder)
	keys := []string{c.key("s/a"), c.key("s/b"), c.key("s/c")}
	var regs []core.KV
	for _, k := range keys {
		regs = append(regs, c.mustRegister(s, k, "v"))
	}
	// A registered key stays bound to its session when its value changes,
	// by CompareAndSwap or by a Txn.
	c.mustCAS(observer, keys[0], "changed", regs[0].Version)
	if tx, ok := observer.(core.Txner); ok {
		res, err := tx.Txn(c.ctx, []core.Op{{Kind: core.OpCAS, Key: keys[1], Value: []byte("changed"), Version: regs[1].Version}})
		if err != nil || res[0].Err != nil {
			c.t.Fatalf("Txn CAS of registered key %q: %v %v", keys[1], err, res)
		}
	}
	plain := c.mustCreate(holder, c.key("s/plain"), "stays")
	if err := s.Close(c.ctx); err != nil {
		c.t.Fatalf("Session.Close: %v", err)
	}
	c.waitClosed(s.Done(), c.soon(), fmt.Sprintf("Done of session %q after Close", s.ID()))
	firstErr := s.Err()
	if !errors.Is(firstErr, core.ErrSessionClosed) {
		c.t.Errorf("session %q: Err after Close = %v, want ErrSessionClosed", s.ID(), firstErr)
	}
	if err := s.Close(c.ctx); err != nil {
		c.t.Errorf("second Session.Close: %v, want nil (Close is idempotent)", err)
	}
	// Promptly means well before the store could have expired the session
	// on its own: that takes at least 2/3 of a TTL after Close, since the
	// last keep-alive was at most TTL/3 earlier.
	c.eventually(c.ttl/2, "registered keys deleted promptly after Session.Close", func() error {
		for _, k := range keys {
			if kv, err := observer.Get(c.ctx, k); !errors.Is(err, core.ErrNotFound) {
				return fmt.Errorf("Get(%q) from a second client = %s, %v; want ErrNotFound", k, fmtKV(kv), err)
			}
		}
		return nil
	})
	c.sameKV(fmt.Sprintf("Get(%q), not registered, after Session.Close", plain.Key), c.mustGet(observer, plain.Key), plain)
	_, err := s.Register(c.ctx, c.key("s/late"), []byte("v"))
	if !errors.Is(err, core.ErrSessionLost) {
		c.t.Errorf("Register after Session.Close: err = %v, want ErrSessionLost", err)
	}
	if _, err := observer.Get(c.ctx, c.key("s/late")); !errors.Is(err, core.ErrNotFound) {
		c.t.Errorf("Get(%q) after a Register refused on a closed session: err = %v, want ErrNotFound", c.key("s/late"), err)
	}
	// Done never un-fires, and Err stays what it was.
	if !isClosed(s.Done()) || s.Err() == nil || s.Err().Error() != firstErr.Error() {
		c.t.Errorf("session %q later: Done closed %v, Err %v; want still closed with %v", s.ID(), isClosed(s.Done()), s.Err(), firstErr)
	}
}

// checkSessionCloseWithCancelledContext: Close with a context that has
// already ended still counts locally, and the keys still go (promptly, or
// at the latest when the store expires the session).
func checkSessionCloseWithCancelledContext(c *check) {
	holder, observer := c.client(), c.client()
	s := c.session(holder)
	kv := c.mustRegister(s, c.key("k"), "v")
	ctx, cancel := context.WithCancel(c.ctx)
	cancel()
	_ = s.Close(ctx) // may report that the store was not reached
	c.waitClosed(s.Done(), c.soon(), fmt.Sprintf("Done of session %q after Close with a cancelled context", s.ID()))
	if !errors.Is(s.Err(), core.ErrSessionClosed) {
		c.t.Errorf("session %q: Err = %v, want ErrSessionClosed", s.ID(), s.Err())
	}
	c.eventually(c.expiry(), fmt.Sprintf("%q deleted after its session closed", kv.Key), func() error {
		if got, err := observer.Get(c.ctx, kv.Key); !errors.Is(err, core.ErrNotFound) {
			return fmt.Errorf("Get(%q) = %s, %v; want ErrNotFound", kv.Key, fmtKV(got), err)
		}
		return nil
	})
}

// checkSessionLostWhenClientCloses: a holder whose client goes away loses
// its session, and the store deletes its keys within TTL plus slack, as a
// second, independent client sees both by List and by Watch.
func checkSessionLostWhenClientCloses(c *check) {
	holder, observer := c.client(), c.client()
	prefix := c.key("lease/")
	s := c.session(holder)
	kv := c.mustRegister(s, c.key("lease/held"), "holder")
	w := c.watch(observer, prefix)
	w.until(c.soon(), "the registered key", func(snap core.Snapshot) error {
		if _, ok := findKey(snap.KVs, kv.Key); !ok {
			return fmt.Errorf("snapshot %s lacks %q", fmtKeys(snap.KVs), kv.Key)
		}
		return nil
	})
	start := time.Now()
	if err := holder.Close(); err != nil {
		c.t.Fatalf("Store.Close of the holder: %v", err)
	}
	c.waitClosed(s.Done(), c.soon(), fmt.Sprintf("Done of session %q after its client closed", s.ID()))
	lostErr := s.Err()
	if !errors.Is(lostErr, core.ErrSessionLost) {
		c.t.Errorf("session %q after its client closed: Err = %v, want ErrSessionLost", s.ID(), lostErr)
	}
	if _, err := s.Register(c.ctx, c.key("lease/late"), []byte("v")); !errors.Is(err, core.ErrSessionLost) {
		c.t.Errorf("Register on a lost session: err = %v, want ErrSessionLost", err)
	}
	c.eventually(c.expiry(), fmt.Sprintf("%q deleted by the store after its holder's client closed", kv.Key), func() error {
		snap := c.mustList(observer, prefix)
		if _, ok := findKey(snap.KVs, kv.Key); ok {
			return fmt.Errorf("List(%q) from a second client = %s", prefix, fmtKeys(snap.KVs))
		}
		return nil
	})
	w.until(c.soon(), fmt.Sprintf("%q deleted", kv.Key), func(snap core.Snapshot) error {
		if _, ok := findKey(snap.KVs, kv.Key); ok {
			return fmt.Errorf("snapshot %s still holds %q", fmtKeys(snap.KVs), kv.Key)
		}
		return nil
	})
	c.t.Logf("key of a session whose client closed deleted after %v (TTL %v)", time.Since(start).Round(time.Millisecond), c.ttl)
	if !isClosed(s.Done()) || s.Err() == nil || s.Err().Error() != lostErr.Error() {
		c.t.Errorf("session %q later: Done closed %v, Err %v; want still closed with %v", s.ID(), isClosed(s.Done()), s.Err(), lostErr)
	}
	if err := holder.Close(); err != nil {
		c.t.Errorf("second Store.Close: %v, want nil (Close is idempotent)", err)
	}
}

// checkClientCloseEndsWatches: a client's watches end when it closes, and
// a closed client no longer serves calls.
func checkClientCloseEndsWatches(c *check) {
	st := c.client()
	prefix := c.key("w/")
	c.mustCreate(st, c.key("w/a"), "1")
	w := c.watch(st, prefix)
	if _, ok := w.recv(c.soon()); !ok {
		c.t.Fatalf("Watch(%q): closed before the first snapshot", prefix)
	}
	if err := st.Close(); err != nil {
		c.t.Fatalf("Store.Close: %v", err)
	}
	deadline := time.Now().Add(c.soon())
	for {
		if time.Now().After(deadline) {
			c.t.Fatalf("Watch(%q): channel still open %v after its client closed", prefix, c.soon())
		}
		if _, ok := w.recv(time.Until(deadline)); !ok {
			break
		}
	}
	if _, err := st.Get(c.ctx, c.key("w/a")); err == nil {
		c.t.Errorf("Get on a closed client: no error")
	}
}

// checkExpireSession: an Expirer ends another client's session; the holder
// learns it is lost and a third client sees its keys gone.
func checkExpireSession(c *check) {
	holder, operator, observer := c.client(), c.client(), c.client()
	exp, ok := operator.(core.Expirer)
	if !ok {
		c.t.Skip("the store does not implement core.Expirer")
	}
	s := c.session(holder)
	kv := c.mustRegister(s, c.key("victim"), "v")
	if err := exp.ExpireSession(c.ctx, s.ID()); err != nil {
		c.t.Fatalf("ExpireSession(%q) from a second client: %v", s.ID(), err)
	}
	c.waitClosed(s.Done(), c.expiry(), fmt.Sprintf("Done of session %q after ExpireSession", s.ID()))
	if !errors.Is(s.Err(), core.ErrSessionLost) {
		c.t.Errorf("session %q after ExpireSession: Err = %v, want ErrSessionLost", s.ID(), s.Err())
	}
	c.eventually(c.soon(), fmt.Sprintf("%q deleted after ExpireSession", kv.Key), func() error {
		if got, err := observer.Get(c.ctx, kv.Key); !errors.Is(err, core.ErrNotFound) {
			return fmt.Errorf("Get(%q) from a third client = %s, %v; want ErrNotFound", kv.Key, fmtKV(got), err)
		}
		return nil
	})
	if err := exp.ExpireSession(c.ctx, s.ID()); !errors.Is(err, core.ErrNotFound) {
		c.t.Errorf("ExpireSession(%q) of an expired session: err = %v, want ErrNotFound", s.ID(), err)
	}
	unknown := "storetest-no-such-session"
	if err := exp.ExpireSession(c.ctx, unknown); !errors.Is(err, core.ErrNotFound) {
		c.t.Errorf("ExpireSession(%q) of an id the store never issued: err = %v, want ErrNotFound", unknown, err)
	}
	closed := c.session(holder)
	if err := closed.Close(c.ctx); err != nil {
		c.t.Fatalf("Session.Close: %v", err)
	}
	if err := exp.ExpireSession(c.ctx, closed.ID()); !errors.Is(err, core.ErrNotFound) {
		c.t.Errorf("ExpireSession(%q) of a closed session: err = %v, want ErrNotFound", closed.ID(), err)
	}
}
