package core

import (
	"errors"
	"fmt"
	"sort"
	"time"
)

// This file is the election of one service on one node: FIG. 4 (the
// round), FIG. 6 (the sticky path, steps 616-624, and the
// disqualification path, steps 604-614) and FIG. 7 (the compare-and-set
// into a candidate variable), over a store instead of messages.
//
// A round reads the service's primary record, roster and candidate
// variables in one round trip. A node outranked by a live provider stops
// there. The highest-ranked one writes its rank into every provider's
// candidate variable, all in parallel, in a second round trip; and, if no
// higher rank turned up, claims the primary record by compare-and-swap
// from the version it read, in a third.

// service is one service this node provides.
type service struct {
	name string
	prio int
	// dep is the service this one depends on ("" if none); dependents
	// are the services that depend on this one, sorted.
	dep        string
	dependents []string

	// The newest primary record and roster this node knows of, from
	// watches, reads and its own writes.
	prim recState
	ros  rosterState

	// primary is true while this node acts as the service's primary.
	primary bool
	token   int64 // our fencing token while primary
	claimKV KV    // the primary record as our claim wrote it

	// abandon is true while a claim of this dependent is in flight that
	// was sent before we gave its dependency up: if it lands, we resign
	// it at once. It counts as resigning.
	abandon bool
	// resigning is true from Resign until the record is cleared; a
	// failed attempt is retried at resignAt.
	resigning   bool
	resignKV    KV
	resignFails int
	resignAt    time.Time

	last    Event
	emitted bool
	touched bool // listed in Ready.Changed

	el election

	// Roster changes waiting to be written, and the one in flight.
	rosterQ        []rosterChange
	rosterBatch    []rosterChange
	rosterInflight bool
	rosterInst     uint64
	rosterRetry    bool
	rosterAt       time.Time
	rosterFails    int
	rosterReads    int
}

type recState struct {
	kv     KV
	exists bool
	bad    bool
	rec    PrimaryRecord
}

// named reports the node and session the record names, if it is usable.
func (r recState) named() (node, session string, ok bool) {
	if !r.exists || r.bad || r.rec.Node == "" {
		return "", "", false
	}
	return r.rec.Node, r.rec.Session, true
}

type rosterState struct {
	kv     KV
	exists bool
	bad    bool
	rec    RosterRecord
}

type candState struct {
	kv     KV
	exists bool
	bad    bool
	rec    CandidateRecord
}

func (c candState) ok() bool { return c.exists && !c.bad }

type phase uint8

const (
	phIdle       phase = iota // no election; the outcome is known
	phReading                 // step 2: reading record, roster, candidates
	phCatchingUp              // re-reading the membership: our view was behind
	phWriting                 // steps 606-624: writing candidate variables
	phClaiming                // claiming the primary record
	phBackoff                 // a store error; the round restarts at deadline
	phWaiting                 // disqualified; waiting for the winner's claim
)

type election struct {
	inst     uint64 // bumped whenever the running round is abandoned
	phase    phase
	round    Round
	deadline time.Time // for phBackoff and phWaiting
	failures int

	// Accounting for the ElectionReport.
	ops     int
	depth   int
	started time.Time

	outstanding int
	reads       int
	want        int  // reads to wait for
	listed      bool // this round reads every candidate variable
	genRetries  int
	rPrim       recState
	rRos        rosterState
	rDep        recState // a dependent's dependency's primary record
	rCands      map[string]candState

	sticky  bool
	top     bool
	disq    bool
	myRank  Rank
	targets map[string]*target
}

func (e *election) running() bool {
	switch e.phase {
	case phReading, phCatchingUp, phWriting, phClaiming, phBackoff:
		return true
	}
	return false
}

type target struct {
	node string
	cur  candState
}

// start begins an election for s because something changed (a view, the
// record, a session). A round already running is replaced by a new one
// but keeps its accounting: the report covers the whole effort.
func (m *Machine) start(s *service) {
	if m.session == "" || !m.view.known || !m.view.live(m.cfg.Node, m.session) {
		m.stop(s)
		return
	}
	if !s.el.running() {
		s.el.ops, s.el.depth, s.el.started = 0, 0, m.now
		s.el.failures = 0
	}
	s.el.genRetries = 0
	m.read(s)
}

