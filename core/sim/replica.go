package sim

import (
	"fmt"
	"time"

	"github.com/concordha/concord/core"
)

// This file plays the replica layer above the election, as the real one
// (package replica) works, but through the simulated network: every TTL,
// each primary sends a checkpoint to the live secondaries of its roster,
// and a full transfer to the spares it wants to promote, all stamped
// {epoch, token, seq}. A receiver admits a checkpoint through its Gate for
// the service (which survives crashes, as the persisted stamp does),
// applies it and acknowledges it, or refuses it. An acknowledgement that
// reaches the primary while it still holds the same token is recorded in
// the roster; a spare is promoted first (FIG. 5, step 504: only after the
// full transfer).

// checkpointMsg is one checkpoint on its way to a receiver, then its
// answer on its way back.
type checkpointMsg struct {
	svc      string
	from, to *simNode
	stamp    core.Stamp
	full     bool  // a full transfer to a spare, to promote it
	err      error // the receiver's refusal, if any
	back     bool  // the answer is on its way back
}

func (m *checkpointMsg) String() string {
	kind := "checkpoint"
	if m.full {
		kind = "full transfer"
	}
	return fmt.Sprintf("%s of %s (%v) %s->%s", kind, m.svc, m.stamp, m.from.id, m.to.id)
}

// gate returns the node's Gate for a service.
func (n *simNode) gate(svc string) *core.Gate {
	g := n.gates[svc]
	if g == nil {
		g = &core.Gate{}
		n.gates[svc] = g
	}
	return g
}

// rosterTick is one checkpoint cycle of every primary: what a replica
// manager does every checkpoint interval.
func (w *world) rosterTick() {
	for _, n := range w.nodes {
		if !n.up || n.session == "" {
			continue
		}
		for _, sc := range n.svcs {
			tok, ok := n.m.Token(sc.Name)
			if !ok {
				continue
			}
			st, err := n.m.Status(sc.Name)
			if err != nil {
				continue
			}
			want := 1 + int(w.cfg.Seed+uint64(len(sc.Name)))%2
			var secs, spares []string
			for _, s := range w.chk.secondaries(sc.Name) {
				if s != n.id {
					secs = append(secs, s)
				}
			}
			if len(secs) < want {
				var cands []string
				for _, c := range w.chk.liveProviders(sc.Name) {
					if c != n.id && !contains(secs, c) {
						cands = append(cands, c)
					}
				}
				for len(secs)+len(spares) < want && len(cands) > 0 {
					k := w.rng.IntN(len(cands))
					spares = append(spares, cands[k])
					cands = append(cands[:k], cands[k+1:]...)
				}
			}
			if len(secs)+len(spares) == 0 {
				continue
			}
			if n.tenure[sc.Name] != tok {
				n.tenure[sc.Name], n.seqs[sc.Name] = tok, 0
			}
			n.seqs[sc.Name]++
			stamp := core.Stamp{Epoch: st.Epoch, Token: tok, Seq: n.seqs[sc.Name]}
			for _, s := range secs {
				w.sendCheckpoint(&checkpointMsg{svc: sc.Name, from: n, to: w.byID[s], stamp: stamp})
			}
			for _, s := range spares {
				w.sendCheckpoint(&checkpointMsg{svc: sc.Name, from: n, to: w.byID[s], stamp: stamp, full: true})
			}
		}
	}
}

// peerDelay draws the one-way delay of a message between two nodes: the
// sender's latency and the receiver's slow link, if any; and, for one
// message in six, a receiver that takes up to a TTL to get to it, which
// reorders checkpoints and answers.
func (w *world) peerDelay(from, to *simNode) time.Duration {
	d := w.lat(from)
	if to.latency > 0 {
		d += time.Duration(w.rng.Int64N(int64(to.latency)))
	}
	if w.rng.IntN(6) == 0 {
		d += time.Duration(w.rng.Int64N(int64(w.cfg.TTL)))
	}
	return d
}

func (w *world) sendCheckpoint(msg *checkpointMsg) {
	if msg.from.cut {
		w.lose(msg, "its sender is cut off")
		return
	}
	w.logf("%s sends %v", msg.from.id, msg)
	// The receiver takes it in whatever incarnation it is in when it
	// arrives; the answer goes back only to the incarnation that sent it.
	w.at(w.peerDelay(msg.from, msg.to), evCheckpointArrive, msg.to, msg)
}

func (w *world) lose(msg *checkpointMsg, why string) {
	w.stats.Lost++
	what := "checkpoint"
	if msg.back {
		what = "answer to"
	}
	w.logf("lost %s %v: %s", what, msg, why)
}

// checkpointArrive is the receiver's side: admit, apply, answer.
func (w *world) checkpointArrive(n *simNode, msg *checkpointMsg) {
	if !n.up || n.cut {
		w.lose(msg, "its receiver is down or cut off")
		return
	}
	g := n.gate(msg.svc)
	if !w.cfg.Broken.SkipGate {
		msg.err = g.Admit(msg.stamp)
	}
	if msg.err == nil {
		w.stats.Checkpoints++
		if !w.cfg.Broken.AckUnapplied {
			w.chk.applying(n, msg)
			g.Applied(msg.stamp)
		}
		w.logf("%s applies %v", n.id, msg)
	} else {
		w.stats.Refused++
		w.logf("%s refuses %v: %v", n.id, msg, msg.err)
	}
	msg.back = true
	w.atInc(w.peerDelay(n, msg.from), evCheckpointReply, msg.from, msg.from.inc, msg)
}

// checkpointReply is the primary's side: record an acknowledgement,
// promoting a spare first.
func (w *world) checkpointReply(n *simNode, msg *checkpointMsg) {
	switch {
	case n.cut:
		w.lose(msg, "its sender is cut off")
		return
	case msg.err != nil:
		return
	}
	if tok, ok := n.m.Token(msg.svc); !ok || tok != msg.stamp.Token {
		w.logf("%s drops the answer to %v: no longer primary with that token", n.id, msg)
		return
	}
	n.m.Advance(w.now())
	if msg.full {
		if _, err := n.m.Promote(msg.svc, msg.to.id); err != nil {
			w.logf("%s cannot promote %s for %s: %v", n.id, msg.to.id, msg.svc, err)
			w.drain(n)
			return
		}
		w.stats.Promotions++
		w.logf("%s promotes %s for %s after the full transfer", n.id, msg.to.id, msg.svc)
	}
	_, _ = n.m.Acknowledge(msg.svc, msg.to.id, msg.stamp.Seq)
	w.drain(n)
}
