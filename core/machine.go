package core

import (
	"errors"
	"fmt"
	"iter"
	"math/rand/v2"
	"slices"
	"sort"
	"time"

	"github.com/concordha/concord/core/internal/testhooks"
)

// Machine is one node's side of the election, as a deterministic state
// machine. It does no I/O and starts no goroutines: inputs arrive through
// its methods (views, watched records, results of store operations, the
// passing of time), and Ready hands out what it wants done (store
// operations to run) and what happened (role changes, election reports).
//
// Node drives a Machine against a real Store; the simulation in core/sim
// drives many Machines against one in-memory store in a seeded order.
// Given the same inputs in the same order, a Machine produces the same
// outputs. A Machine is not safe for concurrent use.
type Machine struct {
	cfg  MachineConfig
	keys Keys
	mut  testhooks.Mutations
	rng  *rand.Rand
	now  time.Time

	session  string // "" while the node has no session
	memberKV KV     // this node's member record as registered

	view view
	// members caches decoded member records by key, with the revision
	// they were decoded at: a view repeats most of the previous one.
	members map[string]memberEntry
	// decoded caches decoded primary records, rosters and candidate
	// variables by key (each with the revision it was decoded at), so that
	// a record read again or watched again is not decoded again.
	decoded map[string]any

	svcs  map[string]*service
	names []string // sorted service names, for a deterministic order

	pending map[uint64]pendingOp
	nextID  uint64

	// catchUp is the outstanding re-read of the membership, if any.
	catchUp *catchUpState

	rdy Ready
}

// MachineConfig configures a Machine.
type MachineConfig struct {
	// Node is this node's ID, unique in the cluster.
	Node string
	// Prefix is the cluster's key root; it ends with "/" (or is empty).
	Prefix string
	// Services this node provides.
	Services []ServiceConfig
	// RetryMin and RetryMax bound the backoff after a store error.
	RetryMin, RetryMax time.Duration
	// ElectionTimeout is how long a disqualified node waits for a primary
	// to appear before it runs the election again. It covers lost wake-ups;
	// normally the primary record's watch ends the wait.
	ElectionTimeout time.Duration
	// Seed seeds the backoff jitter.
	Seed uint64
	// Mutations injects deliberate bugs; only packages under core/ can set
	// it (see core/internal/testhooks). Leave it zero.
	Mutations testhooks.Mutations
}

// ServiceConfig declares a service a node provides.
type ServiceConfig struct {
	// Name of the service, unique in the cluster (see ValidateName).
	Name string
	// Priority breaks ties between providers of the same role and
	// freshness: higher wins.
	Priority int
	// DependsOn names another service this node provides, whose primary
	// this service's primary must share (design.md, "Dependencies"). Only
	// the node that is the dependency's primary may claim this service;
	// it does so once it holds the dependency, and gives this service up
	// whenever it stops being the dependency's primary. Empty: none.
	DependsOn string
}

// Request is a store operation the Machine wants run. Run it (alone, in
// parallel with others, or batched into a Txn) and hand its result to
// Deliver with the same ID.
type Request struct {
	ID uint64
	Op Op
}

// Event tells that this node's view of a service changed.
type Event struct {
	Service string
	// Role is this node's role.
	Role Role
	// Primary is the node that the primary record names ("" if none).
	Primary string
	// Epoch is the membership epoch in which the primary was elected.
	Epoch int64
	// Token is the primary's fencing token: the revision of the primary
	// record. It strictly increases from one primary to the next.
	Token int64
}

// Outcome is how an election ended on one node.
type Outcome string

// Election outcomes.
const (
	// OutcomeWon: this node claimed the primary record.
	OutcomeWon Outcome = "won"
	// OutcomeKept: this node is the live primary and told the others.
	OutcomeKept Outcome = "kept"
	// OutcomeFollowed: a live primary exists elsewhere; nothing to do.
	OutcomeFollowed Outcome = "followed"
	// OutcomeDisqualified: a higher-ranked provider exists.
	OutcomeDisqualified Outcome = "disqualified"
)

// ElectionReport describes one finished election on this node.
type ElectionReport struct {
	Service string
	Round   Round
	Outcome Outcome
	// Ops is the number of store operations the election issued,
	// including re-reads and retries.
	Ops int
	// RoundTrips is the length of its critical path: the most store
	// operations that had to complete one after another.
	RoundTrips int
	Started    time.Time
	Finished   time.Time
}

