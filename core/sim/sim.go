// Package sim is a deterministic, seeded simulation of concord's election.
//
// It runs many core.Machines (3 to 50 nodes, 1 to 1,000 services, some
// depending on others) against one in-memory store on a virtual clock,
// and decides everything that a real deployment leaves to chance from one
// seed: store latencies, the order in which answers arrive, crashes and
// restarts, session expiries, store errors, nodes cut off from the store
// and their peers, nodes that see new views late, and resignations. It
// also plays the replica layer above the election: primaries send
// checkpoints through a simulated network to their secondaries, which
// admit them through a core.Gate that survives crashes, and promote
// spares only after a full transfer. After every step a checker tests the
// invariants of design.md; a failing seed prints a trace and replays
// exactly.
//
// Nothing here runs goroutines or reads the real clock: a run is a pure
// function of its Config.
package sim

import (
	"container/heap"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"time"

	"github.com/concordha/concord/backends/memory"
	"github.com/concordha/concord/core"
	"github.com/concordha/concord/core/internal/testhooks"
)

// Config describes one simulated schedule. Zero fields are drawn from the
// seed (see Shape).
type Config struct {
	Seed     uint64
	Nodes    int // 3 to 50
	Services int // 1 to 1,000
	// Faults is how many fault events the schedule injects before it
	// calms down.
	Faults int
	// TTL is the session TTL; keep-alives go every TTL/3.
	TTL time.Duration
	// Latency is the largest one-way store latency in the calm phase.
	// Faults may add more.
	Latency time.Duration
	// Dependents is how many services depend on another (chains of up to
	// three links, no cycles). Zero draws it from the seed (none for three
	// seeds in five); a negative value means none.
	Dependents int
	// Mutations injects a bug into every node, to test the checker.
	Mutations testhooks.Mutations
	// Broken injects a bug into the simulated replica layer or the
	// nodes' configuration, to test the checker.
	Broken Broken
	// Trace records a readable trace of the run. A failing run without it
	// is played again with it (runs are deterministic), so leave it off
	// unless you want the trace of a passing run.
	Trace bool
	// TraceLines is how many trace lines are kept (default 60).
	TraceLines int
}

// Broken switches on deliberate bugs outside core, in what the simulation
// plays itself: the replica layer and the configuration. The zero value is
// correct; each bug breaks one invariant, which TestCheckerCatchesBugs
// checks the checker reports.
type Broken struct {
	// SkipGate makes secondaries apply every checkpoint that arrives,
	// without asking their Gate (breaks "checkpoint-epoch").
	SkipGate bool
	// AckUnapplied makes secondaries acknowledge checkpoints without
	// applying them (breaks "fresh-promotion").
	AckUnapplied bool
	// DropDependsOn leaves DependsOn out of the configuration of every
	// node with an odd index, so that they claim dependents freely
	// (breaks "colocated").
	DropDependsOn bool
}

// Shape fills the zero fields of cfg from its seed. Most seeds get a small
// cluster (3 to 7 nodes, 1 to 12 services): small clusters are cheap, so
// many schedules fit in a test run, and they hit the races that matter
// most often. One seed in twenty-five gets a medium one (8 to 16 nodes, up
// to 30 services), and one in a hundred a large one (17 to 50 nodes, up to
// 10 services). Set Nodes and Services for other shapes, up to 50 nodes
// and 1,000 services (TestScale and the soak do).
func Shape(cfg Config) Config {
	r := rand.New(rand.NewPCG(cfg.Seed, 0x73686170))
	class := r.IntN(100)
	if cfg.Nodes == 0 {
		switch {
		case class < 95:
			cfg.Nodes = 3 + r.IntN(5)
		case class < 99:
			cfg.Nodes = 8 + r.IntN(9)
		default:
			cfg.Nodes = 17 + r.IntN(34)
		}
	}
	if cfg.Services == 0 {
		switch {
		case class < 95:
			cfg.Services = 1 + r.IntN(12)
		case class < 99:
			cfg.Services = 1 + r.IntN(30)
		default:
			cfg.Services = 1 + r.IntN(10)
		}
	}
	if cfg.Faults == 0 {
		cfg.Faults = 2 + r.IntN(8)
	}
	if cfg.TTL == 0 {
		cfg.TTL = time.Second
	}
	if cfg.Latency == 0 {
		cfg.Latency = time.Duration(1+r.IntN(10)) * time.Millisecond
	}
	if cfg.TraceLines == 0 {
		cfg.TraceLines = 60
	}
	// Two seeds in five make some services depend on others; the rest
	// keep the coverage of independent services.
	if cfg.Dependents == 0 {
		cfg.Dependents = -1
		if cfg.Services > 1 && r.IntN(5) < 2 {
			cfg.Dependents = 1 + r.IntN(min(cfg.Services-1, 6))
		}
	}
	if cfg.Dependents > cfg.Services-1 {
		cfg.Dependents = cfg.Services - 1
	}
	if cfg.Dependents == 0 {
		cfg.Dependents = -1
	}
	return cfg
}

