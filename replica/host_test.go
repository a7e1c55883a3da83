package replica_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/concordha/concord/backends/memory"
	"github.com/concordha/concord/core"
	"github.com/concordha/concord/internal/leakcheck"
	"github.com/concordha/concord/internal/poll"
	"github.com/concordha/concord/internal/syncbuf"
	"github.com/concordha/concord/replica"
)

func TestMain(m *testing.M) { leakcheck.Main(m) }

const ttl = 600 * time.Millisecond

// kv is a provider whose state is a map, kept in memory: the service
// itself, for these tests. It records the actions it was asked for.
type kv struct {
	node string
	mu   sync.Mutex
	data map[string]string
	role core.Role
	up   bool
	// failMonitor makes every health check fail.
	failMonitor bool
	// demotedUnder is the primary the last Demote named.
	demotedUnder string
	log          []string
	// journal is shared by a member's providers: the order of actions
	// across services.
	journal *journal
}

type journal struct {
	mu      sync.Mutex
	actions []string
}

func (j *journal) index(action string) int {
	j.mu.Lock()
	defer j.mu.Unlock()
	for i, a := range j.actions {
		if a == action {
			return i
		}
	}
	return -1
}

func (p *kv) record(a string, in replica.Info) {
	p.log = append(p.log, in.Service+":"+a)
	p.journal.mu.Lock()
	p.journal.actions = append(p.journal.actions, in.Service+":"+a)
	p.journal.mu.Unlock()
}

func (p *kv) Start(_ context.Context, in replica.Info) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.record("start", in)
	p.up, p.role = true, core.RoleSpare
	return nil
}

func (p *kv) Stop(_ context.Context, in replica.Info) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.record("stop", in)
	p.up, p.role = false, core.RoleNone
	return nil
}

func (p *kv) Promote(_ context.Context, in replica.Info) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.record("promote", in)
	if !p.up {
		return errors.New("not running")
	}
	p.role = core.RolePrimary
	return nil
}

func (p *kv) Demote(_ context.Context, in replica.Info) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.record("demote", in)
	p.demotedUnder = in.Primary
	p.role = in.Role
	return nil
}

func (p *kv) Monitor(_ context.Context, in replica.Info) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case !p.up:
		return replica.ErrNotRunning
	case p.failMonitor:
		return errors.New("unhealthy")
	}
	return nil
}

func (p *kv) Checkpoint(_ context.Context, in replica.Info, w io.Writer) error {
	p.mu.Lock()
	b, err := json.Marshal(p.data)
	p.mu.Unlock()
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

func (p *kv) Restore(_ context.Context, in replica.Info, r io.Reader) error {
	var d map[string]string
	if err := json.NewDecoder(r).Decode(&d); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.data = d
	return nil
}

func (p *kv) put(k, v string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.data == nil {
		p.data = map[string]string{}
	}
	p.data[k] = v
}

func (p *kv) snapshot() (map[string]string, core.Role, []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.data), p.role, append([]string(nil), p.log...)
}

// loopback delivers checkpoints straight to the addressed Host.
type loopback struct {
	mu    sync.Mutex
	hosts map[string]*replica.Host
}

func (l *loopback) SendCheckpoint(ctx context.Context, addr, service string, st core.Stamp, body io.Reader) error {
	l.mu.Lock()
	h := l.hosts[addr]
	l.mu.Unlock()
	if h == nil {
		return fmt.Errorf("no node at %s", addr)
	}
	if err := h.Admit(service, st); err != nil {
		return err
	}
	return h.Apply(ctx, service, st, body)
}

// Call makes the peer calls the manager makes: handover.
func (l *loopback) Call(ctx context.Context, addr, name string, req, resp any) error {
	l.mu.Lock()
	h := l.hosts[addr]
	l.mu.Unlock()
	if h == nil {
		return fmt.Errorf("no node at %s", addr)
	}
	if name != "handover" {
		return fmt.Errorf("unknown call %q", name)
	}
	b, _ := json.Marshal(req)
	var r struct{ Service, To string }
	if err := json.Unmarshal(b, &r); err != nil {
		return err
	}
	return h.Handover(ctx, r.Service, r.To)
}