// RosterResult reports a roster change asked for with ChangeRoster.
type RosterResult struct {
	ID  uint64
	Err error
}

// Ready is what the Machine has for its driver.
type Ready struct {
	Requests []Request
	Events   []Event
	Reports  []ElectionReport
	Roster   []RosterResult
	// Warnings report records the machine could not use (with their keys).
	Warnings []error
	// Changed names the services whose Status may have changed.
	Changed []string
}

// Empty reports whether there is nothing in r.
func (r Ready) Empty() bool {
	return len(r.Requests)+len(r.Events)+len(r.Reports)+len(r.Roster)+len(r.Warnings)+len(r.Changed) == 0
}

// view is a membership view: the live nodes, each with its session.
type view struct {
	known   bool
	rev     int64 // the snapshot's revision, to drop stale snapshots
	epoch   int64 // the epoch elections run in: >= rev (see adopt)
	members map[string]MemberRecord
}

func (v *view) live(node, session string) bool {
	m, ok := v.members[node]
	return ok && m.Session == session
}

type memberEntry struct {
	rev int64
	rec MemberRecord
	err error
}

type opKind uint8

const (
	opRead opKind = iota + 1
	opCatchUp
	opWrite
	opReread
	opClaim
	opVacate
	opRoster
	opRosterRead
)

type pendingOp struct {
	kind   opKind
	svc    string
	inst   uint64 // election instance; results for older ones are dropped
	target string // node whose candidate variable, for writes
	depth  int    // critical-path length including this op
	part   int    // which part of a read
}

type catchUpState struct {
	id    uint64
	floor int64
	svcs  map[string]bool
}

// NewMachine returns a Machine for cfg. It fails if cfg is invalid.
func NewMachine(cfg MachineConfig) (*Machine, error) {
	if err := ValidateName("node ID", cfg.Node); err != nil {
		return nil, err
	}
	if err := validatePrefix(cfg.Prefix); err != nil {
		return nil, err
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = 50 * time.Millisecond
	}
	if cfg.RetryMax < cfg.RetryMin {
		cfg.RetryMax = max(cfg.RetryMin, 2*time.Second)
	}
	if cfg.ElectionTimeout <= 0 {
		cfg.ElectionTimeout = 10 * time.Second
	}
	m := &Machine{
		cfg:     cfg,
		keys:    Keys{cfg.Prefix},
		mut:     cfg.Mutations,
		rng:     rand.New(rand.NewPCG(cfg.Seed, 0x636f6e636f7264)),
		svcs:    make(map[string]*service),
		pending: make(map[uint64]pendingOp),
		members: make(map[string]memberEntry),
		decoded: make(map[string]any),
	}
	for _, sc := range cfg.Services {
		if err := ValidateName("service name", sc.Name); err != nil {
			return nil, err
		}
		if _, dup := m.svcs[sc.Name]; dup {
			return nil, fmt.Errorf("service %q is declared twice: declare each service once", sc.Name)
		}
		m.svcs[sc.Name] = &service{name: sc.Name, prio: sc.Priority, dep: sc.DependsOn}
		m.names = append(m.names, sc.Name)
	}
	if err := checkDependencies(cfg.Services); err != nil {
		return nil, err
	}
	sort.Strings(m.names)
	for _, n := range m.names {
		if d := m.svcs[n].dep; d != "" {
			m.svcs[d].dependents = append(m.svcs[d].dependents, n)
		}
	}
	return m, nil
}

// Node returns the node's ID.
func (m *Machine) Node() string { return m.cfg.Node }

// MemberRecord returns the value this node registers under members/ for a
// session, and the key to register it at.
func (m *Machine) MemberRecord(session, address string) (key string, value []byte) {
	rec := MemberRecord{Node: m.cfg.Node, Session: session, Address: address, Services: map[string]ServiceRecord{}}
	for _, n := range m.names {
		rec.Services[n] = ServiceRecord{Priority: m.svcs[n].prio, DependsOn: m.svcs[n].dep}
	}
	return m.keys.Member(m.cfg.Node), encode(rec)
}

// Prefixes returns the key prefixes a driver watches and feeds back:
// the members (to SetView), the primary records (to SetPrimaries) and
// the rosters (to SetRosters).
func (m *Machine) Prefixes() (members, primaries, rosters string) {
	return m.keys.Members(), m.keys.Primaries(), m.keys.Rosters()
}