// restart runs the round again from its first step (step 2), keeping the
// accounting.
func (m *Machine) restart(s *service) {
	if m.session == "" || !m.view.live(m.cfg.Node, m.session) {
		m.stop(s)
		return
	}
	m.read(s)
}

func (m *Machine) stop(s *service) {
	m.touch(s)
	s.el.inst++
	s.el.phase = phIdle
	s.el.deadline = time.Time{}
	s.el.outstanding = 0
}

func (m *Machine) issue(s *service, p pendingOp, op Op) {
	p.svc = s.name
	p.inst = s.el.inst
	p.depth = s.el.depth + 1
	s.el.ops++
	s.el.outstanding++
	m.request(p, op)
}

// read is step 2: the record, the roster and every candidate variable of
// the service, as three reads issued together (one round trip).
func (m *Machine) read(s *service) {
	m.touch(s)
	el := &s.el
	el.inst++
	el.phase = phReading
	el.deadline = time.Time{}
	el.outstanding = 0
	el.reads = 0
	el.rPrim, el.rRos, el.rCands, el.rDep = recState{}, rosterState{}, map[string]candState{}, recState{}
	el.sticky, el.top, el.disq, el.targets = false, false, false, nil
	el.listed = m.mayWrite(s)
	el.want = 3
	m.issue(s, pendingOp{kind: opRead, part: 0}, Op{Kind: OpGet, Key: m.keys.Primary(s.name)})
	m.issue(s, pendingOp{kind: opRead, part: 1}, Op{Kind: OpGet, Key: m.keys.Roster(s.name)})
	if el.listed {
		m.issue(s, pendingOp{kind: opRead, part: 2}, Op{Kind: OpList, Key: m.keys.Candidates(s.name)})
	} else {
		m.issue(s, pendingOp{kind: opRead, part: 3}, Op{Kind: OpGet, Key: m.keys.Candidate(s.name, m.cfg.Node)})
	}
	if s.dep != "" {
		// A dependent's round also starts from its dependency's record:
		// who hosts it decides the ranks, and a new host starts a new
		// round (see decide).
		el.want++
		m.issue(s, pendingOp{kind: opRead, part: 4}, Op{Kind: OpGet, Key: m.keys.Primary(s.dep)})
	}
}

// mayWrite guesses, from the primary record and roster we already know,
// whether this round will have us write candidate variables: because we
// are the live primary, or the highest-ranked live provider. Only then do
// we read every candidate variable; the others read their own alone. The
// read itself checks the guess, and a wrong one costs a round trip.
func (m *Machine) mayWrite(s *service) bool {
	if node, sess, ok := s.prim.named(); ok && m.view.live(node, sess) {
		return node == m.cfg.Node && sess == m.session
	}
	provs := m.providers(s, s.prim, s.ros)
	return len(provs) > 0 && provs[0].Node == m.cfg.Node
}

// fail puts the round into backoff after a store error; it restarts
// from step 2 when the backoff ends.
func (m *Machine) fail(s *service) {
	m.touch(s)
	s.el.inst++
	s.el.failures++
	s.el.phase = phBackoff
	s.el.outstanding = 0
	s.el.deadline = m.now.Add(m.backoff(s.el.failures))
}

func isCASFailure(err error) bool {
	return errors.Is(err, ErrConflict) || errors.Is(err, ErrExists) || errors.Is(err, ErrNotFound)
}

