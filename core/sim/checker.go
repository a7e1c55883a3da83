package sim

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/concordha/concord/backends/memory"
	"github.com/concordha/concord/core"
)

// checker tests the invariants of design.md against the store's history
// and the nodes' states, after every step. It reads the store directly,
// never through a node, and judges ranks with its own code.
//
// Besides the election's invariants, it checks the roles, checkpoints and
// dependencies built on top of it:
//
//   - "checkpoint-epoch": a node never applies a checkpoint that is not
//     newer (by token, then sequence number) than the last it applied,
//     whose epoch is older than that one's, or whose epoch or token is
//     older than the newest primary record it had observed. The checker
//     keeps its own account of both, apart from the Gates.
//   - "fresh-promotion": when a secondary claims the primary record of a
//     service without a dependency, the last checkpoint it applied is at
//     least as new as every acknowledgement the roster records for a live
//     secondary, so no acknowledged checkpoint is lost. A node that has
//     just resigned ranks last whatever its freshness, so its entry does
//     not count; and for a dependent, co-location outranks freshness
//     (Rank.Colocated is compared first), so there is nothing to check.
//   - "colocated": see afterStep, checkRank and agreement.
type checker struct {
	w         *world
	keys      core.Keys
	violation *Violation

	owner  map[string]*simNode // session id -> node that was granted it
	ended  map[string]bool     // sessions the store has ended
	forced map[string]bool     // sessions ended by force, from outside

	// acting[service][node]: the node acts as the service's primary.
	acting    map[string]map[string]bool
	lastToken map[string]int64

	changes []memory.Change
	members map[string]memberDecoded // member records by key, decoded once per revision
	// prims holds each service's primary record as last committed.
	prims map[string]core.PrimaryRecord

	// applied and seen are, by node and service ("node/service"), the
	// stamp of the last checkpoint the node applied and the newest epoch
	// and token of a primary it had observed. Like the Gates, they
	// survive crashes.
	applied map[string]core.Stamp
	seen    map[string]core.Stamp

	calmRTTLimit int
}

func newChecker(w *world) *checker {
	keys, _ := core.NewKeys(w.prefix)
	return &checker{
		w: w, keys: keys,
		owner: map[string]*simNode{}, ended: map[string]bool{}, forced: map[string]bool{},
		acting: map[string]map[string]bool{}, lastToken: map[string]int64{},
		members: map[string]memberDecoded{}, prims: map[string]core.PrimaryRecord{},
		applied: map[string]core.Stamp{}, seen: map[string]core.Stamp{},
		// The target is 3 round trips; conflicts between concurrent
		// candidates and a catch-up of a late view can add a few.
		calmRTTLimit: 6,
	}
}

func (c *checker) fail(invariant, format string, args ...any) {
	if c.violation != nil {
		return
	}
	c.violation = &Violation{Invariant: invariant, Detail: fmt.Sprintf(format, args...), At: c.w.elapsed()}
	c.w.logf("VIOLATION %s: %s", invariant, c.violation.Detail)
}

// onChange runs under the store's lock, in commit order: it only records.
func (c *checker) onChange(ch memory.Change) {
	c.changes = append(c.changes, ch)
	switch {
	case strings.HasPrefix(ch.Key, c.keys.Members()):
		c.w.dirty[kMembers] = true
	case strings.HasPrefix(ch.Key, c.keys.Primaries()):
		c.w.dirty[kPrimaries] = true
		if !ch.Deleted {
			rec, _ := core.DecodePrimary(ch.KV) // a bad record names nobody
			c.prims[c.keys.NameIn(c.keys.Primaries(), ch.Key)] = rec
		}
	case strings.HasPrefix(ch.Key, c.keys.Rosters()):
		c.w.dirty[kRosters] = true
	}
}

func (c *checker) sessionGranted(id string, n *simNode) { c.owner[id] = n }

func (c *checker) alive(session string) bool {
	return session != "" && !c.ended[session] && c.w.srv.SessionAlive(session)
}