// Ready returns, and forgets, what the machine has for its driver.
func (m *Machine) Ready() Ready {
	r := m.rdy
	m.rdy = Ready{}
	for _, n := range r.Changed {
		m.svcs[n].touched = false
	}
	return r
}

// touch notes that s's Status may have changed.
func (m *Machine) touch(s *service) {
	if !s.touched {
		s.touched = true
		m.rdy.Changed = append(m.rdy.Changed, s.name)
	}
}

// Advance tells the machine the time, and runs what falls due by then.
func (m *Machine) Advance(now time.Time) {
	if now.After(m.now) {
		m.now = now
	}
	for _, n := range m.names {
		s := m.svcs[n]
		if !s.el.deadline.IsZero() && !s.el.deadline.After(m.now) {
			s.el.deadline = time.Time{}
			switch s.el.phase {
			case phBackoff:
				m.restart(s)
			case phWaiting:
				if !m.primaryLive(s) {
					m.start(s)
				} else {
					s.el.phase = phIdle
				}
			}
		}
		if s.resigning && !s.resignAt.IsZero() && !s.resignAt.After(m.now) {
			s.resignAt = time.Time{}
			m.issueVacate(s, 1)
		}
		if s.rosterRetry && !s.rosterAt.After(m.now) {
			s.rosterRetry = false
			m.pumpRoster(s)
		}
	}
}

// NextDeadline returns when the machine next needs Advance, if ever.
func (m *Machine) NextDeadline() (time.Time, bool) {
	var best time.Time
	for _, n := range m.names {
		s := m.svcs[n]
		resignAt := s.resignAt
		if !s.resigning {
			resignAt = time.Time{}
		}
		for _, d := range []time.Time{s.el.deadline, s.rosterDeadline(), resignAt} {
			if !d.IsZero() && (best.IsZero() || d.Before(best)) {
				best = d
			}
		}
	}
	return best, !best.IsZero()
}

// SetSession tells the machine that the node holds a session and has
// registered its member record (kv, as Register returned it). Elections
// start as soon as the node sees itself in a view.
func (m *Machine) SetSession(id string, kv KV) {
	m.session = id
	m.memberKV = kv
	for _, n := range m.names {
		m.start(m.svcs[n])
	}
}

// Session returns the session the machine runs under ("" if none).
func (m *Machine) Session() string { return m.session }

// LoseSession tells the machine that its session is lost or closed. It
// stops acting as primary at once, drops its elections, and fails its
// pending roster changes.
func (m *Machine) LoseSession() {
	m.session = ""
	m.memberKV = KV{}
	m.catchUp = nil
	for _, n := range m.names {
		s := m.svcs[n]
		if !m.mut.IgnoreSessionLoss {
			m.demote(s)
		}
		// A resignation still being written ends with the session: the
		// record names the dead session, which the others replace, and
		// a claim of the next session must be adopted, not taken for
		// the resigned one (sim seed 9845).
		s.resigning, s.resignAt, s.abandon = false, time.Time{}, false
		m.stop(s)
		m.failRoster(s, ErrNotPrimary)
		m.emit(s)
	}
}

// SetView hands the machine a snapshot of the members prefix.
func (m *Machine) SetView(snap Snapshot) { m.applyView(snap, 0) }

// applyView installs snap as the view if it is newer; floor raises the
// epoch (see the catch-up in election.go). It reports whether the epoch
// elections run in has changed.
func (m *Machine) applyView(snap Snapshot, floor int64) bool {
	if snap.Err != nil {
		return false
	}
	if m.view.known && snap.Revision < m.view.rev {
		return false // an older snapshot than the one we have
	}
	members := make(map[string]MemberRecord, len(snap.KVs))
	cache := make(map[string]memberEntry, len(snap.KVs))
	for _, kv := range snap.KVs {
		e, ok := m.members[kv.Key]
		if !ok || e.rev != kv.Revision {
			e = memberEntry{rev: kv.Revision}
			e.rec, e.err = DecodeMember(kv)
			if e.err == nil && m.keys.Member(e.rec.Node) != kv.Key {
				e.err = fmt.Errorf("%w: key %q holds the member record of node %q", ErrBadRecord, kv.Key, e.rec.Node)
			}
			if e.err != nil {
				m.warn(e.err)
			}
		}
		cache[kv.Key] = e
		if e.err == nil {
			members[e.rec.Node] = e.rec
		}
	}
	m.members = cache
	same := m.view.known && sameMembers(m.view.members, members)
	epoch := max(snap.Revision, floor)
	if same {
		epoch = max(epoch, m.view.epoch)
	}
	if same && epoch == m.view.epoch {
		m.view.rev = max(m.view.rev, snap.Revision)
		return false
	}
	m.view = view{known: true, rev: max(snap.Revision, m.view.rev), epoch: epoch, members: members}
	if m.session != "" && !m.view.live(m.cfg.Node, m.session) {
		// Our own member record is gone: the store has ended our session,
		// whatever the session's signal says yet. Stop acting now.
		for _, n := range m.names {
			s := m.svcs[n]
			if !m.mut.IgnoreSessionLoss {
				m.demote(s)
			}
			m.stop(s)
			m.emit(s)
		}
		return true
	}
	for _, n := range m.names {
		s := m.svcs[n]
		m.start(s)
		if s.primary {
			m.pruneRoster(s)
		}
	}
	return true
}

