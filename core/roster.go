package core

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// The roster says which providers of a service are secondaries and how
// fresh their state is; ranks read it (role, then freshness). Only the
// primary writes it, by compare-and-swap, guarded where the store allows
// by the primary record still holding the primary's claim. Changes are
// queued and written together, one write in flight per service.

type rosterKind uint8

const (
	rosterPromote rosterKind = iota + 1
	rosterDemote
	rosterAck
	rosterPrune // drop ourselves and dead sessions; internal, never reported
)

type rosterChange struct {
	id   uint64
	kind rosterKind
	node string
	seq  int64
}

// Promote makes a live provider of the service a secondary (FIG. 5, step
// 504; claim 10). The caller transfers state to it first. The result is
// reported in Ready.Roster under the returned ID.
// Errors: ErrUnknownService; ErrNotPrimary; ErrInvalidArgument if node is
// not a live provider of the service.
func (m *Machine) Promote(service, node string) (uint64, error) {
	return m.queueRoster(service, rosterChange{kind: rosterPromote, node: node})
}

// Demote makes a secondary a spare again.
// Errors: ErrUnknownService; ErrNotPrimary.
func (m *Machine) Demote(service, node string) (uint64, error) {
	return m.queueRoster(service, rosterChange{kind: rosterDemote, node: node})
}

// Acknowledge records that secondary node holds this primary's checkpoint
// seq, which feeds the freshness part of its rank. A lower seq than the
// recorded one is ignored.
// Errors: ErrUnknownService; ErrNotPrimary; ErrInvalidArgument (reported
// in Ready.Roster) if node is not a secondary when the change is written.
func (m *Machine) Acknowledge(service, node string, seq int64) (uint64, error) {
	return m.queueRoster(service, rosterChange{kind: rosterAck, node: node, seq: seq})
}

func (m *Machine) queueRoster(service string, ch rosterChange) (uint64, error) {
	s, ok := m.svcs[service]
	if !ok {
		return 0, fmt.Errorf("%w: %q", ErrUnknownService, service)
	}
	if !s.primary {
		return 0, fmt.Errorf("%w: %q", ErrNotPrimary, service)
	}
	if ch.kind == rosterPromote {
		mem, ok := m.view.members[ch.node]
		if _, provides := mem.Services[service]; !ok || !provides {
			return 0, fmt.Errorf("%w: node %q is not a live provider of %q", ErrInvalidArgument, ch.node, service)
		}
		if ch.node == m.cfg.Node {
			return 0, fmt.Errorf("%w: the primary cannot be its own secondary", ErrInvalidArgument)
		}
	}
	m.nextID++
	ch.id = m.nextID
	s.rosterQ = append(s.rosterQ, ch)
	m.pumpRoster(s)
	return ch.id, nil
}

// pruneRoster queues the removal of ourselves and of dead sessions, if the
// roster holds any.
func (m *Machine) pruneRoster(s *service) {
	if !s.primary || !s.ros.exists || s.ros.bad {
		return
	}
	stale := false
	for _, e := range s.ros.rec.Secondaries {
		if e.Node == m.cfg.Node || !m.view.live(e.Node, e.Session) {
			stale = true
		}
	}
	if stale || s.ros.rec.Token != s.token {
		s.rosterQ = append(s.rosterQ, rosterChange{kind: rosterPrune})
		m.pumpRoster(s)
	}
}

func (s *service) rosterDeadline() time.Time {
	if s.rosterRetry {
		return s.rosterAt
	}
	return time.Time{}
}

func (m *Machine) pumpRoster(s *service) {
	if !s.primary || s.rosterInflight || s.rosterRetry || len(s.rosterQ) == 0 {
		return
	}
	next := RosterRecord{}
	if s.ros.exists && !s.ros.bad {
		next = s.ros.rec
		next.Secondaries = slices.Clone(next.Secondaries)
	}
	next.Token, next.Epoch = s.token, m.view.epoch
	batch := s.rosterQ
	s.rosterQ = nil
	var results []RosterResult
	var applied []rosterChange
	for _, ch := range batch {
		if err := m.applyRoster(s, &next, ch); err != nil {
			results = append(results, RosterResult{ID: ch.id, Err: err})
			continue
		}
		applied = append(applied, ch)
	}
	for _, r := range results {
		if r.ID != 0 {
			m.rdy.Roster = append(m.rdy.Roster, r)
		}
	}
	if len(applied) == 0 {
		return
	}
	next.sortEntries()
	if s.ros.exists && !s.ros.bad && slices.Equal(next.Secondaries, s.ros.rec.Secondaries) &&
		next.Token == s.ros.rec.Token && next.Epoch == s.ros.rec.Epoch {
		m.completeRoster(applied, nil)
		return
	}
	op := Op{Kind: OpCreate, Key: m.keys.Roster(s.name), Value: encode(next)}
	if s.ros.exists {
		op.Kind, op.Version = OpCAS, s.ros.kv.Version
	}
	// Only while our claim stands and our session lives: a write that
	// lands after either has ended would change ranks under an election.
	op.Guards = []Guard{
		{Key: m.keys.Primary(s.name), Revision: s.claimKV.Revision},
		{Key: m.memberKV.Key, Revision: m.memberKV.Revision},
	}
	s.rosterInflight = true
	s.rosterBatch = applied
	s.rosterInst++
	m.request(pendingOp{kind: opRoster, svc: s.name, inst: s.rosterInst}, op)
}