// sessionEnded is told when the store ends a session. Self-fencing: unless
// it was ended by force from outside, its holder must have stopped acting
// as primary before this moment, because the client's deadline is
// earlier than the store's.
func (c *checker) sessionEnded(id string, forced bool) {
	if forced {
		c.forced[id] = true
	}
	c.ended[id] = true
	n := c.owner[id]
	if forced || n == nil || !n.up || n.session != id {
		return
	}
	for _, s := range sortedKeys(c.acting) {
		if c.acting[s][n.id] {
			c.fail("self-fencing", "%s still acts as primary of %s when the store expires its session %s", n.id, s, id)
			return
		}
	}
}

// sessionLostLocally: once a node knows its session is gone it must not
// act as primary of anything.
func (c *checker) sessionLostLocally(n *simNode, id string) {
	for _, sc := range n.svcs {
		if n.m.IsPrimary(sc.Name) {
			c.fail("self-fencing", "%s still acts as primary of %s after losing session %s", n.id, sc.Name, id)
			return
		}
	}
}

func (c *checker) nodeReset(n *simNode) {
	for _, s := range sortedKeys(c.acting) {
		delete(c.acting[s], n.id)
	}
}

func (c *checker) resigned(n *simNode, svc string) {
	if n.m.IsPrimary(svc) {
		c.fail("resign", "%s still acts as primary of %s after resigning", n.id, svc)
	}
}

// onEvent tracks who acts as primary. When a node starts to, it must be the
// only live-session primary of the service, the primary record must name it
// with its token, and its token must exceed every earlier one.
func (c *checker) onEvent(n *simNode, ev core.Event) {
	if ev.Token > 0 {
		k := n.id + "/" + ev.Service
		s := c.seen[k]
		s.Epoch, s.Token = max(s.Epoch, ev.Epoch), max(s.Token, ev.Token)
		c.seen[k] = s
	}
	act := c.acting[ev.Service]
	if act == nil {
		act = map[string]bool{}
		c.acting[ev.Service] = act
	}
	if ev.Role != core.RolePrimary {
		delete(act, n.id)
		return
	}
	if act[n.id] {
		return
	}
	act[n.id] = true
	if c.forced[n.session] {
		// A node whose session was expired by force may lag: the answer
		// to its claim can arrive after a successor's claim, so it may
		// start acting with an older token. Tokens fence it.
		c.lastToken[ev.Service] = max(c.lastToken[ev.Service], ev.Token)
		return
	}
	if ev.Token <= c.lastToken[ev.Service] {
		c.fail("one primary chain", "%s became primary of %s with token %d, not above the previous token %d", n.id, ev.Service, ev.Token, c.lastToken[ev.Service])
		return
	}
	c.lastToken[ev.Service] = ev.Token
	for _, other := range sortedKeys(act) {
		o := c.node(other)
		if other != n.id && o != nil && c.alive(o.session) {
			c.fail("one primary", "%s and %s both act as primary of %s with live sessions", n.id, other, ev.Service)
			return
		}
	}
	kv := c.get(c.keys.Primary(ev.Service)).KV
	rec, err := core.DecodePrimary(kv)
	if err != nil || rec.Node != n.id || rec.Session != n.session || kv.Revision != ev.Token {
		c.fail("one primary", "%s acts as primary of %s with token %d, but the record says %+v at revision %d (%v)", n.id, ev.Service, ev.Token, rec, kv.Revision, err)
	}
}

func (c *checker) node(id string) *simNode { return c.w.byID[id] }

func (c *checker) onReport(n *simNode, rep core.ElectionReport) {
	w := c.w
	if w.stage > 0 && !rep.Started.Before(w.lastMember) && !rep.Started.Before(w.stageAt) {
		w.stats.MaxRTT = max(w.stats.MaxRTT, rep.RoundTrips)
		if rep.RoundTrips > c.calmRTTLimit {
			c.fail("liveness", "%s's election of %s (round %s, %s) took %d sequential round trips with a stable view; the bound is %d",
				n.id, rep.Service, rep.Round, rep.Outcome, rep.RoundTrips, c.calmRTTLimit)
		}
	}
}