// Result is the outcome of one schedule.
type Result struct {
	Config Config
	// Violation is the first invariant that failed, or nil.
	Violation *Violation
	// Trace is the tail of the schedule's trace (Config.TraceLines).
	Trace []string
	// Digest is a hash of the whole trace, to check exact replay.
	Digest uint64
	Stats  Stats
}

// Stats count what a schedule did.
type Stats struct {
	Steps       int
	Claims      int
	Elections   int
	MaxRTT      int // the longest critical path of an election in the calm stages
	VirtualTime time.Duration
	// SettleTime is how long after the last membership change of the calm
	// phase the cluster took to agree.
	SettleTime time.Duration
	// Checkpoints counts checkpoints applied by their receivers, Refused
	// those their Gate refused, and Lost the checkpoints and answers
	// dropped on the way (a node down or cut off). Promotions counts
	// spares promoted after a full transfer.
	Checkpoints, Refused, Lost, Promotions int
	// SecondaryClaims counts claims by a secondary (each checked by
	// "fresh-promotion"); DependentClaims claims of a dependent service.
	SecondaryClaims, DependentClaims int
}

// Violation is a broken invariant.
type Violation struct {
	Invariant string
	Detail    string
	At        time.Duration // virtual time since the start
}

func (v *Violation) Error() string {
	return fmt.Sprintf("%s violated at %v: %s", v.Invariant, v.At, v.Detail)
}

// Run plays one schedule and checks it.
func Run(cfg Config) Result {
	cfg = Shape(cfg)
	w := newWorld(cfg)
	defer w.srv.Close()
	w.run()
	res := Result{Config: cfg, Violation: w.chk.violation, Digest: w.digest, Stats: w.stats}
	res.Stats.VirtualTime = w.now().Sub(w.start)
	if cfg.Trace {
		res.Trace = w.trace.lines()
	} else if res.Violation != nil {
		again := cfg
		again.Trace = true
		res.Trace = Run(again).Trace
	}
	return res
}

// Report formats a failed result so that it can be replayed.
func (r Result) Report() string {
	var b strings.Builder
	c := r.Config
	fmt.Fprintf(&b, "simulation failed: %v\n", r.Violation)
	fmt.Fprintf(&b, "replay: go test ./core/sim -run TestReplay -args -seed=%d (nodes=%d services=%d dependents=%d faults=%d ttl=%v latency=%v)\n",
		c.Seed, c.Nodes, c.Services, max(c.Dependents, 0), c.Faults, c.TTL, c.Latency)
	fmt.Fprintf(&b, "last %d trace lines:\n", len(r.Trace))
	for _, l := range r.Trace {
		b.WriteString("  " + l + "\n")
	}
	return b.String()
}

// ---- the world ----

type world struct {
	cfg    Config
	rng    *rand.Rand
	clock  *core.ManualClock
	start  time.Time
	srv    *memory.Server
	q      evQueue
	seq    uint64
	nodes  []*simNode
	byID   map[string]*simNode
	svcs   []string
	prefix string
	// deps maps each dependent service to its dependency; dependents
	// lists the dependents in service order; depth is the longest chain.
	deps       map[string]string
	dependents []string
	depth      int
	index      map[string]int // a service's position in svcs

	chk    *checker
	trace  *ring
	digest uint64
	stats  Stats

	calm       bool
	calmAt     time.Time
	stage      int       // calm stages: 0 heal, 1 a primary crashed, 2 it is back
	stageAt    time.Time // when the current stage began
	victim     *simNode  // the primary crashed in stage 1
	lastMember time.Time // time of the last change under members/
	dirty      [3]bool   // members, primaries, rosters changed since last fan-out
	faultsLeft int
	settled    bool
}

