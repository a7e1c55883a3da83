package replica

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/concordha/concord/core"
)

// Sender delivers a checkpoint to the node API at addr and returns once
// that node applied it. An error wraps core.ErrStaleCheckpoint when the
// receiver refused the checkpoint as stale.
type Sender interface {
	SendCheckpoint(ctx context.Context, addr, service string, stamp core.Stamp, body io.Reader) error
}

// ServiceSpec is how one service is run on this node.
type ServiceSpec struct {
	Name string
	// DependsOn is the service whose primary this one's shares; its
	// provider is promoted first and demoted last.
	DependsOn string
	// Provider runs the service; nil makes it election-only.
	Provider Provider
	// Secondaries is how many secondaries the primary keeps.
	Secondaries int
	// SyncAcks is how many secondaries must acknowledge a checkpoint
	// before an on-demand checkpoint (Host.Checkpoint) returns.
	SyncAcks int
	// CheckpointInterval is the period of the primary's checkpoints.
	CheckpointInterval time.Duration
	// MonitorInterval is the period of health checks.
	MonitorInterval time.Duration
	// MaxRestarts local restarts within RestartWindow are tried before
	// the node resigns the service (claim 7).
	MaxRestarts   int
	RestartWindow time.Duration
	// ActionTimeout bounds each provider call (a resource agent has its
	// own per-action timeouts as well). Zero means 2 minutes.
	ActionTimeout time.Duration
	// Endpoint is the service's client address on this node (host:port).
	// Once promoted here, the host publishes it as the service's
	// endpoint (core.EndpointRecord), if Config.Store is set.
	Endpoint string
	// Drain is how long Handover keeps the service serving as primary
	// after it marked the endpoint draining, so that clients finish what
	// they started while their new connections are held. Zero: no drain.
	// Only with Endpoint.
	Drain time.Duration
}

// Config configures a Host.
type Config struct {
	// Node is this node's ID.
	Node string
	// DataDir holds the node's replica state: the stamp of the last
	// checkpoint applied to each service, and checkpoint spools.
	DataDir string
	// Services run on this node, each also declared to the core.Node.
	Services []ServiceSpec
	// Sender delivers checkpoints to peers; required if any service has a
	// provider.
	Sender Sender
	// Plan, if set, returns the replica manager's plan for a service: the
	// order in which to make providers secondaries (see PlanRecord). The
	// primary follows it when it promotes spares; without a plan it
	// promotes by rank.
	Plan func(ctx context.Context, service string) ([]string, error)
	// Store and Keys, if set, are where the primary publishes its
	// services' endpoints.
	Store core.Store
	Keys  core.Keys
	// SyncTimeout bounds Host.Checkpoint. Zero means 30 seconds.
	SyncTimeout time.Duration
	// Logger receives structured logs; nil means slog.Default().
	Logger *slog.Logger
}

// Host runs this node's providers as the core.Node's role changes say
// (FIG. 5): a provider starts as a spare, is promoted when the node wins
// the service and demoted when it stops being primary. On the primary it
// sends checkpoints to the secondaries and promotes spares after a full
// state transfer; on the others it applies checkpoints through a
// core.Gate. It restarts failing services, and resigns a service whose
// restarts do not help.
type Host struct {
	cfg   Config
	node  *core.Node
	log   *slog.Logger
	svcs  map[string]*hosted
	order []string // dependencies before their dependents
	kick  chan struct{}

	wg sync.WaitGroup
}

// hosted is one service on this node.
type hosted struct {
	spec ServiceSpec
	dir  string

	// call serializes provider calls (Provider's contract).
	call sync.Mutex
	// trans serializes role transitions (promote, demote, restart), each
	// of which decides on the newest event under it.
	trans sync.Mutex

	mu      sync.Mutex
	ev      core.Event // the newest event from the node
	role    core.Role  // the role the provider was last brought to; RoleNone: not running
	gate    core.Gate
	tenure  context.CancelFunc // the primary's checkpoint loop, while primary
	waiters []*syncWaiter
	demand  chan struct{}
	// cycle is held by a checkpoint cycle and by a handover, so that
	// the two never interleave.
	cycle    sync.Mutex
	seq      int64          // last checkpoint seq of this tenure
	missed   map[string]int // checkpoints each secondary failed in a row
	restarts []time.Time
}

// state returns the newest event and the provider's role.
func (s *hosted) state() (core.Event, core.Role) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ev, s.role
}

type syncWaiter struct {
	done chan syncResult
}

type syncResult struct {
	seq  int64
	acks int
	err  error
}

