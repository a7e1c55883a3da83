package replica

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/concordha/concord/core"
)

// ManagerService is the service the replica manager runs as: every node
// with a node API provides it, and the cluster elects its primary with
// the same algorithm as any other service's, one tier up (the replica
// manager manager of the patent). Names starting with "concord." are
// reserved for it.
const ManagerService = "concord.manager"

// Caller makes authenticated calls to other nodes' APIs.
type Caller interface {
	Call(ctx context.Context, addr, name string, req, resp any) error
}

// ManagerConfig configures a Manager.
type ManagerConfig struct {
	// Node is this node's ID.
	Node string
	// Keys is the cluster's key layout; Store the cluster's store.
	Keys  core.Keys
	Store core.Store
	// Caller reaches the primaries of services for handovers.
	Caller Caller
	// Interval is the period of the manager's rounds. Zero means 1s.
	Interval time.Duration
	// DepartedGrace is how long a node or a service must have been gone
	// before its records are removed. Zero means 1 hour.
	DepartedGrace time.Duration
	// HandoverTimeout bounds a switchover. Zero means 1 minute.
	HandoverTimeout time.Duration
	// Logger: nil means slog.Default().
	Logger *slog.Logger
}

// Manager is the replica manager (FIG. 2, 3): the management work of the
// cluster, done by one node at a time. It is a Provider, run by a Host
// as the service ManagerService: Promote starts its rounds with the
// fencing token the node won, Demote and Stop end them. Its state lives
// in the store under Keys.Manager, and every write it makes is guarded by
// its claim of the manager service where the store has transactions, so a
// new manager takes up where the old one stopped and a deposed one
// changes nothing.
//
// Each round it carries out switchover requests (concord switchover),
// writes each service's role plan (which spares the primary makes
// secondaries first: the least loaded nodes), and removes the records of
// nodes and services gone for longer than DepartedGrace, where the store
// can delete conditionally.
type Manager struct {
	cfg ManagerConfig
	log *slog.Logger

	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
	err    error // why the last rounds ended, if not by Demote or Stop

	// wake is kicked by the switchover watch.
	wake chan struct{}

	// warned holds the config problems already logged (by audit).
	warned map[string]bool
}

var _ Provider = (*Manager)(nil)

// NewManager returns a Manager; it runs only while promoted.
func NewManager(cfg ManagerConfig) *Manager {
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if cfg.DepartedGrace <= 0 {
		cfg.DepartedGrace = time.Hour
	}
	if cfg.HandoverTimeout <= 0 {
		cfg.HandoverTimeout = time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Manager{cfg: cfg, log: cfg.Logger.With("node", cfg.Node, "service", ManagerService), wake: make(chan struct{}, 1)}
}

// Start does nothing: the manager works only as primary.
func (m *Manager) Start(context.Context, Info) error { return nil }

// Stop ends the rounds.
func (m *Manager) Stop(context.Context, Info) error { m.halt(); return nil }

// Demote ends the rounds.
func (m *Manager) Demote(context.Context, Info) error { m.halt(); return nil }

// Promote starts the rounds under the fencing token in.Token.
func (m *Manager) Promote(_ context.Context, in Info) error {
	m.halt()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	m.mu.Lock()
	m.cancel, m.done, m.err = cancel, done, nil
	m.mu.Unlock()
	go func() {
		defer close(done)
		err := m.run(ctx, in.Token)
		if ctx.Err() == nil {
			m.mu.Lock()
			m.err = err
			m.mu.Unlock()
		}
	}()
	m.log.Info("replica manager running here", "token", in.Token)
	return nil
}

// Monitor fails once the rounds ended on their own (the manager lost its
// claim, or the store refused it).
func (m *Manager) Monitor(context.Context, Info) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.err
}

// Checkpoint writes nothing: the manager's state is in the store.
func (m *Manager) Checkpoint(context.Context, Info, io.Writer) error { return nil }

// Restore reads nothing: the manager's state is in the store.
func (m *Manager) Restore(context.Context, Info, io.Reader) error { return nil }