// afterOp checks each change an operation made to a primary record.
func (c *checker) afterOp(n *simNode, op core.Op, res core.OpResult) {
	changes := c.changes
	c.changes = c.changes[:0]
	for _, ch := range changes {
		if ch.Deleted || !strings.HasPrefix(ch.Key, c.keys.Primaries()) {
			continue
		}
		svc := c.keys.NameIn(c.keys.Primaries(), ch.Key)
		next, err := core.DecodePrimary(ch.KV)
		if err != nil {
			c.fail("records", "%s wrote an undecodable primary record for %s: %v", n.id, svc, err)
			return
		}
		if next.Node == "" {
			continue // a resignation
		}
		c.w.stats.Claims++
		var prev core.PrimaryRecord
		if ch.Prev.Key != "" {
			prev, _ = core.DecodePrimary(ch.Prev)
		}
		// Sticky: a claim never replaces a primary whose session lives.
		if prev.Node != "" && (prev.Node != next.Node || prev.Session != next.Session) && c.alive(prev.Session) {
			c.fail("sticky", "%s claimed %s over the live primary %s (session %s)", next.Node, svc, prev.Node, prev.Session)
			return
		}
		c.checkRank(svc, next, prev)
		if c.violation == nil {
			c.checkFresh(svc, next, prev)
		}
	}
}

// applying checks a checkpoint a node is about to apply
// ("checkpoint-epoch").
func (c *checker) applying(n *simNode, msg *checkpointMsg) {
	k := n.id + "/" + msg.svc
	s, last, seen := msg.stamp, c.applied[k], c.seen[k]
	switch {
	case !s.After(last) || s.Epoch < last.Epoch:
		c.fail("checkpoint-epoch", "%s applies %v after it applied %v: a checkpoint must be newer than the last one applied and from no older epoch", n.id, msg, last)
	case s.Token < seen.Token || s.Epoch < seen.Epoch:
		c.fail("checkpoint-epoch", "%s applies %v after it had observed the primary of epoch %d token %d: a replaced primary's checkpoints must be refused", n.id, msg, seen.Epoch, seen.Token)
	}
	c.applied[k] = s
}

// checkFresh: a secondary that claims holds every acknowledged
// checkpoint ("fresh-promotion"; see the checker's doc for the scope).
func (c *checker) checkFresh(svc string, claim, prev core.PrimaryRecord) {
	if c.w.deps[svc] != "" || !c.alive(claim.Session) {
		return
	}
	r := c.get(c.keys.Roster(svc))
	if r.Err != nil {
		return
	}
	roster, err := core.DecodeRoster(r.KV)
	if err != nil {
		return
	}
	if i := roster.Find(claim.Node); i < 0 || roster.Secondaries[i].Session != claim.Session {
		return // not a secondary
	}
	c.w.stats.SecondaryClaims++
	var best core.Stamp
	who := ""
	for _, e := range roster.Secondaries {
		if !c.alive(e.Session) || prev.Node == "" && prev.Resigned == e.Node {
			continue
		}
		if s := (core.Stamp{Token: e.AckToken, Seq: e.AckSeq}); s.After(best) {
			best, who = s, e.Node
		}
	}
	n := c.node(claim.Node)
	if n == nil {
		return
	}
	if last := n.gate(svc).Last(); best.After(last) {
		if who == claim.Node {
			who = "it"
		} else {
			who = "live secondary " + who
		}
		c.fail("fresh-promotion", "secondary %s claimed %s holding checkpoint (%v), but %s acknowledged token %d seq %d: an acknowledged checkpoint is lost",
			claim.Node, svc, last, who, best.Token, best.Seq)
	}
}