func (m *Machine) readDone(s *service, p pendingOp, res OpResult) {
	el := &s.el
	if res.Err != nil && !(p.part != 2 && errors.Is(res.Err, ErrNotFound)) {
		m.fail(s) // a store error; "not found" is an answer for a Get
		return
	}
	found := res.Err == nil
	switch p.part {
	case 0:
		if found {
			el.rPrim = m.decodePrimaryKV(res.KV)
		}
	case 1:
		if found {
			el.rRos = m.decodeRosterKV(res.KV)
		}
	case 2:
		prefix := m.keys.Candidates(s.name)
		for _, kv := range res.List.KVs {
			el.rCands[m.keys.NameIn(prefix, kv.Key)] = m.decodeCandKV(kv)
		}
	case 3:
		if found {
			el.rCands[m.cfg.Node] = m.decodeCandKV(res.KV)
		}
	case 4:
		if found {
			el.rDep = m.decodePrimaryKV(res.KV)
		}
	}
	el.reads++
	if el.reads == el.want {
		m.decide(s)
	}
}

// The decoders check, besides the JSON, that a record does not claim an
// epoch or round newer than its own revision: the writer's view cannot be
// newer than its write. Such a record is garbage, and is overwritten.

func (m *Machine) decodePrimaryKV(kv KV) recState {
	return decodeCached(m, kv, func(kv KV) recState {
		rec, err := DecodePrimary(kv)
		if err == nil && rec.Epoch > kv.Revision {
			err = futureRecord(kv, "epoch", rec.Epoch)
		}
		return recState{kv: kv, exists: true, rec: rec, bad: m.badRecord(err)}
	})
}

func (m *Machine) decodeRosterKV(kv KV) rosterState {
	return decodeCached(m, kv, func(kv KV) rosterState {
		rec, err := DecodeRoster(kv)
		if err == nil && max(rec.Epoch, rec.Token) > kv.Revision {
			err = futureRecord(kv, "epoch or token", max(rec.Epoch, rec.Token))
		}
		return rosterState{kv: kv, exists: true, rec: rec, bad: m.badRecord(err)}
	})
}

func (m *Machine) decodeCandKV(kv KV) candState {
	return decodeCached(m, kv, func(kv KV) candState {
		rec, err := DecodeCandidate(kv)
		if err == nil && max(rec.Round.Epoch, rec.Round.Gen) > kv.Revision {
			err = futureRecord(kv, "round", max(rec.Round.Epoch, rec.Round.Gen))
		}
		return candState{kv: kv, exists: true, rec: rec, bad: m.badRecord(err)}
	})
}

func futureRecord(kv KV, what string, v int64) error {
	return fmt.Errorf("%w: key %q: %s %d is newer than the record's own revision %d", ErrBadRecord, kv.Key, what, v, kv.Revision)
}

// badRecord reports err, if any, and says whether there was one.
func (m *Machine) badRecord(err error) bool {
	if err != nil {
		m.warn(err)
	}
	return err != nil
}

// decodeCached decodes kv once per revision: records are read again and
// watched again far more often than they change.
func decodeCached[T interface{ revision() int64 }](m *Machine, kv KV, decode func(KV) T) T {
	if c, ok := m.decoded[kv.Key].(T); ok && c.revision() == kv.Revision {
		return c
	}
	st := decode(kv)
	m.decoded[kv.Key] = st
	return st
}

func (r recState) revision() int64    { return r.kv.Revision }
func (r rosterState) revision() int64 { return r.kv.Revision }
func (c candState) revision() int64   { return c.kv.Revision }