type simNode struct {
	id      string
	idx     int
	svcs    []core.ServiceConfig
	m       *core.Machine
	up      bool
	inc     int // incarnation: bumped by every crash and restart
	opening bool

	session    string
	memberKV   core.KV
	clientDead time.Time // the client-side session deadline
	forced     map[string]bool

	latency        time.Duration // extra one-way latency (a fault)
	lag            time.Duration // extra delay before seeing views (a fault)
	lastDeliver    [3]time.Time
	pendingDeliver [3]bool

	timerAt time.Time
	// seqs is the checkpoint sequence per service in the tenure whose
	// token tenure holds; both are the process's, lost in a crash.
	seqs   map[string]int64
	tenure map[string]int64
	// gates admit checkpoints, per service. They model the stamp a
	// replica persists, so they survive crashes.
	gates map[string]*core.Gate
	// cut: the node is cut off from the store and from its peers.
	cut bool
	// dependents are the services this node provides that depend on
	// another, as the simulation configured them.
	dependents []string
}

func newWorld(cfg Config) *world {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := core.NewManualClock(start)
	w := &world{
		byID:       map[string]*simNode{},
		cfg:        cfg,
		rng:        rand.New(rand.NewPCG(cfg.Seed, 0x73696d)),
		clock:      clock,
		start:      start,
		srv:        memory.New(memory.Options{Clock: clock, ManualExpiry: true}),
		prefix:     "sim/",
		trace:      newRing(cfg.TraceLines),
		digest:     14695981039346656037,
		faultsLeft: cfg.Faults,
	}
	w.index = make(map[string]int, cfg.Services)
	for i := 0; i < cfg.Services; i++ {
		w.svcs = append(w.svcs, fmt.Sprintf("svc%03d", i))
		w.index[w.svcs[i]] = i
	}
	w.drawDependencies()
	w.chk = newChecker(w)
	w.srv.OnChange(w.chk.onChange)
	for i := 0; i < cfg.Nodes; i++ {
		n := &simNode{id: fmt.Sprintf("n%02d", i), idx: i, forced: map[string]bool{},
			seqs: map[string]int64{}, tenure: map[string]int64{}, gates: map[string]*core.Gate{}}
		// Each service has at least two providers; each node provides a
		// random subset, with random priorities (often tied).
		prio := make([]int, len(w.svcs))
		provides := make([]bool, len(w.svcs))
		for j := range w.svcs {
			if i == j%cfg.Nodes || i == (j+1)%cfg.Nodes || w.rng.IntN(3) > 0 {
				provides[j], prio[j] = true, w.rng.IntN(3)
			}
		}
		// A node that provides a dependent provides its dependency too,
		// with a priority of its own. A dependency has a lower index than
		// its dependents, so one pass from the top closes every chain.
		for j := len(w.svcs) - 1; j >= 0; j-- {
			if d, ok := w.deps[w.svcs[j]]; ok && provides[j] {
				k := w.index[d]
				if !provides[k] {
					provides[k], prio[k] = true, w.rng.IntN(3)
				}
			}
		}
		for j, s := range w.svcs {
			if !provides[j] {
				continue
			}
			sc := core.ServiceConfig{Name: s, Priority: prio[j], DependsOn: w.deps[s]}
			if sc.DependsOn != "" {
				n.dependents = append(n.dependents, s)
				if cfg.Broken.DropDependsOn && i%2 == 1 {
					sc.DependsOn = ""
				}
			}
			n.svcs = append(n.svcs, sc)
		}
		w.nodes = append(w.nodes, n)
		w.byID[n.id] = n
	}
	for _, d := range w.dependents {
		w.logf("%s depends on %s", d, w.deps[d])
	}
	for _, n := range w.nodes {
		// Nodes boot at slightly different times.
		w.at(time.Duration(w.rng.IntN(50))*time.Millisecond, evBoot, n, nil)
	}
	w.at(w.cfg.TTL/10, evReap, nil, nil)
	w.at(w.faultGap(), evFault, nil, nil)
	w.at(w.cfg.TTL/2, evRosterTick, nil, nil)
	return w
}

func (w *world) now() time.Time { return w.clock.Now() }

// drawDependencies makes cfg.Dependents services depend on others, drawn
// from a generator of their own, so that they follow from the seed and
// the count alone. A service depends only on one of a lower index, so
// there are no cycles; chains stop at three links, and about half the
// dependents extend a chain rather than start one.
func (w *world) drawDependencies() {
	w.deps = map[string]string{}
	if w.cfg.Dependents <= 0 {
		return
	}
	r := rand.New(rand.NewPCG(w.cfg.Seed, 0x646570))
	picks := r.Perm(len(w.svcs) - 1)[:w.cfg.Dependents]
	sort.Ints(picks)
	depth := make([]int, len(w.svcs))
	var chained []int // dependents that can take one more link
	for _, p := range picks {
		j := p + 1
		i := r.IntN(j)
		if len(chained) > 0 && r.IntN(2) == 0 {
			i = chained[r.IntN(len(chained))]
		}
		for depth[i] >= 3 { // climb to a shorter chain
			i = w.index[w.deps[w.svcs[i]]]
		}
		w.deps[w.svcs[j]] = w.svcs[i]
		depth[j] = depth[i] + 1
		w.depth = max(w.depth, depth[j])
		w.dependents = append(w.dependents, w.svcs[j])
		if depth[j] < 3 {
			chained = append(chained, j)
		}
	}
}