type member struct {
	journal journal
	node    *core.Node
	host    *replica.Host
	prov    map[string]*kv
	cancel  context.CancelFunc
	done    chan error
}

type cluster struct {
	t       testing.TB
	srv     *memory.Server
	net     *loopback
	members map[string]*member
	logs    *syncbuf.Buffer
	base    string
	started int
}

func newCluster(t testing.TB) *cluster {
	c := &cluster{t: t, srv: memory.New(memory.Options{}), net: &loopback{hosts: map[string]*replica.Host{}}, members: map[string]*member{}, logs: &syncbuf.Buffer{}}
	// The members' data directories go under one made first, so that
	// it is removed after they stop (cleanups run last first).
	c.base = t.TempDir()
	t.Cleanup(func() {
		for id := range c.members {
			c.stop(id)
		}
		c.srv.Close()
		if t.Failed() {
			t.Logf("logs:\n%s", c.logs.String())
		}
	})
	return c
}

type svc struct {
	name, dep string
	prio      int
	tune      func(*replica.ServiceSpec)
	// manager makes this the replica manager's service (name ignored).
	manager *replica.ManagerConfig
}

func (c *cluster) start(id string, svcs ...svc) *member {
	c.t.Helper()
	log := slog.New(slog.NewTextHandler(c.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg := core.DefaultConfig()
	cfg.NodeID, cfg.Address = id, id
	cfg.SessionTTL, cfg.OpTimeout = ttl, ttl/3
	cfg.RetryMin, cfg.RetryMax = 10*time.Millisecond, 100*time.Millisecond
	cfg.Logger = log
	m := &member{prov: map[string]*kv{}, done: make(chan error, 1)}
	var specs []replica.ServiceSpec
	for _, s := range svcs {
		if s.manager != nil {
			mc := *s.manager
			mc.Node, mc.Store, mc.Caller, mc.Logger = id, c.srv.Client(id+"-manager"), c.net, log
			mc.Keys, _ = core.NewKeys(cfg.Prefix)
			cfg.Services = append(cfg.Services, core.ServiceConfig{Name: replica.ManagerService})
			specs = append(specs, replica.ServiceSpec{
				Name: replica.ManagerService, Provider: replica.NewManager(mc),
				CheckpointInterval: time.Hour, MonitorInterval: 50 * time.Millisecond, MaxRestarts: 3, RestartWindow: time.Minute,
			})
			continue
		}
		cfg.Services = append(cfg.Services, core.ServiceConfig{Name: s.name, Priority: s.prio, DependsOn: s.dep})
		p := &kv{node: id, journal: &m.journal}
		m.prov[s.name] = p
		sp := replica.ServiceSpec{
			Name: s.name, DependsOn: s.dep, Provider: p, Secondaries: 1, Endpoint: id + ".example:" + s.name,
			CheckpointInterval: 50 * time.Millisecond, MonitorInterval: 20 * time.Millisecond,
			MaxRestarts: 2, RestartWindow: time.Minute,
		}
		if s.tune != nil {
			s.tune(&sp)
		}
		specs = append(specs, sp)
	}
	n, err := core.Start(context.Background(), c.srv.Client(id), cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	c.started++
	keys, _ := core.NewKeys(cfg.Prefix)
	h, err := replica.New(replica.Config{
		Node: id, DataDir: filepath.Join(c.base, fmt.Sprintf("%s-%d", id, c.started)), Services: specs, Sender: c.net, Logger: log,
		Store: c.srv.Client(id + "-host"), Keys: keys,
	}, n)
	if err != nil {
		c.t.Fatal(err)
	}
	m.node, m.host = n, h
	c.net.mu.Lock()
	c.net.hosts[id] = h
	c.net.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	go func() { m.done <- h.Run(ctx) }()
	c.members[id] = m
	return m
}

// stop closes a member's node (its session ends at once) and its host.
func (c *cluster) stop(id string) {
	m := c.members[id]
	if m == nil {
		return
	}
	delete(c.members, id)
	c.net.mu.Lock()
	delete(c.net.hosts, id)
	c.net.mu.Unlock()
	_ = m.node.Close()
	m.cancel()
	<-m.done
}

func eventually(t testing.TB, within time.Duration, cond func() error) {
	t.Helper()
	poll.Eventually(t, within, "condition", cond)
}

// spare returns a running member that is neither prim nor sec.
func (c *cluster) spare(prim, sec string) string {
	for id := range c.members {
		if id != prim && id != sec {
			return id
		}
	}
	c.t.Fatalf("no member besides %s and %s", prim, sec)
	return ""
}

// settled waits until one member's provider serves svc as primary and
// the roster holds want live secondaries that applied the primary's
// state; it returns the primary and the secondaries.
func (c *cluster) settled(svc string, want int) (string, []string) {
	c.t.Helper()
	var prim string
	var secs []string
	eventually(c.t, 20*ttl, func() error {
		prim, secs = "", nil
		for id, m := range c.members {
			p, ok := m.prov[svc]
			if !ok {
				continue // not a provider of svc
			}
			st, _ := m.node.Status(svc)
			_, role, _ := p.snapshot()
			if st.Role == core.RolePrimary && role == core.RolePrimary {
				if prim != "" {
					return fmt.Errorf("two primaries: %s and %s", prim, id)
				}
				prim = id
			}
		}
		if prim == "" {
			return errors.New("no primary provider yet")
		}
		ctx, cancel := context.WithTimeout(context.Background(), ttl)
		defer cancel()
		r, err := c.members[prim].node.Roster(ctx, svc)
		if err != nil {
			return err
		}
		pdata, _, _ := c.members[prim].prov[svc].snapshot()
		for _, e := range r.Secondaries {
			if e.Node == prim {
				// A secondary just elected, before it prunes itself.
				return fmt.Errorf("roster still lists the primary %s", prim)
			}
			m, ok := c.members[e.Node]
			if !ok {
				return fmt.Errorf("roster lists departed %s", e.Node)
			}
			d, _, _ := m.prov[svc].snapshot()
			if !maps.Equal(d, pdata) {
				return fmt.Errorf("secondary %s holds %v, primary %v", e.Node, d, pdata)
			}
			secs = append(secs, e.Node)
		}
		if len(secs) != want {
			return fmt.Errorf("%d secondaries %v, want %d", len(secs), secs, want)
		}
		return nil
	})
	return prim, secs
}

func TestSecondariesFailoverAndSyncCheckpoints(t *testing.T) {
	c := newCluster(t)
	sync1 := func(sp *replica.ServiceSpec) { sp.SyncAcks = 1 }
	for _, id := range []string{"a", "b", "c"} {
		c.start(id, svc{name: "db", tune: sync1})
	}
	prim, secs := c.settled("db", 1)
	p := c.members[prim]
	// A synchronous checkpoint: once it returns, the write is on a
	// secondary and its acknowledgement is in the store.
	for i := range 20 {
		p.prov["db"].put(fmt.Sprintf("k%d", i), "v")
		seq, acks, err := p.host.Checkpoint(context.Background(), "db")
		if err != nil || acks < 1 {
			t.Fatalf("Checkpoint: seq %d acks %d err %v", seq, acks, err)
		}
	}
	want, _, _ := p.prov["db"].snapshot()
	sec := secs[0]
	if d, _, _ := c.members[sec].prov["db"].snapshot(); !maps.Equal(d, want) {
		t.Fatalf("secondary %s holds %v after synchronous checkpoints, want %v", sec, d, want)
	}
	// A non-primary cannot be asked for a checkpoint.
	if _, _, err := c.members[sec].host.Checkpoint(context.Background(), "db"); !errors.Is(err, core.ErrNotPrimary) {
		t.Fatalf("Checkpoint on a secondary: %v, want ErrNotPrimary", err)
	}

	c.stop(prim)
	next, secs2 := c.settled("db", 1)
	if next != sec {
		t.Fatalf("after the primary left, %s took over, want the secondary %s", next, sec)
	}
	if d, _, _ := c.members[next].prov["db"].snapshot(); !maps.Equal(d, want) {
		t.Fatalf("new primary holds %v, want every acknowledged write %v", d, want)
	}
	// The spare was promoted to keep one secondary.
	if secs2[0] == prim || secs2[0] == next {
		t.Fatalf("secondaries after failover: %v", secs2)
	}
}

func TestStaleCheckpointRefused(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"a", "b"} {
		c.start(id, svc{name: "db"})
	}
	_, secs := c.settled("db", 1)
	h := c.members[secs[0]].host
	err := h.Admit("db", core.Stamp{Epoch: 0, Token: 1, Seq: 1})
	if !errors.Is(err, core.ErrStaleCheckpoint) {
		t.Fatalf("Admit of an old primary's checkpoint: %v, want ErrStaleCheckpoint", err)
	}
	if err := h.Apply(context.Background(), "db", core.Stamp{Token: 1, Seq: 1}, strings.NewReader(`{"x":"y"}`)); !errors.Is(err, core.ErrStaleCheckpoint) {
		t.Fatalf("Apply of an old checkpoint: %v, want ErrStaleCheckpoint", err)
	}
	if d, _, _ := c.members[secs[0]].prov["db"].snapshot(); d["x"] == "y" {
		t.Fatal("a refused checkpoint was applied")
	}
}

func TestFailingMonitorRestartsThenFailsOver(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"a", "b", "c"} {
		c.start(id, svc{name: "db"})
	}
	prim, _ := c.settled("db", 1)
	bad := c.members[prim].prov["db"]
	bad.mu.Lock()
	bad.failMonitor = true
	bad.mu.Unlock()
	next, _ := c.settled("db", 1)
	eventually(t, 20*ttl, func() error {
		next, _ = c.settled("db", 1)
		if next == prim {
			return errors.New("the failing primary is still primary")
		}
		return nil
	})
	_, _, log := bad.snapshot()
	starts := 0
	for _, a := range log {
		if a == "db:start" {
			starts++
		}
	}
	// One start at boot, MaxRestarts (2) restarts as primary, and one
	// more as a spare after resigning, at least.
	if starts < 4 {
		t.Fatalf("the failing primary started %d times, want at least 4 (restarts before failover): %v", starts, log)
	}
}

func TestHandoverToNode(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"a", "b", "c"} {
		c.start(id, svc{name: "db"})
	}
	prim, secs := c.settled("db", 1)
	spare := c.spare(prim, secs[0])
	c.members[prim].prov["db"].put("last", "write")
	if err := c.members[prim].host.Handover(context.Background(), "db", spare); err != nil {
		t.Fatalf("Handover to %s: %v", spare, err)
	}
	next, _ := c.settled("db", 1)
	if next != spare {
		t.Fatalf("handover to %s made %s primary", spare, next)
	}
	if d, _, _ := c.members[next].prov["db"].snapshot(); d["last"] != "write" {
		t.Fatalf("the new primary lacks the last write: %v", d)
	}
	// The old primary was demoted without being told it is the primary.
	old := c.members[prim].prov["db"]
	old.mu.Lock()
	under := old.demotedUnder
	old.mu.Unlock()
	if under == prim {
		t.Fatalf("the old primary %s was demoted naming itself the primary", prim)
	}
}

func TestDependentsPromotedAfterAndDemotedBefore(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"a", "b"} {
		c.start(id, svc{name: "db"}, svc{name: "app", dep: "db"})
	}
	prim, _ := c.settled("db", 1)
	if p, _ := c.settled("app", 1); p != prim {
		t.Fatalf("app's primary %s is not db's %s", p, prim)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*ttl)
	defer cancel()
	if err := c.members[prim].node.Resign(ctx, "db"); err != nil {
		t.Fatal(err)
	}
	next, _ := c.settled("db", 1)
	if p, _ := c.settled("app", 1); p != next || next == prim {
		t.Fatalf("after db moved from %s to %s, app is on %s", prim, next, p)
	}
	// The old primary demoted app before db; the new one promoted db
	// before app.
	old, nw := &c.members[prim].journal, &c.members[next].journal
	if a, d := old.index("app:demote"), old.index("db:demote"); a < 0 || d < 0 || a > d {
		t.Fatalf("old primary's actions %v: want app demoted before db", old.actions)
	}
	if d, a := nw.index("db:promote"), nw.index("app:promote"); a < 0 || d < 0 || d > a {
		t.Fatalf("new primary's actions %v: want db promoted before app", nw.actions)
	}
}