// decide is FIG. 6 once the round's reads are in.
func (m *Machine) decide(s *service) {
	el := &s.el
	// A record written from a newer view than ours means we are behind:
	// catch up before judging who is live.
	seen := int64(0)
	if el.rPrim.exists && !el.rPrim.bad {
		seen = max(seen, el.rPrim.rec.Epoch)
	}
	if el.rRos.exists && !el.rRos.bad {
		seen = max(seen, el.rRos.rec.Epoch)
	}
	for _, c := range el.rCands {
		if c.ok() {
			seen = max(seen, c.rec.Round.Epoch)
		}
	}
	if seen > m.view.epoch {
		m.requestCatchUp(s, seen)
		return
	}
	// A read that left before a write we already know of (our own claim,
	// say, or a record a watch brought) is stale: read again.
	if s.prim.exists && (!el.rPrim.exists || el.rPrim.kv.Revision < s.prim.kv.Revision) ||
		s.ros.exists && (!el.rRos.exists || el.rRos.kv.Revision < s.ros.kv.Revision) {
		m.restart(s)
		return
	}
	gen := int64(0)
	if el.rPrim.exists {
		gen = el.rPrim.kv.Revision
	}
	if s.dep != "" && el.rDep.exists {
		// A dependent's ranks depend on who hosts its dependency: when
		// that changes, so does the round, and candidate variables that
		// hold the previous host's co-located rank are from an older
		// round, not a higher rank of this one (sim seed 23458).
		m.observePrimaryKV(m.svcs[s.dep], el.rDep)
		gen = max(gen, el.rDep.kv.Revision)
	}
	round := Round{Epoch: m.view.epoch, Gen: gen}
	el.round = round
	// Without a Txn the three reads are not one snapshot: a candidate
	// variable may already be in a round that started from a newer record
	// than the one we read. Read again (a few times at most: a record that
	// keeps claiming a future generation is garbage, and is overwritten).
	if el.genRetries < 3 {
		for _, n := range sortedKeys(el.rCands) {
			if c := el.rCands[n]; c.ok() && c.rec.Round.Compare(round) > 0 {
				el.genRetries++
				m.restart(s)
				return
			}
		}
	}
	m.observePrimaryKV(s, el.rPrim)
	m.observeRosterKV(s, el.rRos)

	me := m.cfg.Node
	if node, sess, ok := el.rPrim.named(); ok && m.view.live(node, sess) && !m.mut.BreakSticky {
		// Steps 616-624: the primary lives, so nothing moves.
		if node != me || sess != m.session {
			m.finish(s, OutcomeFollowed)
			return
		}
		if s.resigning || !s.primary {
			// We are clearing the record; or we gave the role up locally.
			m.finish(s, OutcomeFollowed)
			return
		}
		if m.needList(s) {
			return
		}
		el.sticky, el.top = true, true
		el.myRank = Rank{Class: ClassPrimary, Priority: s.prio, Node: me}
		m.writeTargets(s, m.providerNames(s))
		return
	}

	// Steps 604-614: disqualification.
	provs := m.providers(s, el.rPrim, el.rRos)
	var mine *Rank
	for k := range provs {
		if provs[k].Node == me {
			mine = &provs[k]
		}
	}
	if mine == nil {
		// The view does not list us as a provider of s; wait for one that does.
		m.stop(s)
		return
	}
	el.myRank = *mine
	if own := el.rCands[me]; own.ok() && own.rec.Round == round && m.cmp(own.rec.Rank, el.myRank) > 0 {
		// Step 610: a higher-ranked node already wrote itself here.
		m.finish(s, OutcomeDisqualified)
		return
	}
	// Steps 612-614, visiting the other providers highest rank first.
	// Every rank is computed from records that every node read in step 2
	// (the roster, the primary record, the member records), so a node
	// that is outranked by a live provider is disqualified by the first
	// provider it visits, and sends nothing at all (claim 12). Only the
	// highest-ranked provider writes: its own variable (step 606) and every
	// other one (step 612). With nobody else writing, its compare-and-sets
	// meet no conflict, and the election takes three round trips.
	el.top = provs[0].Node == me && m.mayHost(s)
	if !el.top {
		m.finish(s, OutcomeDisqualified)
		return
	}
	if m.needList(s) {
		return
	}
	m.writeTargets(s, m.providerNames(s))
}

// needList reads every candidate variable if step 2 read only our own
// (mayWrite guessed wrong); decide runs again when the list is in.
func (m *Machine) needList(s *service) bool {
	el := &s.el
	if el.listed {
		return false
	}
	el.listed = true
	el.want++
	el.phase = phReading
	m.issue(s, pendingOp{kind: opRead, part: 2}, Op{Kind: OpList, Key: m.keys.Candidates(s.name)})
	return true
}