func (m *Manager) halt() {
	m.mu.Lock()
	cancel, done := m.cancel, m.done
	m.cancel, m.done = nil, nil
	m.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

func (m *Manager) run(ctx context.Context, token int64) error {
	wctx, wcancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); m.watchRequests(wctx) }()
	defer func() { wcancel(); wg.Wait() }()
	t := time.NewTicker(m.cfg.Interval)
	defer t.Stop()
	for {
		err := m.round(ctx, token)
		if errors.Is(err, errDeposed) {
			m.log.Warn("the replica manager's claim moved: stopping its rounds", "token", token)
			return err
		}
		if err != nil && ctx.Err() == nil {
			m.log.Warn("replica manager round failed; retrying", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-m.wake:
		}
	}
}

// watchRequests wakes the rounds when a switchover request is written.
func (m *Manager) watchRequests(ctx context.Context) {
	for ctx.Err() == nil {
		ch, err := m.cfg.Store.Watch(ctx, m.cfg.Keys.Switchovers())
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(m.cfg.Interval):
			}
			continue
		}
		for range ch {
			select {
			case m.wake <- struct{}{}:
			default:
			}
		}
	}
}

var errDeposed = errors.New("this node no longer holds the replica manager's claim")

// fence is the manager's claim as read at the start of a round.
type fence struct {
	token int64
	guard core.Guard
}

func (m *Manager) round(ctx context.Context, token int64) error {
	st := m.cfg.Store
	kv, err := st.Get(ctx, m.cfg.Keys.Primary(ManagerService))
	if err != nil {
		return err
	}
	rec, err := core.DecodePrimary(kv)
	if err != nil {
		return err
	}
	if rec.Node != m.cfg.Node || kv.Revision != token {
		return errDeposed
	}
	f := fence{token: token, guard: core.Guard{Key: kv.Key, Revision: kv.Revision}}
	members, err := m.members(ctx)
	if err != nil {
		return err
	}
	m.audit(members)
	var errs []error
	if err := m.switchovers(ctx, f, members); err != nil {
		errs = append(errs, err)
	}
	if err := m.plans(ctx, f, members); err != nil {
		errs = append(errs, err)
	}
	if err := m.collect(ctx, f, members); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (m *Manager) members(ctx context.Context) (map[string]core.MemberRecord, error) {
	snap, err := m.cfg.Store.List(ctx, m.cfg.Keys.Members())
	if err != nil {
		return nil, err
	}
	out := map[string]core.MemberRecord{}
	for _, kv := range snap.KVs {
		if rec, err := core.DecodeMember(kv); err == nil {
			out[rec.Node] = rec
		}
	}
	return out, nil
}

// write stores rec at key (created if version is 0), guarded by the
// manager's claim where the store has transactions.
func (m *Manager) write(ctx context.Context, f fence, key string, version int64, rec any) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	op := core.Op{Kind: core.OpCAS, Key: key, Value: b, Version: version, Guards: []core.Guard{f.guard}}
	if version == 0 {
		op.Kind = core.OpCreate
	}
	if tx, ok := m.cfg.Store.(core.Txner); ok && tx.MaxTxnOps() > 0 {
		res, err := tx.Txn(ctx, []core.Op{op})
		if err != nil {
			return err
		}
		if res[0].Err != nil && op.Kind == core.OpCAS && errors.Is(res[0].Err, core.ErrConflict) {
			// Either the record or our claim moved; the next round tells.
			return fmt.Errorf("%s: %w", key, res[0].Err)
		}
		return res[0].Err
	}
	if version == 0 {
		_, err = m.cfg.Store.Create(ctx, key, b)
	} else {
		_, err = m.cfg.Store.CompareAndSwap(ctx, key, b, version)
	}
	return err
}