func (w *world) elapsed() time.Duration { return w.now().Sub(w.start) }

func (w *world) faultGap() time.Duration {
	return time.Duration(w.rng.Int64N(int64(w.cfg.TTL))) + w.cfg.TTL/10
}

func (w *world) logf(format string, args ...any) {
	if !w.cfg.Trace {
		return
	}
	w.trace.add(fmt.Sprintf("%9.3fs ", w.elapsed().Seconds()) + fmt.Sprintf(format, args...))
}

// mix folds x into the run's digest (FNV-1a over its bytes).
func (w *world) mix(x uint64) {
	for i := 0; i < 8; i++ {
		w.digest ^= x & 0xff
		w.digest *= 1099511628211
		x >>= 8
	}
}

// ---- events ----

type evKind uint8

const (
	evBoot evKind = iota + 1
	evOpArrive
	evOpReturn
	evSessionArrive
	evSessionReturn
	evKeepAlive
	evKAArrive
	evKAReturn
	evClientDeadline
	evTimer
	evDeliver
	evReap
	evFault
	evHeal
	evRosterTick
	evCheckSettled
	evCheckpointArrive
	evCheckpointReply
)

type event struct {
	at   time.Time
	seq  uint64
	kind evKind
	node *simNode
	inc  int
	data any
}

type evQueue []*event