// afterStep checks co-location at every instant ("colocated"), in two
// parts, both read off the code of core/election.go:
//
//   - A node never acts as primary of a dependent while it does not act
//     as primary of its dependency. Becoming a dependent's primary needs
//     a claim guarded by the node's claim of the dependency; and whatever
//     makes a node stop acting as the dependency's primary (demote) makes
//     it stop acting as primary of the dependents in the same call: by
//     Resign, which drops the role before it writes, or, when the session
//     is gone, by the same loop that demotes every service. So there is
//     no exception, not even while a resignation is being written. (A
//     dependent's claim whose answer arrives after the dependency was
//     given up would make the node primary of the dependent alone.)
//   - The store agrees: when a dependent's primary record names a live
//     session (not ended by force), the dependency's record names the same
//     node and session, except while that node's resignation of the
//     dependent is being written (Machine.Resigning: the dependency's
//     record may move first), and except when the named node has crashed
//     or has lost that session itself, so that nothing can resign for it
//     until the store ends the session.
func (c *checker) afterStep() {
	w := c.w
	if len(w.dependents) == 0 || c.violation != nil {
		return
	}
	for _, n := range w.nodes {
		if !n.up {
			continue
		}
		for _, d := range n.dependents {
			if n.m.IsPrimary(d) && !n.m.IsPrimary(w.deps[d]) {
				c.fail("colocated", "%s acts as primary of %s but not of its dependency %s", n.id, d, w.deps[d])
				return
			}
		}
	}
	for _, d := range w.dependents {
		rec := c.prims[d]
		if rec.Node == "" || c.forced[rec.Session] || !c.alive(rec.Session) {
			continue
		}
		x := c.node(rec.Node)
		if x == nil || !x.up || x.session != rec.Session || x.m.Resigning(d) {
			continue
		}
		if p := c.prims[w.deps[d]]; p.Node != rec.Node || p.Session != rec.Session {
			c.fail("colocated", "%s's primary record names %s (session %s), but its dependency %s's names %q (session %q), and %s is not resigning %s",
				d, rec.Node, rec.Session, w.deps[d], p.Node, p.Session, rec.Node, d)
			return
		}
	}
}

// checkRank: the claimer must outrank every live provider that was in its
// view (registered no later than the epoch it claimed in). That is
// "secondary before spare", "highest-ranked spare at first start" and
// "the highest-ranked live provider wins" at once.
//
// For a dependent, the claimer must hold the dependency's primary record
// (the claim is guarded by it), which the checker checks first
// ("colocated"); ranks then put the provider hosting the dependency's
// live primary first (Rank.Colocated), as core does.
func (c *checker) checkRank(svc string, claim, prev core.PrimaryRecord) {
	srv := c.w.srv
	var host core.PrimaryRecord
	if dep := c.w.deps[svc]; dep != "" {
		c.w.stats.DependentClaims++
		host = c.prims[dep]
		if host.Node != claim.Node || host.Session != claim.Session {
			c.fail("colocated", "%s (session %s) claimed %s, which depends on %s, while %s's primary record names %q (session %q): only the dependency's primary may claim a dependent",
				claim.Node, claim.Session, svc, dep, dep, host.Node, host.Session)
			return
		}
	}
	members := srv.Snapshot(c.keys.Members())
	var roster core.RosterRecord
	hasRoster := false
	if r := c.get(c.keys.Roster(svc)); r.Err == nil {
		if rr, err := core.DecodeRoster(r.KV); err == nil {
			roster, hasRoster = rr, true
		}
	}
	rank := func(m core.MemberRecord, prio int) core.Rank {
		r := core.Rank{Class: core.ClassSpare, Priority: prio, Node: m.Node}
		r.Colocated = host.Node != "" && host.Node == m.Node && host.Session == m.Session
		switch {
		case prev.Node == "" && prev.Resigned == m.Node:
			r.Class = core.ClassResigned
		case hasRoster:
			if i := roster.Find(m.Node); i >= 0 && roster.Secondaries[i].Session == m.Session {
				e := roster.Secondaries[i]
				r.Class, r.FreshToken, r.FreshSeq = core.ClassSecondary, e.AckToken, e.AckSeq
			}
		}
		return r
	}
	var winner *core.Rank
	var others []core.Rank
	for _, kv := range members.KVs {
		m, err := c.member(kv)
		if err != nil {
			continue
		}
		sv, ok := m.Services[svc]
		if !ok || !c.alive(m.Session) {
			continue
		}
		r := rank(m, sv.Priority)
		if m.Node == claim.Node && m.Session == claim.Session {
			winner = &r
			continue
		}
		if kv.Revision <= claim.Epoch {
			others = append(others, r)
		}
	}
	if winner == nil {
		if !c.forced[claim.Session] && c.alive(claim.Session) {
			c.fail("rank", "%s claimed %s but is not a live provider", claim.Node, svc)
		}
		return
	}
	for _, o := range others {
		if o.Compare(*winner) > 0 {
			c.fail("rank", "%s (rank %+v) claimed %s although live provider %s ranks higher (%+v)", claim.Node, *winner, svc, o.Node, o)
			return
		}
	}
}