// providers returns the live providers of s with their ranks, highest
// rank first.
func (m *Machine) providers(s *service, prim recState, ros rosterState) []Rank {
	var out []Rank
	host := m.depHost(s)
	for _, node := range sortedKeys(m.view.members) {
		mem := m.view.members[node]
		sv, ok := mem.Services[s.name]
		if !ok {
			continue
		}
		r := Rank{Colocated: host != "" && node == host, Class: ClassSpare, Priority: sv.Priority, Node: node}
		if prim.exists && !prim.bad && prim.rec.Node == "" && prim.rec.Resigned == node {
			r.Class = ClassResigned
		} else if ros.exists && !ros.bad && !m.mut.IgnoreRoster {
			if i := ros.rec.Find(node); i >= 0 && ros.rec.Secondaries[i].Session == mem.Session {
				e := ros.rec.Secondaries[i]
				r.Class, r.FreshToken, r.FreshSeq = ClassSecondary, e.AckToken, e.AckSeq
			}
		}
		out = append(out, r)
	}
	sort.SliceStable(out, func(i, j int) bool { return m.cmp(out[i], out[j]) > 0 })
	return out
}

func (m *Machine) providerNames(s *service) []string {
	var out []string
	for _, node := range sortedKeys(m.view.members) {
		if _, ok := m.view.members[node].Services[s.name]; ok {
			out = append(out, node)
		}
	}
	return out
}

// cmp compares ranks; the ReverseRank mutation turns it round.
func (m *Machine) cmp(a, b Rank) int {
	if m.mut.ReverseRank {
		return -a.Compare(b)
	}
	return a.Compare(b)
}

type verdict uint8

const (
	vWrite     verdict = iota // FIG. 7 step 704: overwrite
	vSatisfied                // it already holds us for this round
	vOutranked                // it holds a higher rank for this round
	vBehind                   // it holds a newer round: we are behind
)

// fig7 is the rule of FIG. 7 for one candidate variable: overwrite it if
// it holds an older round, or a lower rank for the same round.
func (m *Machine) fig7(s *service, c candState) verdict {
	if !c.ok() {
		return vWrite
	}
	switch c.rec.Round.Compare(s.el.round) {
	case -1:
		return vWrite
	case 1:
		return vBehind
	}
	switch m.cmp(s.el.myRank, c.rec.Rank) {
	case 1:
		return vWrite
	case 0:
		return vSatisfied
	}
	return vOutranked
}

func (m *Machine) writeTargets(s *service, names []string) {
	el := &s.el
	el.phase = phWriting
	el.targets = make(map[string]*target, len(names))
	var writes []*target
	if m.mut.SkipCandidateCAS {
		names = []string{m.cfg.Node} // the injected bug
	}
	for _, n := range names {
		t := &target{node: n, cur: el.rCands[n]}
		el.targets[n] = t
		write, abandoned := m.judge(s, t)
		if abandoned {
			return
		}
		if write {
			writes = append(writes, t)
		}
	}
	if el.disq {
		// Step 614: once outranked, send nothing more.
		m.finish(s, OutcomeDisqualified)
		return
	}
	for _, t := range writes {
		m.writeCand(s, t)
	}
	if el.outstanding == 0 {
		m.afterWrites(s)
	}
}

// judge applies FIG. 7 to the value t holds: it says whether to write,
// marks the round disqualified if t holds a higher rank, and abandons the
// round (catching up) if t holds a newer one.
func (m *Machine) judge(s *service, t *target) (write, abandoned bool) {
	switch m.fig7(s, t.cur) {
	case vBehind:
		m.behind(s, t.cur.rec.Round)
		return false, true
	case vOutranked:
		s.el.disq = true
	case vWrite:
		return true, false
	}
	return false, false
}

func (m *Machine) writeCand(s *service, t *target) {
	el := &s.el
	rec := CandidateRecord{Round: el.round, Node: m.cfg.Node, Session: m.session, Rank: el.myRank}
	op := Op{Kind: OpCreate, Key: m.keys.Candidate(s.name, t.node), Value: encode(rec)}
	if t.cur.exists {
		op.Kind, op.Version = OpCAS, t.cur.kv.Version
	}
	m.issue(s, pendingOp{kind: opWrite, target: t.node}, op)
}