// audit logs, once each, the problems in the services' declarations
// across nodes that no single node can see in its own config: a
// depends_on that differs between providers, and a provider of a
// dependency that does not provide its dependent (if it becomes the
// dependency's primary, the dependent has no primary).
func (m *Manager) audit(members map[string]core.MemberRecord) {
	var problems []string
	deps := map[string]map[string][]string{} // service -> declared dependency -> nodes
	for _, id := range sortedNames(keysOf(members)) {
		for svc, sr := range members[id].Services {
			if deps[svc] == nil {
				deps[svc] = map[string][]string{}
			}
			deps[svc][sr.DependsOn] = append(deps[svc][sr.DependsOn], id)
		}
	}
	for _, svc := range sortedNames(keysOf(deps)) {
		if len(deps[svc]) > 1 {
			var parts []string
			for _, d := range sortedNames(keysOf(deps[svc])) {
				name := d
				if d == "" {
					name = "(none)"
				}
				parts = append(parts, fmt.Sprintf("%s on %v", name, deps[svc][d]))
			}
			problems = append(problems, fmt.Sprintf("services[%s].depends_on differs between nodes: %s; make it the same on every node", svc, strings.Join(parts, ", ")))
		}
		for dep := range deps[svc] {
			if dep == "" {
				continue
			}
			for _, id := range sortedNames(keysOf(members)) {
				_, hasDep := members[id].Services[dep]
				_, hasSvc := members[id].Services[svc]
				if hasDep && !hasSvc {
					problems = append(problems, fmt.Sprintf("node %s provides %s but not %s, which depends on it: while %s is %s's primary, %s has none; provide %s there too", id, dep, svc, id, dep, svc, svc))
				}
			}
		}
	}
	now := map[string]bool{}
	for _, p := range problems {
		now[p] = true
		if !m.warned[p] {
			m.log.Warn("config across nodes: " + p)
		}
	}
	m.warned = now
}

func keysOf[V any](mp map[string]V) map[string]bool {
	out := make(map[string]bool, len(mp))
	for k := range mp {
		out[k] = true
	}
	return out
}

// ---- switchovers ----

// Switchover states.
const (
	SwitchoverPending = "pending"
	SwitchoverRunning = "running"
	SwitchoverDone    = "done"
	SwitchoverFailed  = "failed"
)

// SwitchoverRecord is a switchover request and its outcome, at
// Keys.Switchover(service). A node writes it pending; the manager runs it
// and writes the outcome.
type SwitchoverRecord struct {
	ID    string `json:"id"`
	To    string `json:"to,omitempty"`
	State string `json:"state"`
	// From and FromToken are the primary the switchover moves away from.
	From      string `json:"from,omitempty"`
	FromToken int64  `json:"from_token,omitempty"`
	// Primary is the new primary, once done; Detail says why it failed.
	Primary string `json:"primary,omitempty"`
	Detail  string `json:"detail,omitempty"`
	// ManagerToken is the token of the manager that ran it.
	ManagerToken int64     `json:"manager_token,omitempty"`
	Updated      time.Time `json:"updated"`
}

// DecodeSwitchover decodes a switchover record; errors name the key.
func DecodeSwitchover(kv core.KV) (SwitchoverRecord, error) {
	var r SwitchoverRecord
	if err := json.Unmarshal(kv.Value, &r); err != nil {
		return r, fmt.Errorf("%w: key %q: %v (write a new switchover request to replace it)", core.ErrBadRecord, kv.Key, err)
	}
	return r, nil
}

// handoverRequest is the call a primary's node takes to hand a service
// over.
type handoverRequest struct {
	Service string `json:"service"`
	To      string `json:"to,omitempty"`
}