// checkSettled runs in the calm phase. Once the membership is stable (every
// running node has joined and every dead session is gone), the cluster
// must agree within a bounded number of round trips: each service's
// primary record names a live provider, that node acts as primary with the
// record's token, every live provider's candidate variable names it, and
// every provider knows it.
func (c *checker) checkSettled() {
	w := c.w
	defer func() {
		if !w.settled && c.violation == nil {
			w.at(w.cfg.TTL/10, evCheckSettled, nil, nil)
		}
	}()
	if !c.membershipStable() {
		return
	}
	invariant, problem := c.agreement()
	if problem == "" {
		since := w.lastMember
		if since.Before(w.stageAt) {
			since = w.stageAt
		}
		w.logf("settled (stage %d) %v after the last membership change", w.stage, w.now().Sub(since))
		if w.stage > 0 {
			w.stats.SettleTime = max(w.stats.SettleTime, w.now().Sub(w.lastMember))
		}
		w.nextStage()
		return
	}
	// The view is seen one latency after it changes; then a bounded
	// number of round trips, each at most two latencies.
	// Each link of a dependency chain adds an election: a dependent's
	// starts when its dependency's primary has claimed.
	bound := w.cfg.Latency + time.Duration((1+w.depth)*2*c.calmRTTLimit)*w.cfg.Latency + w.cfg.TTL/10
	if w.stage > 0 && !w.lastMember.Before(w.stageAt) && w.now().Sub(w.lastMember) > bound {
		c.fail(invariant, "not settled %v after the last membership change (bound %v): %s", w.now().Sub(w.lastMember), bound, problem)
	}
}

// membershipStable: the store's members are exactly the running nodes,
// each with the session it holds, and every running node has one.
func (c *checker) membershipStable() bool {
	w := c.w
	snap := w.srv.Snapshot(c.keys.Members())
	seen := 0
	for _, kv := range snap.KVs {
		m, err := c.member(kv)
		if err != nil {
			return false
		}
		n := c.node(m.Node)
		if n == nil || !n.up || n.session != m.Session {
			return false
		}
		seen++
	}
	return seen == len(w.upNodes())
}