func (m *Machine) behind(s *service, r Round) {
	if r.Epoch > m.view.epoch {
		m.requestCatchUp(s, r.Epoch)
		return
	}
	m.restart(s)
}

func (m *Machine) writeDone(s *service, p pendingOp, res OpResult) {
	el := &s.el
	t := el.targets[p.target]
	if t == nil {
		return
	}
	switch {
	case p.kind == opWrite && res.Err == nil:
		t.cur = candState{kv: res.KV, exists: true}
	case p.kind == opWrite && isCASFailure(res.Err):
		// Someone wrote it since we read it: read it again and re-apply
		// the rule (FIG. 7 retries the compare-and-set).
		if !el.disq {
			m.issue(s, pendingOp{kind: opReread, target: t.node}, Op{Kind: OpGet, Key: m.keys.Candidate(s.name, t.node)})
		}
	case p.kind == opReread && (res.Err == nil || errors.Is(res.Err, ErrNotFound)):
		if res.Err == nil {
			t.cur = m.decodeCandKV(res.KV)
		} else {
			t.cur = candState{}
		}
		if el.disq {
			break
		}
		write, abandoned := m.judge(s, t)
		if abandoned {
			return
		}
		if write {
			m.writeCand(s, t)
		}
	default:
		m.fail(s)
		return
	}
	if el.outstanding == 0 {
		m.afterWrites(s)
	}
}

func (m *Machine) afterWrites(s *service) {
	el := &s.el
	switch {
	case el.disq, !el.top:
		m.finish(s, OutcomeDisqualified)
	case el.sticky:
		m.finish(s, OutcomeKept)
	default:
		m.claim(s)
	}
}

// claim writes the primary record by compare-and-swap from the version
// read at step 2. Where the store has transactions, a guard on our member
// record makes a claim by a dead session impossible.
func (m *Machine) claim(s *service) {
	el := &s.el
	if !m.mayHost(s) {
		// We gave up the dependency while the round ran.
		m.finish(s, OutcomeDisqualified)
		return
	}
	el.phase = phClaiming
	rec := PrimaryRecord{Node: m.cfg.Node, Session: m.session, Epoch: el.round.Epoch}
	op := Op{Kind: OpCreate, Key: m.keys.Primary(s.name), Value: encode(rec)}
	if el.rPrim.exists {
		op.Kind, op.Version = OpCAS, el.rPrim.kv.Version
	}
	op.Guards = []Guard{{Key: m.memberKV.Key, Revision: m.memberKV.Revision}}
	if s.dep != "" {
		// One multi-key transaction: the claim lands only while our
		// claim of the dependency stands, so the two cannot part.
		d := m.svcs[s.dep]
		op.Guards = append(op.Guards, Guard{Key: m.keys.Primary(d.name), Revision: d.claimKV.Revision})
	}
	m.issue(s, pendingOp{kind: opClaim}, op)
}

func (m *Machine) claimDone(s *service, res OpResult) {
	if res.Err != nil && isCASFailure(res.Err) {
		s.abandon = false // it did not land
	}
	switch {
	case res.Err == nil:
		// The record now names us; observing it makes us primary, unless
		// we resigned meanwhile.
		m.observePrimaryKV(s, m.decodePrimaryKV(res.KV))
		if s.primary {
			m.finish(s, OutcomeWon)
		} else {
			m.finish(s, OutcomeFollowed)
		}
	case isCASFailure(res.Err):
		// The world moved: start again from step 2.
		m.restart(s)
	default:
		// The claim may or may not have applied; reading tells.
		m.fail(s)
	}
}

func (m *Machine) demote(s *service) {
	if !s.primary {
		return
	}
	s.primary = false
	s.token = 0
	s.claimKV = KV{}
	m.failRoster(s, ErrNotPrimary)
	// Dependents move with their dependency: give them up too, so that
	// the dependency's next primary can claim them.
	for _, d := range s.dependents {
		ds := m.svcs[d]
		switch {
		case m.session == "":
		case ds.primary:
			_ = m.Resign(d)
		case ds.el.phase == phClaiming:
			ds.abandon = true
		}
	}
}

