//go:build integration

package integration

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/concordha/concord/backends/consul"
	"github.com/concordha/concord/backends/storetest"
	"github.com/concordha/concord/core"
)

// consulTTL is the session TTL of the suite against Consul: the test
// agents lower session_ttl_min to it (Consul's own minimum is 10s). At
// 1s, renewals every 333ms leave a renewal 667ms to come back before the
// client gives the session up, which held on two loaded cores under
// -race.
const consulTTL = time.Second

// consulAgentArgs are the agent flags of every test agent: sessions as
// short as consulTTL.
func consulAgentArgs(extra ...string) []string {
	return append([]string{"-hcl", fmt.Sprintf("session_ttl_min = %q", consulTTL)}, extra...)
}

// startConsulAgent starts a dev agent that grants consulTTL sessions.
func startConsulAgent(t *testing.T, extra ...string) *container {
	t.Helper()
	return startConsul(t, consulAgentArgs(extra...)...)
}

// consulEndpoints are the HTTP endpoints of agents.
func consulEndpoints(agents []*container) []string {
	var out []string
	for _, a := range agents {
		out = append(out, "http://"+a.Endpoint())
	}
	return out
}

// newConsul is a Store on cfg, closed by t's cleanup.
func newConsul(t *testing.T, cfg consul.Config) *consul.Store {
	t.Helper()
	st, err := consul.New(cfg)
	if err != nil {
		t.Fatalf("consul.New: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// openConsul is a client of agents, closed by t's cleanup.
func openConsul(t *testing.T, agents []*container) core.Store {
	t.Helper()
	return newConsul(t, consul.Config{Endpoints: consulEndpoints(agents)})
}

// TestConsulConformance runs the store contract's suite against a real
// Consul agent in a container. List reports 0 for a prefix without keys
// (see backends/consul), so not the exact revision of every deletion;
// TestConsulListRevision checks the cases where it is exact.
func TestConsulConformance(t *testing.T) {
	agent := startConsulAgent(t)
	storetest.Run(t, storetest.Factory{
		New:  func(t *testing.T) core.Store { return openConsul(t, []*container{agent}) },
		TTL:  consulTTL,
		Root: "storetest/",
	})
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestConsulSessionSettings: a session is TTL-only (no health checks,
// serfHealth included), deletes its keys when it ends, has the small
// lock-delay, and keeps its keys through a compare-and-swap; Consul's
// own TTL range is enforced.
func TestConsulSessionSettings(t *testing.T) {
	agent := startConsulAgent(t)
	st := newConsul(t, consul.Config{Endpoints: consulEndpoints([]*container{agent})})
	ctx := testCtx(t, time.Minute)
	s, err := st.NewSession(ctx, core.SessionOptions{TTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	info, _, err := st.Client().Session().Info(s.ID(), nil)
	if err != nil || info == nil {
		t.Fatalf("Session().Info(%q) = %v, %v", s.ID(), info, err)
	}
	if len(info.Checks)+len(info.NodeChecks)+len(info.ServiceChecks) != 0 {
		t.Errorf("session checks %v, node checks %v, service checks %v; want none", info.Checks, info.NodeChecks, info.ServiceChecks)
	}
	if info.Behavior != api.SessionBehaviorDelete || info.LockDelay != consul.DefaultLockDelay || info.TTL != "2s" {
		t.Errorf("session Behavior %q, LockDelay %v, TTL %q; want %q, %v, %q",
			info.Behavior, info.LockDelay, info.TTL, api.SessionBehaviorDelete, consul.DefaultLockDelay, "2s")
	}

	kv, err := s.Register(ctx, "settings/member", []byte("v1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.CompareAndSwap(ctx, kv.Key, []byte("v2"), kv.Version); err != nil {
		t.Fatal(err)
	}
	pair, _, err := st.Client().KV().Get(kv.Key, nil)
	if err != nil || pair == nil || pair.Session != s.ID() {
		t.Fatalf("KV().Get(%q) after CompareAndSwap = %+v, %v; want it locked by session %s", kv.Key, pair, err, s.ID())
	}

	// Register again as soon as the session that held the key ended: the
	// small lock-delay has passed by the time a new session exists.
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	s2, err := st.NewSession(ctx, core.SessionOptions{TTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close(ctx)
	if _, err := s2.Register(ctx, kv.Key, []byte("again")); err != nil {
		t.Errorf("Register(%q) right after the session that held it closed: %v", kv.Key, err)
	}

	// session_ttl_min is 1s on the test agents: Consul refuses less.
	short := newConsul(t, consul.Config{Endpoints: consulEndpoints([]*container{agent}), KeepAliveInterval: 100 * time.Millisecond})
	if s, err := short.NewSession(ctx, core.SessionOptions{TTL: 500 * time.Millisecond}); !errors.Is(err, core.ErrInvalidArgument) {
		if s != nil {
			_ = s.Close(ctx)
		}
		t.Errorf("NewSession(TTL 500ms) under session_ttl_min 1s: %v, want ErrInvalidArgument", err)
	}
}

// TestConsulSessionLostWhenAgentStops: with the agent gone, no renewal
// succeeds, and Done fires with ErrSessionLost a TTL after the last
// renewal that did: between TTL - interval and TTL after the agent
// stopped answering.
func TestConsulSessionLostWhenAgentStops(t *testing.T) {
	agent := startConsulAgent(t)
	const ttl, every = 2 * time.Second, 500 * time.Millisecond
	st := newConsul(t, consul.Config{Endpoints: consulEndpoints([]*container{agent}), KeepAliveInterval: every})
	ctx := testCtx(t, time.Minute)
	s, err := st.NewSession(ctx, core.SessionOptions{TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	if _, err := s.Register(ctx, "stop/member", []byte("v")); err != nil {
		t.Fatal(err)
	}
	// Let a few renewals succeed first.
	if err := waitTimer(ctx, s.Done(), 2*ttl); err == nil {
		t.Fatalf("session done before the agent stopped: %v", s.Err())
	}
	before := time.Now()
	agent.Stop(t)
	after := time.Now()
	t.Logf("the agent took %v to stop", after.Sub(before).Round(time.Millisecond))
	if err := waitTimer(ctx, s.Done(), ttl+time.Second); err != nil {
		t.Fatalf("Done %v after the agent stopped (TTL %v): %v", time.Since(after), ttl, err)
	}
	lostAt := time.Now()
	if !errors.Is(s.Err(), core.ErrSessionLost) {
		t.Errorf("Err after the agent stopped: %v, want ErrSessionLost", s.Err())
	}
	// The last successful renewal was sent at most an interval (and a
	// retry) before the agent stopped answering: Done came no sooner than
	// TTL - interval after that.
	if early := ttl - every - every/4 - 100*time.Millisecond; lostAt.Sub(before) < early {
		t.Errorf("Done %v after the agent began to stop, want at least %v (TTL %v, interval %v)", lostAt.Sub(before), early, ttl, every)
	}
	t.Logf("session lost %v after the agent began to stop (TTL %v, renewal every %v)", lostAt.Sub(before).Round(time.Millisecond), ttl, every)
	if _, err := s.Register(ctx, "stop/late", []byte("v")); !errors.Is(err, core.ErrSessionLost) {
		t.Errorf("Register on the lost session: %v, want ErrSessionLost", err)
	}
}

// waitTimer waits for ch to close within d: nil if it did.
func waitTimer(ctx context.Context, ch <-chan struct{}, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return nil
	case <-t.C:
		return fmt.Errorf("not closed within %v", d)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestConsulListRevision: List's revision covers deletions under a prefix
// that still has keys (Consul's tombstones), and is 0 for a prefix with
// none; a watch reports an emptied prefix with the deletion's revision.
func TestConsulListRevision(t *testing.T) {
	agent := startConsulAgent(t)
	st := openConsul(t, []*container{agent})
	ctx := testCtx(t, time.Minute)
	stays, err := st.Create(ctx, "rev/p/stays", []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := st.NewSession(ctx, core.SessionOptions{TTL: consulTTL})
	if err != nil {
		t.Fatal(err)
	}
	goes, err := s.Register(ctx, "rev/p/goes", []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	alone, err := s.Register(ctx, "rev/q/alone", []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := st.Watch(wctx, "rev/q/")
	if err != nil {
		t.Fatal(err)
	}
	if first := <-ch; first.Revision != alone.Revision {
		t.Errorf("Watch(rev/q/) first snapshot Revision %d, want %d", first.Revision, alone.Revision)
	}
	if _, err := st.Create(ctx, "rev/elsewhere", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// The session's destroy deleted both keys at one Raft index, greater
	// than every write before it.
	snap, err := st.List(ctx, "rev/p/")
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.KVs) != 1 || snap.KVs[0].Key != stays.Key {
		t.Fatalf("List(rev/p/) after the session closed = %v, want only %q", snap.KVs, stays.Key)
	}
	last, err := st.List(ctx, "rev/")
	if err != nil {
		t.Fatal(err)
	}
	if snap.Revision <= max(goes.Revision, stays.Revision) || snap.Revision != last.Revision {
		t.Errorf("List(rev/p/) after a deletion: Revision %d, want the deletion's: above %d, equal to List(rev/)'s %d",
			snap.Revision, goes.Revision, last.Revision)
	}
	if empty, err := st.List(ctx, "rev/q/"); err != nil || len(empty.KVs) != 0 || empty.Revision != 0 {
		t.Errorf("List(rev/q/) emptied = %+v, %v; want no keys and Revision 0", empty, err)
	}
	tctx, tcancel := context.WithTimeout(ctx, 10*time.Second)
	defer tcancel()
	for {
		select {
		case got := <-ch:
			if len(got.KVs) != 0 {
				continue
			}
			if got.Revision != last.Revision {
				t.Errorf("Watch(rev/q/) emptied: Revision %d, want the deletion's %d", got.Revision, last.Revision)
			}
			return
		case <-tctx.Done():
			t.Fatal("Watch(rev/q/) did not see the deletion")
		}
	}
}

// TestConsulTxnContention: Txn batches whose compare-and-swap races with
// other workers', and whose conditions watch a key that another client
// keeps registering and deleting, fail those ops alone while their other
// ops apply, through the extra rounds Txn runs when Consul rolls a batch
// back (see backends/consul/txn.go); no update is lost, and a Txn that
// gives up applies nothing.
func TestConsulTxnContention(t *testing.T) {
	agent := startConsulAgent(t)
	const workers, perWorker = 4, 25
	const flap = "contention/flap"
	ctx := testCtx(t, 2*time.Minute)
	seed := openConsul(t, []*container{agent})
	if _, err := seed.Create(ctx, "contention/counter", []byte("0")); err != nil {
		t.Fatal(err)
	}
	var (
		mu                 sync.Mutex
		successes, applied int
		gaveUp, flaps      int
		wg                 sync.WaitGroup
	)
	// The flapper registers flap and closes its session, which deletes
	// it, until the workers are done.
	flapCtx, stopFlapping := context.WithCancel(ctx)
	flapper := openConsul(t, []*container{agent})
	flapped := make(chan struct{})
	go func() {
		defer close(flapped)
		for flapCtx.Err() == nil {
			s, err := flapper.NewSession(flapCtx, core.SessionOptions{TTL: consulTTL})
			if err != nil {
				continue
			}
			if _, err := s.Register(flapCtx, flap, []byte("v")); err == nil {
				flaps++
			}
			_ = s.Close(ctx)
		}
	}()
	for w := range workers {
		st := openConsul(t, []*container{agent})
		tx := st.(core.Txner)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				kv, err := st.Get(ctx, "contention/counter")
				if err != nil {
					t.Errorf("worker %d: Get: %v", w, err)
					return
				}
				n, _ := strconv.Atoi(string(kv.Value))
				mine := fmt.Sprintf("contention/done/%d-%d", w, i)
				guarded := fmt.Sprintf("contention/guarded/%d-%d", w, i)
				res, err := tx.Txn(ctx, []core.Op{
					{Kind: core.OpCAS, Key: kv.Key, Value: []byte(strconv.Itoa(n + 1)), Version: kv.Version},
					{Kind: core.OpCreate, Key: mine, Value: []byte("v")},
					{Kind: core.OpList, Key: "contention/none/"},
					// Version 1 is never a live key's: these two always fail.
					{Kind: core.OpCAS, Key: flap, Value: []byte("x"), Version: 1},
					{Kind: core.OpCreate, Key: guarded, Value: []byte("v"), Guards: []core.Guard{{Key: flap, Revision: 1}}},
				})
				if err != nil {
					// Nothing applied: the key must not exist.
					if _, gerr := st.Get(ctx, mine); !errors.Is(gerr, core.ErrNotFound) {
						t.Errorf("worker %d: Txn failed (%v) but %q exists (%v)", w, err, mine, gerr)
					}
					mu.Lock()
					gaveUp++
					mu.Unlock()
					continue
				}
				if res[1].Err != nil {
					t.Errorf("worker %d: Txn Create of a fresh key: %v", w, res[1].Err)
				}
				if res[0].Err != nil && !errors.Is(res[0].Err, core.ErrConflict) {
					t.Errorf("worker %d: Txn CAS: %v, want success or ErrConflict", w, res[0].Err)
				}
				if !errors.Is(res[3].Err, core.ErrNotFound) && !errors.Is(res[3].Err, core.ErrConflict) {
					t.Errorf("worker %d: Txn CAS of %q at version 1: %v, want ErrNotFound or ErrConflict", w, flap, res[3].Err)
				}
				if !errors.Is(res[4].Err, core.ErrConflict) {
					t.Errorf("worker %d: Txn Create guarded by %q at version 1: %v, want ErrConflict", w, flap, res[4].Err)
				}
				mu.Lock()
				applied++
				if res[0].Err == nil {
					successes++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	stopFlapping()
	<-flapped
	if t.Failed() {
		return
	}
	if guarded, err := seed.List(ctx, "contention/guarded/"); err != nil || len(guarded.KVs) != 0 {
		t.Errorf("List of the keys whose guard never held = %v, %v; want none", guarded.KVs, err)
	}
	final, err := seed.Get(ctx, "contention/counter")
	if err != nil {
		t.Fatal(err)
	}
	if string(final.Value) != strconv.Itoa(successes) {
		t.Errorf("counter = %s after %d successful Txn CAS: lost or phantom updates", final.Value, successes)
	}
	done, err := seed.List(ctx, "contention/done/")
	if err != nil {
		t.Fatal(err)
	}
	if len(done.KVs) != applied {
		t.Errorf("%d keys created by the %d Txns that applied", len(done.KVs), applied)
	}
	t.Logf("%d Txns applied (%d CAS won, %d lost), %d gave up; %q registered %d times meanwhile", applied, successes, applied-successes, gaveUp, flap, flaps)
	if successes == 0 || successes == applied {
		t.Errorf("%d of %d Txn CAS won: the workers did not race", successes, applied)
	}
}
