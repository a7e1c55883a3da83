package core_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/concordha/concord/backends/memory"
	"github.com/concordha/concord/backends/storetest"
	"github.com/concordha/concord/core"
	"github.com/concordha/concord/internal/syncbuf"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const ttl = 600 * time.Millisecond

// cluster is a set of nodes on one in-memory store.
type cluster struct {
	t     *testing.T
	srv   *memory.Server
	nodes map[string]*core.Node
	logs  *logBuffer
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	c := &cluster{t: t, srv: memory.New(memory.Options{}), nodes: map[string]*core.Node{}, logs: &logBuffer{}}
	t.Cleanup(func() {
		for _, n := range c.nodes {
			_ = n.Close()
		}
		c.srv.Close()
	})
	return c
}

func (c *cluster) config(id string, services ...core.ServiceConfig) core.Config {
	cfg := core.DefaultConfig()
	cfg.NodeID = id
	cfg.Services = services
	cfg.SessionTTL = ttl
	cfg.OpTimeout = ttl / 3
	cfg.RetryMin, cfg.RetryMax = 10*time.Millisecond, 100*time.Millisecond
	cfg.Logger = slog.New(slog.NewTextHandler(c.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return cfg
}

func (c *cluster) start(id string, services ...core.ServiceConfig) *core.Node {
	c.t.Helper()
	n, err := core.Start(context.Background(), c.srv.Client(id), c.config(id, services...))
	if err != nil {
		c.t.Fatalf("Start(%s): %v", id, err)
	}
	c.nodes[id] = n
	return n
}

// primaryOf waits until exactly one node acts as the service's primary
// and every running node agrees on it, and returns its ID.
func (c *cluster) primaryOf(svc string, except ...string) string {
	c.t.Helper()
	var got string
	eventually(c.t, 10*ttl, func() error {
		var prims []string
		named := map[string]bool{}
		for id, n := range c.nodes {
			if contains(except, id) {
				continue
			}
			st, err := n.Status(svc)
			if err != nil {
				return err
			}
			if st.Role == core.RolePrimary {
				prims = append(prims, id)
			}
			named[st.Primary] = true
		}
		if len(prims) != 1 {
			return fmt.Errorf("%s has primaries %v", svc, prims)
		}
		if len(named) != 1 || !named[prims[0]] {
			return fmt.Errorf("%s: nodes disagree on the primary: %v", svc, named)
		}
		got = prims[0]
		return nil
	})
	return got
}

func eventually(t *testing.T, within time.Duration, cond func() error) {
	t.Helper()
	storetest.Eventually(t, within, "condition", cond)
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

type logBuffer = syncbuf.Buffer

var (
	db    = core.ServiceConfig{Name: "db", Priority: 1}
	queue = core.ServiceConfig{Name: "queue"}
)

func TestElectsOnePrimaryPerService(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"a", "b", "c"} {
		c.start(id, db, queue)
	}
	p := c.primaryOf("db")
	c.primaryOf("queue")
	tok, err := c.nodes[p].Fence("db")
	if err != nil || tok <= 0 {
		t.Fatalf("Fence on the primary = %d, %v; want a positive token", tok, err)
	}
	for id, n := range c.nodes {
		if id == p {
			continue
		}
		if _, err := n.Fence("db"); !errors.Is(err, core.ErrNotPrimary) {
			t.Errorf("Fence on %s (not primary) = %v, want ErrNotPrimary", id, err)
		}
	}
	if _, err := c.nodes[p].Status("nope"); !errors.Is(err, core.ErrUnknownService) {
		t.Errorf("Status of an unknown service = %v, want ErrUnknownService", err)
	}
}

func TestStatusBeforeJoining(t *testing.T) {
	c := newCluster(t)
	c.srv.Isolate("a", true)
	a := c.start("a", db)
	st, err := a.Status("db")
	if err != nil || st.Role != core.RoleNone || st.Primary != "" {
		t.Fatalf("Status right after Start = %+v, %v; want role none, no primary, no error", st, err)
	}
}

func TestEventsReportRoleChanges(t *testing.T) {
	c := newCluster(t)
	a := c.start("a", db)
	// Alone, a must become primary, and say so.
	deadline := time.After(10 * ttl)
	for {
		select {
		case ev := <-a.Events():
			if ev.Service == "db" && ev.Role == core.RolePrimary {
				if ev.Primary != "a" || ev.Token <= 0 || ev.Epoch <= 0 {
					t.Fatalf("primary event = %+v, want primary a with a token and an epoch", ev)
				}
				return
			}
		case <-deadline:
			t.Fatal("no primary event within the deadline")
		}
	}
}

// TestFailoverOnCrash: the primary's process stops talking to the store
// (cut off), so it loses its session; it must stop acting at once, and a
// successor with a greater token must take over after the TTL.
func TestFailoverOnCrash(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"a", "b", "c"} {
		c.start(id, db)
	}
	old := c.primaryOf("db")
	oldTok, _ := c.nodes[old].Fence("db")
	member, err := c.srv.Client("observer").Get(context.Background(), "concord/members/"+old)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := core.DecodeMember(member)
	if err != nil {
		t.Fatal(err)
	}
	c.srv.Isolate(old, true)
	// Self-fencing: the cut-off primary stops acting (role and fence)
	// while the store still holds its session, never after.
	eventually(t, 3*ttl, func() error {
		alive := c.srv.SessionAlive(rec.Session)
		st, _ := c.nodes[old].Status("db")
		_, ferr := c.nodes[old].Fence("db")
		acting := st.Role == core.RolePrimary || ferr == nil
		if acting && !alive {
			t.Fatalf("%s still acts as primary (role %v, fence err %v) after the store expired its session", old, st.Role, ferr)
		}
		if acting {
			return errors.New("the cut-off primary still acts")
		}
		if !alive {
			t.Fatalf("%s stopped acting only after the store expired its session", old)
		}
		return nil
	})
	next := c.primaryOf("db", old)
	if next == old {
		t.Fatalf("the cut-off node %s is still primary", old)
	}
	tok, err := c.nodes[next].Fence("db")
	if err != nil || tok <= oldTok {
		t.Fatalf("new primary's token %d (%v), want above the old %d", tok, err, oldTok)
	}
	// It comes back, rejoins with a new session, and does not take over.
	c.srv.Isolate(old, false)
	eventually(t, 10*ttl, func() error {
		st, _ := c.nodes[old].Status("db")
		if st.Role != core.RoleSpare && st.Role != core.RoleSecondary {
			return fmt.Errorf("returning node's role is %v", st.Role)
		}
		if st.Primary != next {
			return fmt.Errorf("returning node thinks the primary is %q, want %q", st.Primary, next)
		}
		return nil
	})
	if p := c.primaryOf("db"); p != next {
		t.Fatalf("primary moved from %s to %s when the old one came back: not sticky", next, p)
	}
}

func TestResignHandsOver(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"a", "b", "c"} {
		c.start(id, db)
	}
	old := c.primaryOf("db")
	ctx, cancel := context.WithTimeout(context.Background(), 5*ttl)
	defer cancel()
	if err := c.nodes[old].Resign(ctx, "db"); err != nil {
		t.Fatalf("Resign: %v", err)
	}
	next := c.primaryOf("db")
	if next == old {
		t.Fatalf("%s resigned but was elected again while others were live", old)
	}
	if err := c.nodes[old].Resign(ctx, "db"); !errors.Is(err, core.ErrNotPrimary) {
		t.Fatalf("Resign by a non-primary = %v, want ErrNotPrimary", err)
	}
}