func (m *Machine) finish(s *service, o Outcome) {
	m.touch(s)
	el := &s.el
	el.inst++
	el.outstanding = 0
	el.failures = 0
	el.phase = phIdle
	el.deadline = time.Time{}
	if o == OutcomeDisqualified && !m.primaryLive(s) {
		el.phase = phWaiting
		el.deadline = m.now.Add(m.cfg.ElectionTimeout)
	}
	m.rdy.Reports = append(m.rdy.Reports, ElectionReport{
		Service: s.name, Round: el.round, Outcome: o, Ops: el.ops, RoundTrips: el.depth,
		Started: el.started, Finished: m.now,
	})
	m.emit(s)
}

// requestCatchUp re-reads the membership because a record carried a newer
// epoch than our view. The list is linearizable and comes after that
// record was written, so it reflects every change the writer had seen;
// the view's epoch is raised to at least floor (a backend may report a
// lower bound for the revision of a deletion).
func (m *Machine) requestCatchUp(s *service, floor int64) {
	m.touch(s)
	el := &s.el
	el.inst++
	el.outstanding = 0
	el.phase = phCatchingUp
	if m.catchUp == nil {
		m.nextID++
		id := m.nextID
		m.catchUp = &catchUpState{id: id, svcs: map[string]bool{}}
		m.pending[id] = pendingOp{kind: opCatchUp, depth: el.depth + 1}
		m.rdy.Requests = append(m.rdy.Requests, Request{ID: id, Op: Op{Kind: OpList, Key: m.keys.Members()}})
	}
	el.ops++
	m.catchUp.floor = max(m.catchUp.floor, floor)
	m.catchUp.svcs[s.name] = true
}

func (m *Machine) catchUpDone(id uint64, p pendingOp, res OpResult) {
	cu := m.catchUp
	if cu == nil || cu.id != id {
		return
	}
	m.catchUp = nil
	waiting := sortedKeys(cu.svcs)
	for _, n := range waiting {
		s := m.svcs[n]
		s.el.depth = max(s.el.depth, p.depth)
	}
	if res.Err != nil {
		for _, n := range waiting {
			if s := m.svcs[n]; s.el.phase == phCatchingUp {
				m.fail(s)
			}
		}
		return
	}
	if m.session == "" {
		return
	}
	changed := false
	if res.List.Revision >= m.view.rev {
		changed = m.applyView(res.List, cu.floor)
	} else if cu.floor > m.view.epoch {
		// Our watched view is already newer than this list.
		m.view.epoch = cu.floor
		changed = true
		for _, n := range m.names {
			m.start(m.svcs[n])
		}
	}
	if changed {
		return // applyView restarted every service
	}
	for _, n := range waiting {
		if s := m.svcs[n]; s.el.phase == phCatchingUp {
			m.restart(s)
		}
	}
}

// observePrimaryKV takes in a primary record seen in a watch, a read or
// our own write, if it is newer than the one we know. Records are never
// deleted, so "absent" never replaces a record we know: it can only be an
// answer that left the store before the record was written.
func (m *Machine) observePrimaryKV(s *service, st recState) {
	if !st.exists || s.prim.exists && st.kv.Revision <= s.prim.kv.Revision {
		return
	}
	s.prim = st
	node, sess, named := st.named()
	if !(named && node == m.cfg.Node && sess == m.session) {
		s.abandon = false // the record moved on without our claim
	}
	if s.primary && !(named && node == m.cfg.Node && sess == m.session && st.kv.Revision == s.claimKV.Revision) {
		// The record has moved away from our claim: we are not the
		// primary any more.
		m.demote(s)
	}
	if named && node == m.cfg.Node && sess == m.session && m.session != "" && !s.primary && !s.resigning {
		// The record names our live session: a claim of ours applied
		// although we did not see its answer. It is the commit point.
		s.primary = true
		s.token = st.kv.Revision
		s.claimKV = st.kv
		if !m.mayHost(s) {
			// A dependent's claim that landed after we gave up its
			// dependency: give it up at once, without ever acting on it
			// (sim seeds 10296, 47595).
			_ = m.Resign(s.name)
			return
		}
		m.pruneRoster(s)
		m.startDependents(s)
		if !s.el.running() {
			// Tell every provider, in the current view's round (steps
			// 620-624).
			m.emit(s)
			m.start(s)
			return
		}
	}
	m.emit(s)
	if !m.primaryLive(s) {
		if s.el.phase == phIdle || s.el.phase == phWaiting {
			m.start(s)
		}
	} else if s.el.phase == phWaiting {
		s.el.phase = phIdle
		s.el.deadline = time.Time{}
	}
}