func sameMembers(a, b map[string]MemberRecord) bool {
	if len(a) != len(b) {
		return false
	}
	for k, x := range a {
		y, ok := b[k]
		if !ok || x.Session != y.Session || x.Address != y.Address || len(x.Services) != len(y.Services) {
			return false
		}
		for s, p := range x.Services {
			if q, ok := y.Services[s]; !ok || q != p {
				return false
			}
		}
	}
	return true
}

// SetPrimaries hands the machine a snapshot of the primary records.
func (m *Machine) SetPrimaries(snap Snapshot) {
	for name, kv := range m.byService(snap, m.keys.Primaries()) {
		m.observePrimary(m.svcs[name], kv)
	}
}

// SetRosters hands the machine a snapshot of the rosters.
func (m *Machine) SetRosters(snap Snapshot) {
	for name, kv := range m.byService(snap, m.keys.Rosters()) {
		m.observeRoster(m.svcs[name], kv)
	}
}

// byService picks, from a snapshot of folder, the records of the services
// this node provides, in service-name order.
func (m *Machine) byService(snap Snapshot, folder string) iter.Seq2[string, KV] {
	return func(yield func(string, KV) bool) {
		if snap.Err != nil {
			return
		}
		byName := make(map[string]KV, len(snap.KVs))
		for _, kv := range snap.KVs {
			byName[m.keys.NameIn(folder, kv.Key)] = kv
		}
		for _, n := range m.names {
			if kv, ok := byName[n]; ok && !yield(n, kv) {
				return
			}
		}
	}
}

// Deliver hands the machine the result of a Request.
func (m *Machine) Deliver(id uint64, res OpResult) {
	p, ok := m.pending[id]
	if !ok {
		return
	}
	delete(m.pending, id)
	if p.kind == opCatchUp {
		m.catchUpDone(id, p, res)
		return
	}
	s := m.svcs[p.svc]
	switch p.kind {
	case opVacate:
		m.vacateDone(s, res)
		return
	case opRoster, opRosterRead:
		m.rosterDone(s, p, res)
		return
	}
	if p.inst != s.el.inst {
		// A result for a round we have since abandoned. A claim's answer
		// is still the commit point of the store: take it in.
		if p.kind == opClaim && res.Err == nil {
			m.observePrimaryKV(s, m.decodePrimaryKV(res.KV))
		}
		return
	}
	s.el.outstanding--
	s.el.depth = max(s.el.depth, p.depth)
	switch p.kind {
	case opRead:
		m.readDone(s, p, res)
	case opWrite, opReread:
		m.writeDone(s, p, res)
	case opClaim:
		m.claimDone(s, res)
	}
}

// Status is a service's state on this node.
type Status struct {
	Event
	// Electing is true while an election for the service runs here: new
	// requests for the service should be held off (FIG. 4, step 404).
	Electing bool
	// Round is the last election round this node ran.
	Round Round
}

// Status returns the service's state on this node.
func (m *Machine) Status(service string) (Status, error) {
	s, ok := m.svcs[service]
	if !ok {
		return Status{}, fmt.Errorf("%w: %q", ErrUnknownService, service)
	}
	return Status{Event: m.event(s), Electing: s.el.running(), Round: s.el.round}, nil
}

// Services returns the names of the services the node provides, sorted.
func (m *Machine) Services() []string { return append([]string(nil), m.names...) }