// TestStepDownIsFast: a graceful leave hands over well before the TTL.
func TestStepDownIsFast(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"a", "b"} {
		c.start(id, db, queue)
	}
	old := c.primaryOf("db")
	ctx, cancel := context.WithTimeout(context.Background(), 5*ttl)
	defer cancel()
	start := time.Now()
	if err := c.nodes[old].StepDown(ctx); err != nil {
		t.Fatalf("StepDown: %v", err)
	}
	delete(c.nodes, old)
	c.primaryOf("db")
	c.primaryOf("queue")
	if d := time.Since(start); d > ttl {
		t.Fatalf("handover after StepDown took %v, not under the TTL %v", d, ttl)
	}
}

// TestFreshestSecondaryWins: with roles and acknowledgements in the
// roster, the secondary holding the newest checkpoint takes over.
func TestFreshestSecondaryWins(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"a", "b", "c", "d"} {
		c.start(id, db)
	}
	p := c.primaryOf("db")
	var others []string
	for _, id := range []string{"a", "b", "c", "d"} {
		if id != p {
			others = append(others, id)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*ttl)
	defer cancel()
	stale, fresh, spare := others[0], others[1], others[2]
	for _, s := range []string{stale, fresh} {
		if err := c.nodes[p].Promote(ctx, "db", s); err != nil {
			t.Fatalf("Promote(%s): %v", s, err)
		}
	}
	if err := c.nodes[p].Acknowledge(ctx, "db", stale, 5); err != nil {
		t.Fatalf("Acknowledge: %v", err)
	}
	if err := c.nodes[p].Acknowledge(ctx, "db", fresh, 9); err != nil {
		t.Fatalf("Acknowledge: %v", err)
	}
	if err := c.nodes[p].Acknowledge(ctx, "db", spare, 1); !errors.Is(err, core.ErrInvalidArgument) {
		t.Fatalf("Acknowledge of a spare = %v, want ErrInvalidArgument", err)
	}
	eventually(t, 5*ttl, func() error {
		st, _ := c.nodes[fresh].Status("db")
		if st.Role != core.RoleSecondary {
			return fmt.Errorf("%s's role is %v, want secondary", fresh, st.Role)
		}
		return nil
	})
	c.srv.Isolate(p, true)
	if got := c.primaryOf("db", p); got != fresh {
		t.Fatalf("after the primary failed, %s took over; want the freshest secondary %s (stale secondary %s, spare %s)", got, fresh, stale, spare)
	}
}

