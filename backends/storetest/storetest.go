// Package storetest is the conformance suite of the store contract in
// core/store.go. Every backend's tests call Run with a Factory; a backend
// that passes it meets each sentence of the contract that a test can
// observe.
//
// Every check runs as a subtest of its own, under a fresh key root made of
// Factory.Root, the check's name and a random suffix, so checks never see
// each other's keys and a backend shared between runs needs no cleanup.
// Every wait is bounded by a deadline derived from the TTL. The suite
// closes every client it asks the Factory for, and cancels every watch it
// starts, by the end of the check that made them.
//
// The checks of the optional capabilities (core.Txner, core.Expirer,
// core.Deleter, core.SessionDeadline) run when the store's client or
// session implements them, and are skipped, saying so, when it does not.
package storetest

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/concordha/concord/core"
	"github.com/concordha/concord/internal/poll"
)

// Factory tells the suite how to reach the store under test.
type Factory struct {
	// New returns a new, independent client of the store under test (its
	// own connection). The suite closes every client it gets, at the end
	// of the check that got it.
	New func(t *testing.T) core.Store
	// TTL is the session TTL the suite uses: the shortest the backend
	// honours reliably. 0 means 1s.
	TTL time.Duration
	// Root is a key prefix under which every check makes its own fresh
	// root (e.g. "/storetest/"). "" means "storetest/".
	Root string
	// ExactListRevision says that List reports the exact revision of the
	// latest change under a prefix, deletions included, rather than the
	// lower bound the contract allows. The suite then checks that too.
	ExactListRevision bool
}

// Run runs every check of the suite against the store f describes.
func Run(t *testing.T, f Factory) {
	t.Helper()
	if f.New == nil {
		t.Fatal("storetest: Factory.New is nil")
	}
	if f.TTL <= 0 {
		f.TTL = time.Second
	}
	if f.Root == "" {
		f.Root = "storetest/"
	}
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			c.fn(newCheck(t, f, c.name))
		})
	}
}

// checks lists the suite in the order it runs. Each file adds its own.
var checks = concat(kvChecks, listChecks, watchChecks, sessionChecks, txnChecks, deleteChecks, miscChecks)

type namedCheck struct {
	name string
	fn   func(c *check)
}

func concat(lists ...[]namedCheck) []namedCheck {
	var all []namedCheck
	for _, l := range lists {
		all = append(all, l...)
	}
	return all
}

// check is the state of one running check.
type check struct {
	t    *testing.T
	f    Factory
	ttl  time.Duration
	root string
	// ctx bounds the whole check; it is cancelled when the check ends.
	ctx context.Context
}

func newCheck(t *testing.T, f Factory, name string) *check {
	c := &check{t: t, f: f, ttl: f.TTL}
	c.root = fmt.Sprintf("%s%s-%016x/", f.Root, strings.ReplaceAll(name, "/", "_"), rand.Uint64())
	ctx, cancel := context.WithTimeout(context.Background(), c.budget())
	t.Cleanup(cancel)
	c.ctx = ctx
	return c
}

// soon bounds what the contract says happens promptly: a change showing in
// a watch or a list, Done after Close, a watch closing after its context.
func (c *check) soon() time.Duration { return c.ttl + 5*time.Second }

// expiry bounds what waits for the store to expire a session: its TTL
// plus slack.
func (c *check) expiry() time.Duration { return 2*c.ttl + 5*time.Second }

// budget bounds a whole check.
func (c *check) budget() time.Duration { return 10*c.ttl + 60*time.Second }

// poll is how often a bounded wait looks again.
func (c *check) poll() time.Duration {
	return min(max(c.ttl/50, time.Millisecond), 10*time.Millisecond)
}

// key returns a key under the check's root.
func (c *check) key(parts ...string) string { return c.root + strings.Join(parts, "") }

// client returns a new client of the store, closed when the check ends.
func (c *check) client() core.Store {
	c.t.Helper()
	st := c.f.New(c.t)
	if st == nil {
		c.t.Fatal("storetest: Factory.New returned nil")
	}
	c.t.Cleanup(func() { _ = st.Close() })
	return st
}

// session opens a session with the suite's TTL, closed when the check ends.
func (c *check) session(st core.Store) core.Session {
	c.t.Helper()
	s, err := st.NewSession(c.ctx, core.SessionOptions{TTL: c.ttl})
	if err != nil {
		c.t.Fatalf("NewSession(TTL %v): %v", c.ttl, err)
	}
	if s == nil {
		c.t.Fatal("NewSession returned a nil session and no error")
	}
	c.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), c.soon())
		defer cancel()
		_ = s.Close(ctx)
	})
	return s
}

// eventually polls cond until it returns nil, failing the check with
// cond's last error if timeout passes first.
func (c *check) eventually(timeout time.Duration, what string, cond func() error) {
	c.t.Helper()
	Eventually(c.t, timeout, what, cond)
}