func (m *Machine) applyRoster(s *service, r *RosterRecord, ch rosterChange) error {
	i := -1
	if ch.node != "" {
		i = r.Find(ch.node)
	}
	switch ch.kind {
	case rosterPromote:
		mem, ok := m.view.members[ch.node]
		if _, provides := mem.Services[s.name]; !ok || !provides {
			return fmt.Errorf("%w: node %q is no longer a live provider of %q", ErrInvalidArgument, ch.node, s.name)
		}
		if i >= 0 {
			if r.Secondaries[i].Session != mem.Session {
				r.Secondaries[i] = SecondaryEntry{Node: ch.node, Session: mem.Session}
			}
			return nil
		}
		r.Secondaries = append(r.Secondaries, SecondaryEntry{Node: ch.node, Session: mem.Session})
	case rosterDemote:
		if i >= 0 {
			r.Secondaries = slices.Delete(r.Secondaries, i, i+1)
		}
	case rosterAck:
		if i < 0 {
			return fmt.Errorf("%w: node %q is not a secondary of %q", ErrInvalidArgument, ch.node, s.name)
		}
		e := &r.Secondaries[i]
		if e.AckToken < s.token || e.AckToken == s.token && e.AckSeq < ch.seq {
			e.AckToken, e.AckSeq = s.token, ch.seq
		}
	case rosterPrune:
		r.Secondaries = slices.DeleteFunc(r.Secondaries, func(e SecondaryEntry) bool {
			return e.Node == m.cfg.Node || !m.view.live(e.Node, e.Session)
		})
	}
	return nil
}

func (m *Machine) completeRoster(chs []rosterChange, err error) {
	for _, ch := range chs {
		if ch.id != 0 {
			m.rdy.Roster = append(m.rdy.Roster, RosterResult{ID: ch.id, Err: err})
		}
	}
}

func (m *Machine) rosterDone(s *service, p pendingOp, res OpResult) {
	if p.inst != s.rosterInst || !s.rosterInflight {
		return
	}
	if p.kind == opRosterRead {
		switch {
		case res.Err == nil && p.part == 0:
			m.observeRosterKV(s, m.decodeRosterKV(res.KV))
		case res.Err == nil && p.part == 1:
			m.observePrimaryKV(s, m.decodePrimaryKV(res.KV))
		case errors.Is(res.Err, ErrNotFound):
		default:
			m.rosterFailed(s)
			return
		}
		s.rosterReads--
		if s.rosterReads > 0 {
			return
		}
		m.requeueRoster(s)
		return
	}
	switch {
	case res.Err == nil:
		s.rosterInflight = false
		s.rosterFails = 0
		batch := s.rosterBatch
		s.rosterBatch = nil
		m.observeRosterKV(s, m.decodeRosterKV(res.KV))
		m.completeRoster(batch, nil)
		m.pumpRoster(s)
	case isCASFailure(res.Err):
		// The roster or the primary record moved: read both, then try
		// again if we are still the primary.
		s.rosterReads = 2
		m.request(pendingOp{kind: opRosterRead, svc: s.name, inst: s.rosterInst, part: 0}, Op{Kind: OpGet, Key: m.keys.Roster(s.name)})
		m.request(pendingOp{kind: opRosterRead, svc: s.name, inst: s.rosterInst, part: 1}, Op{Kind: OpGet, Key: m.keys.Primary(s.name)})
	default:
		m.rosterFailed(s)
	}
}

func (m *Machine) requeueRoster(s *service) {
	s.rosterInflight = false
	s.rosterQ = append(s.rosterBatch, s.rosterQ...)
	s.rosterBatch = nil
	if !s.primary {
		m.failRoster(s, ErrNotPrimary)
		return
	}
	m.pumpRoster(s)
}

func (m *Machine) rosterFailed(s *service) {
	s.rosterFails++
	s.rosterInst++
	s.rosterInflight = false
	s.rosterQ = append(s.rosterBatch, s.rosterQ...)
	s.rosterBatch = nil
	s.rosterRetry = true
	s.rosterAt = m.now.Add(m.backoff(s.rosterFails))
}

// failRoster ends every queued and in-flight roster change with err.
func (m *Machine) failRoster(s *service, err error) {
	m.completeRoster(s.rosterBatch, err)
	m.completeRoster(s.rosterQ, err)
	s.rosterBatch, s.rosterQ = nil, nil
	s.rosterInflight, s.rosterRetry = false, false
	s.rosterInst++
	s.rosterReads = 0
}