// IsPrimary reports whether the node acts as the service's primary.
func (m *Machine) IsPrimary(service string) bool {
	s, ok := m.svcs[service]
	return ok && s.primary
}

// Token returns the fencing token the node holds for the service, if it
// is the primary.
func (m *Machine) Token(service string) (int64, bool) {
	s, ok := m.svcs[service]
	if !ok || !s.primary {
		return 0, false
	}
	return s.token, true
}

// Resign gives up the primary role of a service: the node stops acting as
// primary at once, then clears the primary record so that another
// provider is elected. The node ranks last in that election.
// Errors: ErrUnknownService; ErrNotPrimary if the node is not primary.
func (m *Machine) Resign(service string) error {
	s, ok := m.svcs[service]
	if !ok {
		return fmt.Errorf("%w: %q", ErrUnknownService, service)
	}
	if !s.primary {
		return fmt.Errorf("%w: %q", ErrNotPrimary, service)
	}
	claim := s.claimKV
	m.demote(s)
	m.failRoster(s, ErrNotPrimary)
	s.abandon = false
	s.resigning = true
	s.resignKV = claim
	s.resignFails, s.resignAt = 0, time.Time{}
	m.emit(s)
	m.issueVacate(s, 1)
	return nil
}

// Resigning reports whether a resignation of the service is still being
// written to the store, or a claim of this dependent is in flight that the
// node will resign if it lands (it gave the dependency up meanwhile).
func (m *Machine) Resigning(service string) bool {
	s, ok := m.svcs[service]
	return ok && (s.resigning || s.abandon)
}

func (m *Machine) issueVacate(s *service, depth int) {
	rec := PrimaryRecord{Epoch: m.view.epoch, Resigned: m.cfg.Node}
	m.request(pendingOp{kind: opVacate, svc: s.name, depth: depth}, Op{
		Kind: OpCAS, Key: m.keys.Primary(s.name), Value: encode(rec), Version: s.resignKV.Version,
	})
}

func (m *Machine) vacateDone(s *service, res OpResult) {
	if !s.resigning {
		return
	}
	switch {
	case res.Err == nil:
		s.resigning = false
		m.observePrimaryKV(s, m.decodePrimaryKV(res.KV))
	case errors.Is(res.Err, ErrConflict), errors.Is(res.Err, ErrNotFound):
		// The record moved on without us: someone else claimed it.
		s.resigning = false
		m.start(s)
	case m.session == "":
		// Our session is gone: the record names a dead session, which
		// the others will replace.
		s.resigning = false
	default:
		// Unknown outcome; try again after a backoff (Advance does). A
		// retry that finds the record already cleared fails its
		// compare-and-swap and ends the resignation.
		s.resignFails++
		s.resignAt = m.now.Add(m.backoff(s.resignFails))
	}
}

func (m *Machine) request(p pendingOp, op Op) uint64 {
	m.nextID++
	id := m.nextID
	m.pending[id] = p
	m.rdy.Requests = append(m.rdy.Requests, Request{ID: id, Op: op})
	return id
}

func (m *Machine) warn(err error) { m.rdy.Warnings = append(m.rdy.Warnings, err) }

func (m *Machine) backoff(failures int) time.Duration {
	d := m.cfg.RetryMin
	for i := 1; i < failures && d < m.cfg.RetryMax; i++ {
		d *= 2
	}
	d = min(d, m.cfg.RetryMax)
	// Jitter in [d/2, d) keeps retrying nodes from moving in lockstep.
	return d/2 + time.Duration(m.rng.Int64N(int64(d/2)+1))
}

// Members returns the membership view: the live members, by node ID.
func (m *Machine) Members() map[string]MemberRecord {
	out := make(map[string]MemberRecord, len(m.view.members))
	for k, v := range m.view.members {
		out[k] = v
	}
	return out
}

// Roster returns the newest roster this node knows for the service: zero
// if there is none yet, or if the stored one cannot be decoded.
// Errors: ErrUnknownService.
func (m *Machine) Roster(service string) (RosterRecord, error) {
	s, ok := m.svcs[service]
	if !ok {
		return RosterRecord{}, fmt.Errorf("%w: %q", ErrUnknownService, service)
	}
	if !s.ros.exists || s.ros.bad {
		return RosterRecord{}, nil
	}
	r := s.ros.rec
	r.Secondaries = slices.Clone(r.Secondaries)
	return r, nil
}