func (m *Manager) switchovers(ctx context.Context, f fence, members map[string]core.MemberRecord) error {
	snap, err := m.cfg.Store.List(ctx, m.cfg.Keys.Switchovers())
	if err != nil {
		return err
	}
	var errs []error
	for _, kv := range snap.KVs {
		svc := strings.TrimPrefix(kv.Key, m.cfg.Keys.Switchovers())
		rec, err := DecodeSwitchover(kv)
		if err != nil {
			m.log.Warn("unreadable switchover request", "err", err)
			continue
		}
		if rec.State == SwitchoverPending || rec.State == SwitchoverRunning && rec.ManagerToken < f.token {
			if err := m.switchover(ctx, f, svc, kv, rec, members); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func (m *Manager) switchover(ctx context.Context, f fence, svc string, kv core.KV, rec SwitchoverRecord, members map[string]core.MemberRecord) error {
	finish := func(version int64, state, primary, detail string) error {
		rec.State, rec.Primary, rec.Detail, rec.ManagerToken, rec.Updated = state, primary, detail, f.token, time.Now().UTC()
		if state == SwitchoverFailed {
			m.log.Warn("switchover failed", "switchover_of", svc, "to", rec.To, "why", detail)
		} else {
			m.log.Info("switchover done", "switchover_of", svc, "primary", primary)
		}
		return m.write(ctx, f, kv.Key, version, rec)
	}
	pkv, err := m.cfg.Store.Get(ctx, m.cfg.Keys.Primary(svc))
	if errors.Is(err, core.ErrNotFound) {
		return finish(kv.Version, SwitchoverFailed, "", fmt.Sprintf("service %q has never had a primary", svc))
	}
	if err != nil {
		return err
	}
	prim, err := core.DecodePrimary(pkv)
	if err != nil {
		return finish(kv.Version, SwitchoverFailed, "", err.Error())
	}
	if rec.State == SwitchoverRunning {
		// A manager before us started it and stopped: if the primary
		// moved since, it is done.
		if pkv.Revision > rec.FromToken && prim.Node != "" && prim.Node != rec.From {
			return finish(kv.Version, SwitchoverDone, prim.Node, "")
		}
	}
	live := func(node string) bool {
		mem, ok := members[node]
		return ok && (node != prim.Node || mem.Session == prim.Session)
	}
	switch {
	case prim.Node == "" || !live(prim.Node):
		return finish(kv.Version, SwitchoverFailed, "", fmt.Sprintf("service %q has no live primary now; an election is under way", svc))
	case rec.To == prim.Node:
		return finish(kv.Version, SwitchoverFailed, "", fmt.Sprintf("%q is already the primary of %q", rec.To, svc))
	case rec.To != "":
		if _, ok := members[rec.To].Services[svc]; !ok {
			return finish(kv.Version, SwitchoverFailed, "", fmt.Sprintf("%q is not a live provider of %q", rec.To, svc))
		}
	}
	addr := members[prim.Node].Address
	if addr == "" {
		return finish(kv.Version, SwitchoverFailed, "", fmt.Sprintf("the primary %q publishes no API address (node.address or node.api.listen)", prim.Node))
	}
	rec.State, rec.From, rec.FromToken, rec.ManagerToken, rec.Updated = SwitchoverRunning, prim.Node, pkv.Revision, f.token, time.Now().UTC()
	if err := m.write(ctx, f, kv.Key, kv.Version, rec); err != nil {
		return err
	}
	running, err := m.cfg.Store.Get(ctx, kv.Key)
	if err != nil {
		return err
	}
	m.log.Info("switchover: asking the primary to hand over", "switchover_of", svc, "from", prim.Node, "to", rec.To)
	hctx, cancel := context.WithTimeout(ctx, m.cfg.HandoverTimeout)
	defer cancel()
	if err := m.cfg.Caller.Call(hctx, addr, "handover", handoverRequest{Service: svc, To: rec.To}, nil); err != nil {
		return finish(running.Version, SwitchoverFailed, "", fmt.Sprintf("the primary %s did not hand over: %v", prim.Node, err))
	}
	for {
		p, err := m.cfg.Store.Get(hctx, m.cfg.Keys.Primary(svc))
		if err == nil {
			if np, derr := core.DecodePrimary(p); derr == nil && np.Node != "" && np.Node != prim.Node {
				if rec.To != "" && np.Node != rec.To {
					return finish(running.Version, SwitchoverFailed, np.Node, fmt.Sprintf("%s took over instead of %s", np.Node, rec.To))
				}
				return finish(running.Version, SwitchoverDone, np.Node, "")
			}
		}
		select {
		case <-hctx.Done():
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return finish(running.Version, SwitchoverFailed, "", fmt.Sprintf("%s resigned but no new primary appeared within %v", prim.Node, m.cfg.HandoverTimeout))
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// ---- role plans ----

// PlanRecord is a service's role plan, at Keys.Plan(service): the live
// providers other than the primary, in the order the primary should make
// them secondaries. Secondaries come first, so that a plan never churns
// them; then spares, least loaded first.
type PlanRecord struct {
	Order        []string `json:"order"`
	ManagerToken int64    `json:"manager_token"`
}

// DecodePlan decodes a plan; errors name the key.
func DecodePlan(kv core.KV) (PlanRecord, error) {
	var p PlanRecord
	if err := json.Unmarshal(kv.Value, &p); err != nil {
		return p, fmt.Errorf("%w: key %q: %v (the replica manager rewrites it)", core.ErrBadRecord, kv.Key, err)
	}
	return p, nil
}

func (m *Manager) plans(ctx context.Context, f fence, members map[string]core.MemberRecord) error {
	keys, st := m.cfg.Keys, m.cfg.Store
	prims, err := st.List(ctx, keys.Primaries())
	if err != nil {
		return err
	}
	rosters, err := st.List(ctx, keys.Rosters())
	if err != nil {
		return err
	}
	plans, err := st.List(ctx, keys.Plans())
	if err != nil {
		return err
	}
	primary := map[string]string{}
	for _, kv := range prims.KVs {
		if p, err := core.DecodePrimary(kv); err == nil && p.Node != "" && members[p.Node].Session == p.Session {
			primary[strings.TrimPrefix(kv.Key, keys.Primaries())] = p.Node
		}
	}
	secs := map[string][]core.SecondaryEntry{}
	load := map[string]int{} // roles each node holds across services
	for svc, n := range primary {
		_ = svc
		load[n]++
	}
	for _, kv := range rosters.KVs {
		r, err := core.DecodeRoster(kv)
		if err != nil {
			continue
		}
		svc := strings.TrimPrefix(kv.Key, keys.Rosters())
		for _, e := range r.Secondaries {
			if members[e.Node].Session == e.Session {
				secs[svc] = append(secs[svc], e)
				load[e.Node]++
			}
		}
	}
	stored := map[string]core.KV{}
	for _, kv := range plans.KVs {
		stored[strings.TrimPrefix(kv.Key, keys.Plans())] = kv
	}
	services := map[string]bool{}
	for _, mem := range members {
		for svc := range mem.Services {
			services[svc] = true
		}
	}
	var errs []error
	for _, svc := range sortedNames(services) {
		if svc == ManagerService {
			continue
		}
		order := planOrder(svc, primary[svc], secs[svc], members, load)
		if kv, ok := stored[svc]; ok {
			if old, err := DecodePlan(kv); err == nil && slices.Equal(old.Order, order) {
				continue
			}
		}
		if err := m.write(ctx, f, keys.Plan(svc), stored[svc].Version, PlanRecord{Order: order, ManagerToken: f.token}); err != nil {
			errs = append(errs, fmt.Errorf("plan of %q: %w", svc, err))
		}
	}
	return errors.Join(errs...)
}

// planOrder: the live secondaries, freshest first, then the spares,
// least loaded first, then by priority and ID.
func planOrder(svc, primary string, secs []core.SecondaryEntry, members map[string]core.MemberRecord, load map[string]int) []string {
	sort.SliceStable(secs, func(i, j int) bool {
		a, b := secs[i], secs[j]
		if a.AckToken != b.AckToken {
			return a.AckToken > b.AckToken
		}
		if a.AckSeq != b.AckSeq {
			return a.AckSeq > b.AckSeq
		}
		return a.Node < b.Node
	})
	var order []string
	in := map[string]bool{primary: true}
	for _, e := range secs {
		if !in[e.Node] {
			order = append(order, e.Node)
			in[e.Node] = true
		}
	}
	var spares []string
	for id, mem := range members {
		if _, ok := mem.Services[svc]; ok && !in[id] {
			spares = append(spares, id)
		}
	}
	sort.Slice(spares, func(i, j int) bool {
		a, b := spares[i], spares[j]
		if load[a] != load[b] {
			return load[a] < load[b]
		}
		pa, pb := members[a].Services[svc].Priority, members[b].Services[svc].Priority
		if pa != pb {
			return pa > pb
		}
		return a < b
	})
	return append(order, spares...)
}

func sortedNames(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// ---- removing the records of departed nodes and services ----

// DepartedRecord is the manager's memory of departures, at
// Keys.Departed(): since when each node and service has been gone.
type DepartedRecord struct {
	Nodes    map[string]time.Time `json:"nodes,omitempty"`
	Services map[string]time.Time `json:"services,omitempty"`
}

func (m *Manager) collect(ctx context.Context, f fence, members map[string]core.MemberRecord) error {
	keys, st := m.cfg.Keys, m.cfg.Store
	del, ok := st.(core.Deleter)
	if !ok {
		return nil // the store cannot delete conditionally: records stay
	}
	cands, err := st.List(ctx, keys.AllCandidates())
	if err != nil {
		return err
	}
	prims, err := st.List(ctx, keys.Primaries())
	if err != nil {
		return err
	}
	var rec DepartedRecord
	dkv, err := st.Get(ctx, keys.Departed())
	switch {
	case errors.Is(err, core.ErrNotFound):
	case err != nil:
		return err
	default:
		if err := json.Unmarshal(dkv.Value, &rec); err != nil {
			m.log.Warn("unreadable record of departures; starting it again", "key", dkv.Key, "err", err)
			rec = DepartedRecord{}
		}
	}
	if rec.Nodes == nil {
		rec.Nodes = map[string]time.Time{}
	}
	if rec.Services == nil {
		rec.Services = map[string]time.Time{}
	}
	before, _ := json.Marshal(rec)
	now := time.Now().UTC()

	provided := map[string]bool{}
	for _, mem := range members {
		for svc := range mem.Services {
			provided[svc] = true
		}
	}
	// Every record, by service: candidate variables by node.
	byService := map[string]map[string]core.KV{}
	for _, kv := range cands.KVs {
		svc, node, ok := strings.Cut(strings.TrimPrefix(kv.Key, keys.AllCandidates()), "/")
		if !ok {
			continue
		}
		if byService[svc] == nil {
			byService[svc] = map[string]core.KV{}
		}
		byService[svc][node] = kv
	}
	for _, kv := range prims.KVs {
		svc := strings.TrimPrefix(kv.Key, keys.Primaries())
		if byService[svc] == nil {
			byService[svc] = map[string]core.KV{}
		}
	}
	gone := func(since map[string]time.Time, name string, isGone bool) bool {
		if !isGone {
			delete(since, name)
			return false
		}
		t, ok := since[name]
		if !ok {
			since[name] = now
			return false
		}
		return now.Sub(t) >= m.cfg.DepartedGrace
	}
	var errs []error
	remove := func(kv core.KV) {
		if err := del.DeleteVersion(ctx, kv.Key, kv.Version); err != nil && !errors.Is(err, core.ErrNotFound) {
			errs = append(errs, fmt.Errorf("removing %s: %w", kv.Key, err))
			return
		}
		m.log.Info("removed the record of a departed node or service", "key", kv.Key)
	}
	nodes := map[string]bool{}
	for svc, cs := range byService {
		if svc == ManagerService {
			continue
		}
		if gone(rec.Services, svc, !provided[svc]) {
			for _, kv := range cs {
				remove(kv)
			}
			for _, key := range []string{keys.Roster(svc), keys.Plan(svc), keys.Switchover(svc), keys.Endpoint(svc), keys.Primary(svc)} {
				if kv, err := st.Get(ctx, key); err == nil {
					remove(kv)
				}
			}
			continue
		}
		for node := range cs {
			nodes[node] = true
		}
	}
	for node := range rec.Nodes {
		nodes[node] = true
	}
	for node := range nodes {
		_, live := members[node]
		if !gone(rec.Nodes, node, !live) {
			continue
		}
		for _, cs := range byService {
			if kv, ok := cs[node]; ok {
				remove(kv)
			}
		}
		delete(rec.Nodes, node) // its records are gone; a return starts afresh
	}
	for svc := range rec.Services {
		if _, ok := byService[svc]; !ok {
			delete(rec.Services, svc)
		}
	}
	if after, _ := json.Marshal(rec); string(after) != string(before) {
		if err := m.write(ctx, f, keys.Departed(), dkv.Version, rec); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