// Eventually polls cond until it returns nil, and fails t with cond's last
// error if timeout passes first: the bounded wait every test here uses
// instead of a sleep.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	poll.Eventually(t, timeout, what, cond)
}

// consistently polls cond for the whole of d, failing the check as soon as
// it returns an error.
func (c *check) consistently(d time.Duration, what string, cond func() error) {
	c.t.Helper()
	end := time.Now().Add(d)
	tick := time.NewTicker(c.poll())
	defer tick.Stop()
	for {
		if err := cond(); err != nil {
			c.t.Fatalf("%s: stopped being true: %v", what, err)
		}
		if time.Now().After(end) {
			return
		}
		<-tick.C
	}
}

// waitClosed waits, bounded, for ch to be closed.
func (c *check) waitClosed(ch <-chan struct{}, timeout time.Duration, what string) {
	c.t.Helper()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
		c.t.Fatalf("%s: not closed after %v", what, timeout)
	}
}

// drainClosed reads ch until it closes, failing the check if it is still
// open after timeout.
func (c *check) drainClosed(ch <-chan core.Snapshot, timeout time.Duration, what string) {
	c.t.Helper()
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-t.C:
			c.t.Fatalf("%s: channel still open after %v", what, timeout)
		}
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// ---- helpers that do one store operation and fail the check on error ----

func (c *check) mustCreate(st core.Store, key, value string) core.KV {
	c.t.Helper()
	kv, err := st.Create(c.ctx, key, []byte(value))
	if err != nil {
		c.t.Fatalf("Create(%q): %v", key, err)
	}
	return kv
}

func (c *check) mustCAS(st core.Store, key, value string, version int64) core.KV {
	c.t.Helper()
	kv, err := st.CompareAndSwap(c.ctx, key, []byte(value), version)
	if err != nil {
		c.t.Fatalf("CompareAndSwap(%q, version %d): %v", key, version, err)
	}
	return kv
}

func (c *check) mustGet(st core.Store, key string) core.KV {
	c.t.Helper()
	kv, err := st.Get(c.ctx, key)
	if err != nil {
		c.t.Fatalf("Get(%q): %v", key, err)
	}
	return kv
}

func (c *check) mustList(st core.Store, prefix string) core.Snapshot {
	c.t.Helper()
	snap, err := st.List(c.ctx, prefix)
	if err != nil {
		c.t.Fatalf("List(%q): %v", prefix, err)
	}
	if snap.Err != nil {
		c.t.Fatalf("List(%q): Snapshot.Err = %v, want nil", prefix, snap.Err)
	}
	return snap
}

func (c *check) mustRegister(s core.Session, key, value string) core.KV {
	c.t.Helper()
	kv, err := s.Register(c.ctx, key, []byte(value))
	if err != nil {
		c.t.Fatalf("Register(%q) in session %q: %v", key, s.ID(), err)
	}
	return kv
}

// wantKV fails unless got is the record key = value as returned by a read
// or a write.
func (c *check) wantKV(what string, got core.KV, key, value string) {
	c.t.Helper()
	if got.Key != key {
		c.t.Errorf("%s: Key = %q, want %q", what, got.Key, key)
	}
	if string(got.Value) != value {
		c.t.Errorf("%s of %q: Value = %q, want %q", what, key, got.Value, value)
	}
	if got.Version == 0 {
		c.t.Errorf("%s of %q: Version = 0, want non-zero for an existing key", what, key)
	}
	if got.Revision <= 0 {
		c.t.Errorf("%s of %q: Revision = %d, want > 0", what, key, got.Revision)
	}
}

// sameKV fails unless a and b are the same record.
func (c *check) sameKV(what string, got, want core.KV) {
	c.t.Helper()
	if !equalKV(got, want) {
		c.t.Errorf("%s: got %s, want %s", what, fmtKV(got), fmtKV(want))
	}
}

func equalKV(a, b core.KV) bool {
	return a.Key == b.Key && bytes.Equal(a.Value, b.Value) && a.Version == b.Version && a.Revision == b.Revision
}

func fmtKV(kv core.KV) string {
	return fmt.Sprintf("{Key %q, Value %q, Version %d, Revision %d}", kv.Key, kv.Value, kv.Version, kv.Revision)
}

// sameContent reports whether two snapshots hold the same records.
func sameContent(a, b []core.KV) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !equalKV(a[i], b[i]) {
			return false
		}
	}
	return true
}

func fmtKeys(kvs []core.KV) string {
	keys := make([]string, len(kvs))
	for i, kv := range kvs {
		keys[i] = fmt.Sprintf("%s=%q", kv.Key, kv.Value)
	}
	return "[" + strings.Join(keys, " ") + "]"
}

func findKey(kvs []core.KV, key string) (core.KV, bool) {
	for _, kv := range kvs {
		if kv.Key == key {
			return kv, true
		}
	}
	return core.KV{}, false
}

func maxRevision(kvs []core.KV) int64 {
	var m int64
	for _, kv := range kvs {
		m = max(m, kv.Revision)
	}
	return m
}