func (q evQueue) Len() int { return len(q) }
func (q evQueue) Less(i, j int) bool {
	if !q[i].at.Equal(q[j].at) {
		return q[i].at.Before(q[j].at)
	}
	return q[i].seq < q[j].seq
}
func (q evQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *evQueue) Push(x any)   { *q = append(*q, x.(*event)) }
func (q *evQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

func (w *world) at(d time.Duration, kind evKind, n *simNode, data any) {
	w.seq++
	e := &event{at: w.now().Add(d), seq: w.seq, kind: kind, node: n, data: data}
	if n != nil {
		e.inc = n.inc
	}
	heap.Push(&w.q, e)
}

// lat draws a one-way latency for a message of node n.
func (w *world) lat(n *simNode) time.Duration {
	d := time.Duration(w.rng.Int64N(int64(w.cfg.Latency))) + 100*time.Microsecond
	if n != nil && n.latency > 0 {
		d += time.Duration(w.rng.Int64N(int64(n.latency)))
	}
	return d
}

type opMsg struct {
	id  uint64
	op  core.Op
	res core.OpResult
}

type sessMsg struct {
	step    int // 0 grant, 1 register, 2 revoke
	sent    time.Time
	session string
	kv      core.KV
	err     error
}

type kaMsg struct {
	session string
	sent    time.Time
	err     error
}

func (w *world) run() {
	limit := w.now().Add(time.Duration(w.cfg.Faults+4) * 4 * w.cfg.TTL)
	for w.q.Len() > 0 && w.chk.violation == nil && !w.settled {
		e := heap.Pop(&w.q).(*event)
		if e.at.After(limit) && !w.calm {
			w.enterCalm()
		}
		if w.calm && e.at.Sub(w.calmAt) > 30*w.cfg.TTL {
			invariant, problem := "liveness", "the membership never settled"
			if w.chk.membershipStable() {
				invariant, problem = w.chk.agreement()
			}
			w.chk.fail(invariant, "the cluster did not settle within %v of the faults ending (stage %d): %s", 30*w.cfg.TTL, w.stage, problem)
			break
		}
		w.clock.Set(e.at)
		w.stats.Steps++
		w.mix(uint64(e.at.UnixNano()))
		w.mix(uint64(e.kind)<<32 | uint64(e.seq))
		if e.node != nil {
			w.mix(uint64(e.node.idx)<<32 | uint64(e.inc))
		}
		w.step(e)
		w.fanOut()
		w.chk.afterStep()
	}
	if w.chk.violation == nil && !w.settled {
		w.chk.fail("liveness", "the schedule ended without the cluster agreeing")
	}
}

func (w *world) live(e *event) bool {
	return e.node == nil || (e.node.up && e.node.inc == e.inc)
}

func (w *world) step(e *event) {
	n := e.node
	switch e.kind {
	case evBoot:
		if !n.up {
			w.boot(n)
		}
	case evOpArrive:
		// A message in flight reaches the store even if its sender has
		// died since: that is how a dead node's write can land late.
		msg := e.data.(*opMsg)
		msg.res = w.srv.Do(n.id, msg.op)
		w.chk.afterOp(n, msg.op, msg.res)
		w.logf("%s op#%d %s %s -> %s", n.id, msg.id, opName(msg.op), msg.op.Key, resName(msg.res))
		w.atInc(w.lat(n), evOpReturn, n, e.inc, msg)
	case evOpReturn:
		if !w.live(e) {
			return
		}
		msg := e.data.(*opMsg)
		n.m.Advance(w.now())
		n.m.Deliver(msg.id, msg.res)
		w.drain(n)
	case evSessionArrive:
		w.sessionArrive(n, e)
	case evSessionReturn:
		if w.live(e) {
			w.sessionReturn(n, e.data.(*sessMsg))
		}
	case evKeepAlive:
		if w.live(e) && n.session != "" && e.data.(string) == n.session {
			w.atInc(w.lat(n), evKAArrive, n, e.inc, &kaMsg{session: n.session, sent: w.now()})
			w.atInc(w.cfg.TTL/3, evKeepAlive, n, e.inc, n.session)
		}
	case evKAArrive:
		msg := e.data.(*kaMsg)
		msg.err = w.srv.KeepAlive(n.id, msg.session)
		w.atInc(w.lat(n), evKAReturn, n, e.inc, msg)
	case evKAReturn:
		msg := e.data.(*kaMsg)
		if !w.live(e) || msg.session != n.session {
			return
		}
		switch {
		case msg.err == nil:
			// The client counts its deadline from when it sent the
			// keep-alive, with a tenth of the TTL to spare.
			dl := msg.sent.Add(w.cfg.TTL - w.cfg.TTL/10)
			if dl.After(n.clientDead) {
				n.clientDead = dl
				w.atInc(dl.Sub(w.now()), evClientDeadline, n, e.inc, n.session)
			}
		case errors.Is(msg.err, core.ErrNotFound):
			w.loseSession(n, "keep-alive: session gone")
		}
	case evClientDeadline:
		if w.live(e) && n.session == e.data.(string) && !w.now().Before(n.clientDead) {
			w.loseSession(n, "client deadline passed")
		}
	case evTimer:
		if w.live(e) {
			n.m.Advance(w.now())
			w.drain(n)
		}
	case evDeliver:
		if w.live(e) {
			w.deliver(n, e.data.(int))
		}
	case evReap:
		for _, id := range w.srv.ExpireDue() {
			w.logf("store expired session %s", id)
			w.chk.sessionEnded(id, false)
		}
		w.at(w.cfg.TTL/10, evReap, nil, nil)
	case evFault:
		if !w.calm && w.faultsLeft > 0 {
			w.faultsLeft--
			w.fault()
			if w.faultsLeft > 0 {
				w.at(w.faultGap(), evFault, nil, nil)
			} else {
				w.at(w.cfg.TTL, evFault, nil, nil)
			}
		} else if !w.calm {
			w.enterCalm()
		}
	case evHeal:
		e.data.(func())()
	case evRosterTick:
		w.rosterTick()
		w.at(w.cfg.TTL, evRosterTick, nil, nil)
	case evCheckSettled:
		w.chk.checkSettled()
	case evCheckpointArrive:
		w.checkpointArrive(n, e.data.(*checkpointMsg))
	case evCheckpointReply:
		msg := e.data.(*checkpointMsg)
		if !w.live(e) {
			w.lose(msg, "its sender is down")
			return
		}
		w.checkpointReply(n, msg)
	}
}

func (w *world) atInc(d time.Duration, kind evKind, n *simNode, inc int, data any) {
	w.seq++
	heap.Push(&w.q, &event{at: w.now().Add(d), seq: w.seq, kind: kind, node: n, inc: inc, data: data})
}

// ---- node lifecycle ----

func (w *world) boot(n *simNode) {
	n.up = true
	n.inc++
	m, err := core.NewMachine(core.MachineConfig{
		Node: n.id, Prefix: w.prefix, Services: n.svcs,
		RetryMin: w.cfg.TTL / 20, RetryMax: w.cfg.TTL / 2,
		ElectionTimeout: 3 * w.cfg.TTL,
		Seed:            w.cfg.Seed*1000 + uint64(n.idx)*7 + uint64(n.inc),
		Mutations:       w.cfg.Mutations,
	})
	if err != nil {
		panic(err) // the simulation builds only valid configs
	}
	n.m = m
	n.session = ""
	n.opening = false
	n.clientDead = time.Time{}
	n.lastDeliver = [3]time.Time{}
	n.pendingDeliver = [3]bool{}
	n.timerAt = time.Time{}
	n.seqs = map[string]int64{}
	n.tenure = map[string]int64{}
	w.logf("%s boots (incarnation %d)", n.id, n.inc)
	w.chk.nodeReset(n)
	// A fresh process watches from scratch: it gets the current snapshots.
	for k := 0; k < 3; k++ {
		w.scheduleDeliver(n, k)
	}
	w.openSession(n)
}

func (w *world) crash(n *simNode) {
	w.logf("%s crashes", n.id)
	n.up = false
	n.inc++
	n.session = ""
	n.opening = false
	w.chk.nodeReset(n)
}

func (w *world) openSession(n *simNode) {
	if n.opening {
		return
	}
	n.opening = true
	w.atInc(w.lat(n), evSessionArrive, n, n.inc, &sessMsg{step: 0, sent: w.now()})
}

func (w *world) sessionArrive(n *simNode, e *event) {
	msg := e.data.(*sessMsg)
	switch msg.step {
	case 0:
		msg.session, msg.err = w.srv.Grant(n.id, w.cfg.TTL)
		if msg.err == nil {
			w.chk.sessionGranted(msg.session, n)
		}
	case 1:
		key, val := n.m.MemberRecord(msg.session, "")
		msg.kv, msg.err = w.srv.Register(n.id, msg.session, key, val)
	case 2:
		if err := w.srv.Revoke(n.id, msg.session); err == nil {
			w.chk.sessionEnded(msg.session, false)
		}
		return
	}
	w.logf("%s session step %d %s -> %v", n.id, msg.step, msg.session, msg.err)
	w.atInc(w.lat(n), evSessionReturn, n, e.inc, msg)
}

func (w *world) sessionReturn(n *simNode, msg *sessMsg) {
	switch {
	case msg.err != nil:
		// Retry from a new grant after a pause; a session granted but not
		// registered is left to expire, as a real client's would be.
		w.atInc(w.cfg.TTL/5, evSessionArrive, n, n.inc, &sessMsg{step: 0, sent: w.now().Add(w.cfg.TTL / 5)})
	case msg.step == 0:
		// The grant's own round trip counts as a first keep-alive.
		n.clientDead = msg.sent.Add(w.cfg.TTL - w.cfg.TTL/10)
		w.atInc(w.lat(n), evSessionArrive, n, n.inc, &sessMsg{step: 1, session: msg.session})
	case msg.step == 1:
		if !w.now().Before(n.clientDead) {
			w.atInc(0, evSessionArrive, n, n.inc, &sessMsg{step: 0, sent: w.now()})
			return
		}
		n.opening = false
		n.session = msg.session
		n.memberKV = msg.kv
		w.logf("%s joined with session %s", n.id, msg.session)
		w.atInc(n.clientDead.Sub(w.now()), evClientDeadline, n, n.inc, n.session)
		w.atInc(0, evKeepAlive, n, n.inc, n.session)
		n.m.Advance(w.now())
		n.m.SetSession(msg.session, msg.kv)
		w.drain(n)
	}
}

func (w *world) loseSession(n *simNode, why string) {
	old := n.session
	w.logf("%s loses session %s: %s", n.id, old, why)
	n.session = ""
	n.m.Advance(w.now())
	n.m.LoseSession()
	w.drain(n)
	w.chk.sessionLostLocally(n, old)
	// Revoke the old session, best effort, then join again.
	w.atInc(w.lat(n), evSessionArrive, n, n.inc, &sessMsg{step: 2, session: old})
	w.openSession(n)
}

// drain takes the machine's Ready and acts on it.
func (w *world) drain(n *simNode) {
	r := n.m.Ready()
	for _, req := range r.Requests {
		w.atInc(w.lat(n), evOpArrive, n, n.inc, &opMsg{id: req.ID, op: req.Op})
	}
	for _, ev := range r.Events {
		w.logf("%s event %s role=%s primary=%s epoch=%d token=%d", n.id, ev.Service, ev.Role, ev.Primary, ev.Epoch, ev.Token)
		if ev.Token > 0 {
			// What a replica does with every event: from now on, refuse
			// checkpoints from primaries older than this one.
			n.gate(ev.Service).Observe(ev.Epoch, ev.Token)
		}
		w.chk.onEvent(n, ev)
	}
	for _, rep := range r.Reports {
		w.stats.Elections++
		w.logf("%s report %s round=%s %s ops=%d rtt=%d", n.id, rep.Service, rep.Round, rep.Outcome, rep.Ops, rep.RoundTrips)
		w.chk.onReport(n, rep)
	}
	for _, warn := range r.Warnings {
		w.logf("%s warning: %v", n.id, warn)
	}
	if at, ok := n.m.NextDeadline(); ok && (n.timerAt.IsZero() || at.Before(n.timerAt) || !n.timerAt.After(w.now())) {
		n.timerAt = at
		w.atInc(max(at.Sub(w.now()), 0), evTimer, n, n.inc, nil)
	}
}

// ---- watches ----

const (
	kMembers = iota
	kPrimaries
	kRosters
)

func (w *world) folder(k int) string {
	return w.prefix + [...]string{"members/", "primary/", "roster/"}[k]
}

// fanOut schedules, for every node, the delivery of the newest snapshot
// of each folder that changed. A watch channel holds only the newest
// snapshot, so a node that already has one pending gets nothing more.
func (w *world) fanOut() {
	for k := 0; k < 3; k++ {
		if !w.dirty[k] {
			continue
		}
		w.dirty[k] = false
		if k == kMembers {
			w.lastMember = w.now()
		}
		for _, n := range w.nodes {
			if n.up {
				w.scheduleDeliver(n, k)
			}
		}
	}
}

func (w *world) scheduleDeliver(n *simNode, k int) {
	if n.pendingDeliver[k] {
		return
	}
	n.pendingDeliver[k] = true
	at := w.now().Add(w.lat(n) + n.lag)
	if at.Before(n.lastDeliver[k]) {
		at = n.lastDeliver[k]
	}
	n.lastDeliver[k] = at
	w.atInc(at.Sub(w.now()), evDeliver, n, n.inc, k)
}

func (w *world) deliver(n *simNode, k int) {
	n.pendingDeliver[k] = false
	snap := w.srv.Snapshot(w.folder(k))
	n.m.Advance(w.now())
	switch k {
	case kMembers:
		w.logf("%s sees view rev=%d members=%d", n.id, snap.Revision, len(snap.KVs))
		n.m.SetView(snap)
	case kPrimaries:
		n.m.SetPrimaries(snap)
	case kRosters:
		n.m.SetRosters(snap)
	}
	w.drain(n)
}

// ---- faults ----

func (w *world) fault() {
	up := w.upNodes()
	pick := func() *simNode { return w.nodes[w.rng.IntN(len(w.nodes))] }
	heal := func(after time.Duration, f func()) { w.at(after, evHeal, nil, f) }
	switch x := w.rng.IntN(100); {
	case x < 18: // crash, and restart later
		if len(up) <= 1 {
			return
		}
		n := up[w.rng.IntN(len(up))]
		w.crash(n)
		back := time.Duration(w.rng.Int64N(int64(3 * w.cfg.TTL)))
		w.at(back, evBoot, n, nil)
	case x < 28: // crash a primary
		n := w.somePrimary()
		if n == nil || len(up) <= 1 {
			return
		}
		w.crash(n)
		w.at(time.Duration(w.rng.Int64N(int64(3*w.cfg.TTL))), evBoot, n, nil)
	case x < 38: // expire a session from outside
		n := pick()
		if n.session != "" {
			w.logf("fault: expire %s's session %s", n.id, n.session)
			w.chk.sessionEnded(n.session, true)
			_ = w.srv.ExpireSession(n.session)
		}
	case x < 50: // store errors on some operations
		n := pick()
		ops := [][]string{{"cas", "create"}, {"get", "list"}, {"cas"}, nil}[w.rng.IntN(4)]
		key := [...]string{"", w.prefix + "cand/", w.prefix + "primary/", w.prefix + "members/"}[w.rng.IntN(4)]
		client := n.id
		if w.rng.IntN(3) == 0 {
			client = ""
		}
		times := 1 + w.rng.IntN(20)
		w.logf("fault: %d errors for client %q ops %v under %q", times, client, ops, key)
		w.srv.InjectFault(memory.Fault{Client: client, Ops: ops, KeyPrefix: key, Times: times})
	case x < 62: // a slow link
		n := pick()
		n.latency = time.Duration(w.rng.Int64N(int64(w.cfg.TTL / 3)))
		w.logf("fault: %s's link slows by up to %v", n.id, n.latency)
		heal(time.Duration(w.rng.Int64N(int64(2*w.cfg.TTL))), func() { n.latency = 0 })
	case x < 74: // a node sees new views late
		n := pick()
		n.lag = time.Duration(w.rng.Int64N(int64(w.cfg.TTL)))
		w.logf("fault: %s sees views %v late", n.id, n.lag)
		heal(time.Duration(w.rng.Int64N(int64(3*w.cfg.TTL))), func() { n.lag = 0 })
	case x < 86: // cut a node off from the store
		n := pick()
		w.logf("fault: %s is cut off from the store and its peers", n.id)
		w.srv.Isolate(n.id, true)
		n.cut = true
		heal(time.Duration(w.rng.Int64N(int64(2*w.cfg.TTL))), func() {
			w.logf("%s is reconnected", n.id)
			w.srv.Isolate(n.id, false)
			n.cut = false
		})
	default: // a primary resigns
		n := w.somePrimary()
		if n == nil {
			return
		}
		for _, sc := range n.svcs {
			if n.m.IsPrimary(sc.Name) {
				w.logf("fault: %s resigns %s", n.id, sc.Name)
				_ = n.m.Resign(sc.Name)
				w.chk.resigned(n, sc.Name)
				w.drain(n)
				break
			}
		}
	}
}

// enterCalm ends the faults: errors stop, links heal, cut-off nodes come
// back and crashed ones restart. From here on the cluster must agree
// within a bounded number of round trips of its last membership change.
func (w *world) enterCalm() {
	if w.calm {
		return
	}
	w.calm = true
	w.calmAt = w.now()
	w.stageAt = w.now()
	w.logf("calm: faults end")
	w.srv.ClearFaults()
	for _, n := range w.nodes {
		n.latency, n.lag = 0, 0
		w.srv.Isolate(n.id, false)
		n.cut = false
		if !n.up {
			w.at(0, evBoot, n, nil)
		}
	}
	w.at(w.cfg.TTL/10, evCheckSettled, nil, nil)
}

// nextStage moves the calm phase on once the cluster has settled: first a
// clean failover (the primary of a service crashes and stays down), then
// its return. The strict liveness bound applies to these two stages, where
// the store is healthy and the only change is one membership change.
func (w *world) nextStage() {
	w.stageAt = w.now()
	switch w.stage {
	case 0:
		w.stage = 1
		if len(w.upNodes()) > 1 {
			svc := w.svcs[w.rng.IntN(len(w.svcs))]
			for _, n := range w.upNodes() {
				if n.m.IsPrimary(svc) {
					w.victim = n
				}
			}
		}
		if w.victim != nil {
			w.logf("calm stage 1: crash the primary %s", w.victim.id)
			w.crash(w.victim)
			return
		}
		fallthrough
	case 1:
		w.stage = 2
		if w.victim != nil {
			w.logf("calm stage 2: %s comes back", w.victim.id)
			w.boot(w.victim)
			return
		}
		fallthrough
	default:
		w.settled = true
	}
}

func (w *world) upNodes() []*simNode {
	var out []*simNode
	for _, n := range w.nodes {
		if n.up {
			out = append(out, n)
		}
	}
	return out
}

func (w *world) somePrimary() *simNode {
	var ps []*simNode
	for _, n := range w.nodes {
		if !n.up {
			continue
		}
		for _, sc := range n.svcs {
			if n.m.IsPrimary(sc.Name) {
				ps = append(ps, n)
				break
			}
		}
	}
	if len(ps) == 0 {
		return nil
	}
	return ps[w.rng.IntN(len(ps))]
}

// ---- small helpers ----

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

func opName(op core.Op) string {
	return [...]string{"?", "get", "list", "create", "cas"}[op.Kind]
}

func resName(r core.OpResult) string {
	switch {
	case r.Err != nil:
		return r.Err.Error()
	case r.List.Revision != 0 || len(r.List.KVs) > 0:
		return fmt.Sprintf("%d keys rev=%d", len(r.List.KVs), r.List.Revision)
	default:
		return fmt.Sprintf("v=%d rev=%d", r.KV.Version, r.KV.Revision)
	}
}

type ring struct {
	buf  []string
	next int
	full bool
}

func newRing(n int) *ring { return &ring{buf: make([]string, n)} }

func (r *ring) add(s string) {
	r.buf[r.next] = s
	r.next = (r.next + 1) % len(r.buf)
	if r.next == 0 {
		r.full = true
	}
}

func (r *ring) lines() []string {
	if !r.full {
		return append([]string(nil), r.buf[:r.next]...)
	}
	return append(append([]string(nil), r.buf[r.next:]...), r.buf[:r.next]...)
}