// agreement returns the first way in which the calm cluster does not
// agree yet, or "". A dependent must have the primary of its dependency
// ("colocated"); when that node does not provide it (or the dependency
// has no primary), no node may act as its primary.
func (c *checker) agreement() (invariant, problem string) {
	w := c.w
	type host struct{ node, session string }
	served := map[string]host{} // services with an agreed primary
	for _, svc := range w.svcs {
		provs := c.liveProviders(svc)
		dep := w.deps[svc]
		h, hosted := served[dep]
		if dep != "" && (!hosted || !contains(provs, h.node)) {
			for _, n := range w.nodes {
				if n.up && n.m.IsPrimary(svc) {
					return "colocated", fmt.Sprintf("%s acts as primary of %s, but its dependency %s's primary (%q) does not provide it", n.id, svc, dep, h.node)
				}
			}
			continue
		}
		if len(provs) == 0 {
			continue
		}
		r := c.get(c.keys.Primary(svc))
		if r.Err != nil {
			return "liveness", fmt.Sprintf("%s has no primary record (%v)", svc, r.Err)
		}
		rec, err := core.DecodePrimary(r.KV)
		if err != nil || rec.Node == "" {
			return "liveness", fmt.Sprintf("%s has no primary (%+v, %v)", svc, rec, err)
		}
		p := c.node(rec.Node)
		if p == nil || !p.up || p.session != rec.Session || !contains(provs, rec.Node) {
			return "liveness", fmt.Sprintf("%s's primary record names %s/%s, which is not a live provider", svc, rec.Node, rec.Session)
		}
		if tok, ok := p.m.Token(svc); !ok || tok != r.KV.Revision {
			return "liveness", fmt.Sprintf("%s: %s is named primary but does not act with token %d", svc, p.id, r.KV.Revision)
		}
		if dep != "" && (rec.Node != h.node || rec.Session != h.session) {
			return "colocated", fmt.Sprintf("%s's primary is %s/%s, but its dependency %s's is %s/%s", svc, rec.Node, rec.Session, dep, h.node, h.session)
		}
		served[svc] = host{rec.Node, rec.Session}
		for _, q := range provs {
			cr := c.get(c.keys.Candidate(svc, q))
			if cr.Err != nil {
				return "agreement", fmt.Sprintf("%s: %s has no candidate variable (%v)", svc, q, cr.Err)
			}
			cand, err := core.DecodeCandidate(cr.KV)
			if err != nil || cand.Node != rec.Node {
				return "agreement", fmt.Sprintf("%s: %s's candidate variable names %s, not the primary %s (%v)", svc, q, cand.Node, rec.Node, err)
			}
			st, err := c.node(q).m.Status(svc)
			if err != nil || st.Primary != rec.Node || st.Electing {
				return "agreement", fmt.Sprintf("%s: %s thinks the primary is %q (electing=%v)", svc, q, st.Primary, st.Electing)
			}
		}
	}
	return "", ""
}

// liveProviders returns the nodes whose live session provides svc, sorted.
func (c *checker) liveProviders(svc string) []string {
	var out []string
	for _, kv := range c.w.srv.Snapshot(c.keys.Members()).KVs {
		m, err := c.member(kv)
		if err != nil || !c.alive(m.Session) {
			continue
		}
		if _, ok := m.Services[svc]; ok {
			out = append(out, m.Node)
		}
	}
	sort.Strings(out)
	return out
}

// secondaries returns the nodes the roster of svc lists with live sessions.
func (c *checker) secondaries(svc string) []string {
	r := c.get(c.keys.Roster(svc))
	if r.Err != nil {
		return nil
	}
	rec, err := core.DecodeRoster(r.KV)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range rec.Secondaries {
		if c.alive(e.Session) {
			out = append(out, e.Node)
		}
	}
	return out
}

// get reads a key as it is, around any injected fault.
func (c *checker) get(key string) core.OpResult {
	for _, kv := range c.w.srv.Snapshot(key).KVs {
		if kv.Key == key {
			return core.OpResult{KV: kv}
		}
	}
	return core.OpResult{Err: core.ErrNotFound}
}

type memberDecoded struct {
	rev int64
	rec core.MemberRecord
	err error
}

func (c *checker) member(kv core.KV) (core.MemberRecord, error) {
	d, ok := c.members[kv.Key]
	if !ok || d.rev != kv.Revision {
		d = memberDecoded{rev: kv.Revision}
		d.rec, d.err = core.DecodeMember(kv)
		c.members[kv.Key] = d
	}
	return d.rec, d.err
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