// New checks cfg and returns a Host for node. Call Run to start it.
func New(cfg Config, node *core.Node) (*Host, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.SyncTimeout <= 0 {
		cfg.SyncTimeout = 30 * time.Second
	}
	h := &Host{cfg: cfg, node: node, log: cfg.Logger.With("node", cfg.Node), svcs: map[string]*hosted{}, kick: make(chan struct{}, 1)}
	var errs []error
	for i, sp := range cfg.Services {
		if _, dup := h.svcs[sp.Name]; dup {
			errs = append(errs, fmt.Errorf("services[%d]: %q is declared twice", i, sp.Name))
			continue
		}
		if sp.ActionTimeout <= 0 {
			sp.ActionTimeout = 2 * time.Minute
		}
		if sp.Provider != nil {
			switch {
			case sp.CheckpointInterval <= 0 || sp.MonitorInterval <= 0 || sp.RestartWindow <= 0:
				errs = append(errs, fmt.Errorf("services[%d] (%q): checkpoint_interval, monitor_interval and restart_window must be positive", i, sp.Name))
			case sp.SyncAcks < 0 || sp.SyncAcks > sp.Secondaries:
				errs = append(errs, fmt.Errorf("services[%d] (%q): sync_acks %d must be between 0 and secondaries (%d)", i, sp.Name, sp.SyncAcks, sp.Secondaries))
			case cfg.Sender == nil:
				errs = append(errs, fmt.Errorf("services[%d] (%q) has a provider but the host has no Sender", i, sp.Name))
			}
		}
		h.svcs[sp.Name] = &hosted{spec: sp, dir: filepath.Join(cfg.DataDir, sp.Name), demand: make(chan struct{}, 1)}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for _, sp := range cfg.Services {
		if d := sp.DependsOn; d != "" {
			if _, ok := h.svcs[d]; !ok {
				return nil, fmt.Errorf("service %q depends on %q, which the host does not run", sp.Name, d)
			}
		}
	}
	h.order = dependencyOrder(cfg.Services)
	for _, name := range h.order {
		s := h.svcs[name]
		if s.spec.Provider == nil {
			continue
		}
		if err := os.MkdirAll(s.dir, 0o700); err != nil {
			return nil, fmt.Errorf("replica data dir %q: %w (check node.data_dir)", s.dir, err)
		}
		st, err := loadStamp(s.dir)
		if err != nil {
			return nil, err
		}
		if st.Token > 0 {
			s.gate.Applied(st)
		}
	}
	return h, nil
}

// dependencyOrder lists services with every dependency before its
// dependents (the config has no cycles: core validates it).
func dependencyOrder(specs []ServiceSpec) []string {
	dep := map[string]string{}
	for _, s := range specs {
		dep[s.Name] = s.DependsOn
	}
	depth := func(n string) int {
		d := 0
		for seen := map[string]bool{}; dep[n] != "" && !seen[n]; n = dep[n] {
			seen[n] = true
			d++
		}
		return d
	}
	var out []string
	for _, s := range specs {
		out = append(out, s.Name)
	}
	slices.SortStableFunc(out, func(a, b string) int { return depth(a) - depth(b) })
	return out
}

// Run starts every provider as a spare, then follows the node's role
// changes until ctx ends or the node stops; then it demotes and stops
// every provider (dependents first) and returns.
func (h *Host) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer h.shutdown()
	defer cancel() // runs first: the loops end before the providers stop
	for _, name := range h.order {
		s := h.svcs[name]
		if s.spec.Provider == nil {
			continue
		}
		if err := h.start(ctx, s); err != nil {
			h.log.Error("starting the service failed; the monitor retries it", "service", name, "err", err)
		}
		h.wg.Add(1)
		go h.monitorLoop(ctx, s)
	}
	events := h.node.Events()
	// A periodic pass mends what no event will: a promotion that waited
	// for a dependency, or a transition that failed.
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			h.reconcile(ctx)
			h.refill(ctx)
		case <-h.kick:
			h.reconcile(ctx)
		case ev, ok := <-events:
			if !ok {
				return nil
			}
			h.take(ev)
			// Take every event already queued, so that the transitions of
			// a dependency and its dependents are ordered together.
		drain:
			for {
				select {
				case ev, ok := <-events:
					if !ok {
						break drain
					}
					h.take(ev)
				default:
					break drain
				}
			}
			h.reconcile(ctx)
		}
	}
}