// observePrimary takes in a watched primary record (decoding it only if
// it is newer than the one we know).
func (m *Machine) observePrimary(s *service, kv KV) {
	if s.prim.exists && kv.Revision <= s.prim.kv.Revision {
		return
	}
	m.observePrimaryKV(s, m.decodePrimaryKV(kv))
}

// depHost returns the node that is the live primary of the service s
// depends on, or "" (no dependency, or no live primary for it).
func (m *Machine) depHost(s *service) string {
	if s.dep == "" {
		return ""
	}
	d := m.svcs[s.dep]
	if d.primary {
		return m.cfg.Node
	}
	if node, sess, ok := d.prim.named(); ok && m.view.live(node, sess) {
		return node
	}
	return ""
}

// mayHost reports whether this node may claim s: always, unless s
// depends on a service whose primary this node is not.
func (m *Machine) mayHost(s *service) bool {
	return s.dep == "" || m.svcs[s.dep].primary
}

// startDependents runs the elections of the services that depend on s,
// which this node has just become primary of: it is now the only node
// that may claim them.
func (m *Machine) startDependents(s *service) {
	for _, d := range s.dependents {
		ds := m.svcs[d]
		switch {
		case ds.primary || ds.resigning || ds.el.phase == phClaiming:
		case ds.el.running():
			// Its reads may predate our claim: read again.
			m.restart(ds)
		default:
			m.start(ds)
		}
	}
}

func (m *Machine) primaryLive(s *service) bool {
	node, sess, ok := s.prim.named()
	return ok && m.view.live(node, sess)
}

func (m *Machine) observeRosterKV(s *service, st rosterState) {
	if st.exists && (!s.ros.exists || st.kv.Revision > s.ros.kv.Revision) {
		s.ros = st
		m.emit(s)
	}
}

func (m *Machine) observeRoster(s *service, kv KV) {
	if s.ros.exists && kv.Revision <= s.ros.kv.Revision {
		return
	}
	m.observeRosterKV(s, m.decodeRosterKV(kv))
}

func (m *Machine) event(s *service) Event {
	ev := Event{Service: s.name, Role: m.roleOf(s)}
	if s.prim.exists && !s.prim.bad {
		ev.Epoch = s.prim.rec.Epoch
		if s.prim.rec.Node != "" {
			ev.Primary = s.prim.rec.Node
			ev.Token = s.prim.kv.Revision
		}
	}
	if s.primary {
		ev.Primary, ev.Token = m.cfg.Node, s.token
	}
	return ev
}

func (m *Machine) roleOf(s *service) Role {
	switch {
	case s.primary:
		return RolePrimary
	case m.session == "":
		return RoleNone
	case s.ros.exists && !s.ros.bad:
		if i := s.ros.rec.Find(m.cfg.Node); i >= 0 && s.ros.rec.Secondaries[i].Session == m.session {
			return RoleSecondary
		}
	}
	return RoleSpare
}

func (m *Machine) emit(s *service) {
	m.touch(s)
	ev := m.event(s)
	if s.emitted && ev == s.last {
		return
	}
	s.last, s.emitted = ev, true
	m.rdy.Events = append(m.rdy.Events, ev)
}

func sortedKeys[V any](mp map[string]V) []string {
	out := make([]string, 0, len(mp))
	for k := range mp {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