// TestStoreUnreachableAtStart: a node whose store cannot be reached keeps
// retrying, says so in its log, and joins once the store is back.
func TestStoreUnreachableAtStart(t *testing.T) {
	c := newCluster(t)
	c.srv.Isolate("a", true)
	a := c.start("a", db)
	eventually(t, 5*ttl, func() error {
		if !strings.Contains(c.logs.String(), "cannot join the cluster") {
			return errors.New("no log line about the unreachable store")
		}
		return nil
	})
	if st, _ := a.Status("db"); st.Role != core.RoleNone {
		t.Fatalf("role while the store is unreachable = %v, want none", st.Role)
	}
	c.srv.Isolate("a", false)
	if p := c.primaryOf("db"); p != "a" {
		t.Fatalf("primary = %s, want a", p)
	}
}

// TestGarbageRecords: undecodable records are reported with their keys
// and overwritten by the election; the node does not stop.
func TestGarbageRecords(t *testing.T) {
	c := newCluster(t)
	junk := c.srv.Client("operator")
	ctx := context.Background()
	for _, k := range []string{"concord/primary/db", "concord/roster/db", "concord/cand/db/a"} {
		if _, err := junk.Create(ctx, k, []byte("{not json")); err != nil {
			t.Fatal(err)
		}
	}
	c.start("a", db)
	c.start("b", db)
	p := c.primaryOf("db")
	if _, err := c.nodes[p].Fence("db"); err != nil {
		t.Fatalf("Fence: %v", err)
	}
	logs := c.logs.String()
	for _, k := range []string{`concord/primary/db`, `concord/cand/db/a`} {
		if !strings.Contains(logs, k) {
			t.Errorf("the log does not name the bad record %q:\n%s", k, logs)
		}
	}
	kv, err := junk.Get(ctx, "concord/primary/db")
	if err != nil {
		t.Fatal(err)
	}
	rec, err := core.DecodePrimary(kv)
	if err != nil || rec.Node != p {
		t.Fatalf("the garbage primary record was not replaced by a claim: %q (%v)", kv.Value, err)
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	cases := []struct {
		edit func(*core.Config)
		want string
	}{
		{func(c *core.Config) { c.NodeID = "" }, "NodeID is empty"},
		{func(c *core.Config) { c.NodeID = "a/b" }, `NodeID "a/b" contains '/'`},
		{func(c *core.Config) { c.Services = nil }, "Services is empty"},
		{func(c *core.Config) { c.Services = []core.ServiceConfig{db, db} }, "declared twice"},
		{func(c *core.Config) { c.Prefix = "x" }, "Prefix"},
		{func(c *core.Config) { c.SessionTTL = 0 }, "SessionTTL"},
		{func(c *core.Config) { c.OpTimeout = c.SessionTTL }, "OpTimeout"},
		{func(c *core.Config) { c.RetryMax = c.RetryMin / 2 }, "RetryMax"},
	}
	for _, tc := range cases {
		cfg := core.DefaultConfig()
		cfg.NodeID, cfg.Services = "a", []core.ServiceConfig{db}
		tc.edit(&cfg)
		_, err := core.Start(context.Background(), nil, cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("config error = %v, want one that says %q", err, tc.want)
		}
	}
}

// TestRejoinAfterTransientLoss: a node cut off just long enough to declare
// its session lost comes back before the store expires that session; it
// must wait for its old member record to go, then rejoin with a new
// session, and the cluster must agree again.
func TestRejoinAfterTransientLoss(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"a", "b", "c"} {
		c.start(id, db)
	}
	p := c.primaryOf("db")
	obs := c.srv.Client("observer")
	ctx := context.Background()
	before, err := obs.Get(ctx, "concord/members/"+p)
	if err != nil {
		t.Fatal(err)
	}
	old, _ := core.DecodeMember(before)
	c.srv.Isolate(p, true)
	eventually(t, 2*ttl, func() error {
		if st, _ := c.nodes[p].Status("db"); st.Role != core.RoleNone {
			return fmt.Errorf("role %v while cut off, want none once the session is lost", st.Role)
		}
		return nil
	})
	c.srv.Isolate(p, false)
	eventually(t, 10*ttl, func() error {
		kv, err := obs.Get(ctx, "concord/members/"+p)
		if err != nil {
			return err
		}
		m, err := core.DecodeMember(kv)
		if err != nil || m.Session == old.Session {
			return fmt.Errorf("member record of %s still holds the old session %s", p, old.Session)
		}
		if st, _ := c.nodes[p].Status("db"); st.Role == core.RoleNone {
			return errors.New("rejoined node reports no role")
		}
		return nil
	})
	c.primaryOf("db")
}