func (h *Host) take(ev core.Event) {
	s, ok := h.svcs[ev.Service]
	if !ok {
		return
	}
	s.mu.Lock()
	was := s.ev
	s.ev = ev
	if ev.Token > 0 {
		s.gate.Observe(ev.Epoch, ev.Token)
	}
	s.mu.Unlock()
	if ev.Role == core.RolePrimary && was.Role != core.RolePrimary {
		h.log.Info("this node is primary", "service", ev.Service, "epoch", ev.Epoch, "token", ev.Token)
	} else if ev.Role != core.RolePrimary && was.Role == core.RolePrimary {
		h.log.Info("this node is no longer primary", "service", ev.Service, "role", ev.Role.String(), "primary", ev.Primary)
	}
}

// reconcile brings every provider to the role the node holds: demotions
// first, dependents before their dependencies; then promotions,
// dependencies before their dependents.
func (h *Host) reconcile(ctx context.Context) {
	for i := len(h.order) - 1; i >= 0; i-- {
		s := h.svcs[h.order[i]]
		if s.spec.Provider == nil {
			continue
		}
		s.trans.Lock()
		if ev, role := s.state(); role == core.RolePrimary && ev.Role != core.RolePrimary {
			h.demote(ctx, s, ev)
		}
		s.trans.Unlock()
	}
	for _, name := range h.order {
		s := h.svcs[name]
		if s.spec.Provider == nil {
			continue
		}
		if d := s.spec.DependsOn; d != "" && h.svcs[d].spec.Provider != nil && h.roleOf(d) != core.RolePrimary {
			// The dependency is not serving here (yet): it comes first.
			// Its promotion (in this pass, or by a restart, which kicks
			// the loop) lets this one follow.
			continue
		}
		s.trans.Lock()
		if ev, role := s.state(); ev.Role == core.RolePrimary && role != core.RolePrimary {
			h.promote(ctx, s, ev)
		}
		s.trans.Unlock()
	}
}

// refill starts a checkpoint round at once for every service this node
// serves as primary that has fewer secondaries than it wants while a
// spare is there to promote, instead of waiting for the next interval.
func (h *Host) refill(ctx context.Context) {
	var members map[string]core.MemberRecord
	for _, name := range h.order {
		s := h.svcs[name]
		if _, role := s.state(); s.spec.Provider == nil || role != core.RolePrimary || s.spec.Secondaries == 0 {
			continue
		}
		if members == nil {
			var err error
			if members, err = h.node.Members(ctx); err != nil {
				return
			}
		}
		r, err := h.node.Roster(ctx, name)
		if err != nil {
			continue
		}
		secs, spares := 0, 0
		for id, m := range members {
			if _, ok := m.Services[name]; !ok || id == h.cfg.Node {
				continue
			}
			if i := r.Find(id); i >= 0 && r.Secondaries[i].Session == m.Session {
				secs++
			} else {
				spares++
			}
		}
		if secs < s.spec.Secondaries && spares > 0 {
			select {
			case s.demand <- struct{}{}:
			default:
			}
		}
	}
}

func (h *Host) roleOf(name string) core.Role {
	s := h.svcs[name]
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.role
}

func (h *Host) info(s *hosted, ev core.Event, role core.Role) Info {
	in := Info{Service: s.spec.Name, Node: h.cfg.Node, Role: role, Primary: ev.Primary, Epoch: ev.Epoch, Token: ev.Token}
	if role != core.RolePrimary && in.Primary == h.cfg.Node {
		// This node gives the role up (a resignation, a lost session):
		// the record still names it, but it is no longer the primary,
		// and the next one is not known yet.
		in.Primary = ""
	}
	return in
}

// do runs one provider call under the service's call lock, bounded by
// the action timeout.
func (h *Host) do(ctx context.Context, s *hosted, f func(context.Context) error) error {
	s.call.Lock()
	defer s.call.Unlock()
	actx, cancel := context.WithTimeout(ctx, s.spec.ActionTimeout)
	defer cancel()
	return f(actx)
}

func (h *Host) start(ctx context.Context, s *hosted) error {
	s.mu.Lock()
	ev := s.ev
	s.mu.Unlock()
	in := h.info(s, ev, core.RoleSpare)
	if err := h.do(ctx, s, func(c context.Context) error { return s.spec.Provider.Start(c, in) }); err != nil {
		return fmt.Errorf("start %q: %w", s.spec.Name, err)
	}
	s.mu.Lock()
	s.role = core.RoleSpare
	s.mu.Unlock()
	return nil
}

func (h *Host) promote(ctx context.Context, s *hosted, ev core.Event) {
	if _, err := h.node.Fence(s.spec.Name); err != nil {
		// The event is already stale: the node lost the role (its next
		// event says so).
		return
	}
	s.mu.Lock()
	running := s.role != core.RoleNone
	s.mu.Unlock()
	if !running {
		if err := h.start(ctx, s); err != nil {
			h.giveUpPrimary(ctx, s, fmt.Errorf("the service is not running and did not start: %w", err))
			return
		}
	}
	in := h.info(s, ev, core.RolePrimary)
	if err := h.do(ctx, s, func(c context.Context) error { return s.spec.Provider.Promote(c, in) }); err != nil {
		h.giveUpPrimary(ctx, s, fmt.Errorf("promote: %w", err))
		return
	}
	tctx, cancel := context.WithCancel(ctx)
	s.mu.Lock()
	if s.tenure != nil {
		s.tenure() // a tenure of this node's that was never ended
	}
	s.role = core.RolePrimary
	s.seq = 0
	s.tenure = cancel
	s.mu.Unlock()
	h.log.Info("service promoted", "service", s.spec.Name, "epoch", ev.Epoch, "token", ev.Token)
	h.wg.Add(1)
	go h.checkpointLoop(tctx, s, ev)
}

// giveUpPrimary resigns a service this node cannot serve, so that another
// node takes over (its dependents go with it).
func (h *Host) giveUpPrimary(ctx context.Context, s *hosted, why error) {
	h.log.Error("cannot serve as primary; resigning so that another node takes over", "service", s.spec.Name, "err", why)
	rctx, cancel := context.WithTimeout(ctx, s.spec.ActionTimeout)
	defer cancel()
	if err := h.node.Resign(rctx, s.spec.Name); err != nil && !errors.Is(err, core.ErrNotPrimary) {
		h.log.Error("resign failed; the service stays without a serving primary until the session ends", "service", s.spec.Name, "err", err)
	}
}

func (h *Host) demote(ctx context.Context, s *hosted, ev core.Event) {
	s.mu.Lock()
	if s.tenure != nil {
		s.tenure()
		s.tenure = nil
	}
	waiters := s.waiters
	s.waiters = nil
	s.mu.Unlock()
	for _, w := range waiters {
		w.done <- syncResult{err: fmt.Errorf("%w: %q: this node stopped being primary", core.ErrNotPrimary, s.spec.Name)}
	}
	role := ev.Role
	if role == core.RoleNone || role == core.RolePrimary {
		// RolePrimary: the session is gone, and the event saying so has
		// not come yet.
		role = core.RoleSpare
	}
	in := h.info(s, ev, role)
	err := h.do(ctx, s, func(c context.Context) error { return s.spec.Provider.Demote(c, in) })
	if err != nil {
		// A primary that cannot be demoted must not keep serving: stop it.
		h.log.Error("demote failed; stopping the service so that it cannot serve as a stale primary", "service", s.spec.Name, "err", err)
		if serr := h.do(ctx, s, func(c context.Context) error { return s.spec.Provider.Stop(c, in) }); serr != nil {
			h.log.Error("stop after a failed demote failed too", "service", s.spec.Name, "err", serr)
		}
		s.mu.Lock()
		s.role = core.RoleNone
		s.mu.Unlock()
		return
	}
	s.mu.Lock()
	s.role = role
	s.mu.Unlock()
	h.log.Info("service demoted", "service", s.spec.Name, "role", role.String())
}

// shutdown waits for the Host's goroutines (their context has ended),
// then stops every provider, dependents first.
func (h *Host) shutdown() {
	h.wg.Wait()
	for i := len(h.order) - 1; i >= 0; i-- {
		s := h.svcs[h.order[i]]
		s.mu.Lock()
		if s.tenure != nil {
			s.tenure()
			s.tenure = nil
		}
		ev, role := s.ev, s.role
		s.mu.Unlock()
		if s.spec.Provider == nil || role == core.RoleNone {
			continue
		}
		in := h.info(s, ev, core.RoleNone)
		if err := h.do(context.Background(), s, func(c context.Context) error { return s.spec.Provider.Stop(c, in) }); err != nil {
			h.log.Error("stopping the service failed", "service", s.spec.Name, "err", err)
		}
		s.mu.Lock()
		s.role = core.RoleNone
		s.mu.Unlock()
	}
	for _, s := range h.svcs {
		s.mu.Lock()
		for _, w := range s.waiters {
			w.done <- syncResult{err: fmt.Errorf("%w: the node is stopping", core.ErrClosed)}
		}
		s.waiters = nil
		s.mu.Unlock()
	}
}
