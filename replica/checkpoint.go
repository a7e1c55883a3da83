package replica

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/concordha/concord/core"
)

// The primary's side of checkpoints (FIG. 5): every CheckpointInterval,
// and whenever Checkpoint asks, one cycle takes the provider's state into
// a spool file, sends it to every live secondary and to the spares being
// promoted, and records each acknowledgement in the roster, which feeds
// the freshness part of ranks. A spare becomes a secondary only after it
// applied a whole checkpoint (step 504).

func (h *Host) checkpointLoop(ctx context.Context, s *hosted, ev core.Event) {
	defer h.wg.Done()
	published := s.spec.Endpoint == "" || h.cfg.Store == nil
	if !published {
		published = h.publish(ctx, s, ev)
	}
	t := time.NewTicker(s.spec.CheckpointInterval)
	defer t.Stop()
	// Until the endpoint is out, try again at a shorter period.
	retry := time.NewTicker(min(s.spec.CheckpointInterval, 250*time.Millisecond))
	defer retry.Stop()
	for {
		if !published {
			select {
			case <-ctx.Done():
				return
			case <-retry.C:
				published = h.publish(ctx, s, ev)
				continue
			default:
			}
		}
		h.cycle(ctx, s, ev, "")
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.demand:
		}
	}
}

// Checkpoint takes a checkpoint of the service now and returns once the
// service's SyncAcks secondaries have acknowledged it (recorded in the
// store), with its sequence number and the number of acknowledgements.
// The checkpoint is one started after the call: a write the service made
// before calling is in it.
// Errors: core.ErrUnknownService; core.ErrNotPrimary; an error saying how
// many acknowledgements came if fewer than SyncAcks did; ctx's error.
func (h *Host) Checkpoint(ctx context.Context, service string) (seq int64, acks int, err error) {
	s, ok := h.svcs[service]
	if !ok || s.spec.Provider == nil {
		return 0, 0, fmt.Errorf("%w: %q (or it has no provider)", core.ErrUnknownService, service)
	}
	w := &syncWaiter{done: make(chan syncResult, 1)}
	s.mu.Lock()
	if s.role != core.RolePrimary || s.tenure == nil {
		s.mu.Unlock()
		return 0, 0, fmt.Errorf("%w: %q", core.ErrNotPrimary, service)
	}
	s.waiters = append(s.waiters, w)
	s.mu.Unlock()
	select {
	case s.demand <- struct{}{}:
	default:
	}
	ctx, cancel := context.WithTimeout(ctx, h.cfg.SyncTimeout)
	defer cancel()
	select {
	case r := <-w.done:
		return r.seq, r.acks, r.err
	case <-ctx.Done():
		s.mu.Lock()
		for i, x := range s.waiters {
			if x == w {
				s.waiters = append(s.waiters[:i], s.waiters[i+1:]...)
				break
			}
		}
		s.mu.Unlock()
		return 0, 0, fmt.Errorf("checkpoint of %q not acknowledged in time: %w", service, ctx.Err())
	}
}

type target struct {
	node, addr string
	spare      bool // promote after the transfer
}

// cycle runs one checkpoint round. With only != "", the checkpoint goes to
// that node alone (a handover's final transfer). It returns the seq sent
// and the nodes whose acknowledgement is recorded.
func (h *Host) cycle(ctx context.Context, s *hosted, ev core.Event, only string) (int64, []string, error) {
	s.cycle.Lock()
	defer s.cycle.Unlock()
	return h.cycleLocked(ctx, s, ev, only)
}

// cycleLocked is cycle for a caller that holds s.cycle.
func (h *Host) cycleLocked(ctx context.Context, s *hosted, ev core.Event, only string) (int64, []string, error) {
	s.mu.Lock()
	waiters := s.waiters
	s.waiters = nil
	s.mu.Unlock()
	seq, acked, err := h.runCycle(ctx, s, ev, only)
	for _, w := range waiters {
		r := syncResult{seq: seq, acks: len(acked), err: err}
		if err == nil && len(acked) < s.spec.SyncAcks {
			r.err = fmt.Errorf("checkpoint %d of %q was acknowledged by %d secondaries, %d required (sync_acks): too few live secondaries", seq, s.spec.Name, len(acked), s.spec.SyncAcks)
		}
		w.done <- r
	}
	if err != nil && ctx.Err() == nil {
		h.log.Warn("checkpoint failed", "service", s.spec.Name, "err", err)
	}
	return seq, acked, err
}

func (h *Host) runCycle(ctx context.Context, s *hosted, ev core.Event, only string) (int64, []string, error) {
	name := s.spec.Name
	targets, err := h.targets(ctx, s, only)
	if err != nil {
		return 0, nil, err
	}
	if len(targets) == 0 {
		return 0, nil, nil
	}
	s.mu.Lock()
	s.seq++
	seq := s.seq
	s.mu.Unlock()
	stamp := core.Stamp{Epoch: ev.Epoch, Token: ev.Token, Seq: seq}
	spool, size, err := h.spool(ctx, s, ev, seq)
	if err != nil {
		return seq, nil, err
	}
	defer os.Remove(spool)

	var mu sync.Mutex
	var acked []string
	var errs []error
	failed := map[string]bool{}
	var wg sync.WaitGroup
	for _, t := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := h.send(ctx, s, t, stamp, spool); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("to %s: %w", t.node, err))
				failed[t.node] = !t.spare
				mu.Unlock()
				return
			}
			mu.Lock()
			acked = append(acked, t.node)
			mu.Unlock()
		}()
	}
	wg.Wait()
	h.dropFailing(ctx, s, acked, failed)
	sort.Strings(acked)
	h.log.Debug("checkpoint sent", "service", name, "seq", seq, "bytes", size, "acked", acked)
	if len(errs) > 0 && len(acked) < s.spec.SyncAcks {
		return seq, acked, errors.Join(errs...)
	}
	for _, e := range errs {
		h.log.Warn("a secondary did not take the checkpoint", "service", name, "seq", seq, "err", e)
	}
	return seq, acked, nil
}

// maxMissed is how many checkpoints in a row a secondary may fail to take
// before the primary demotes it, so that a spare that can take them
// replaces it (and it, once it can again, comes back after a full
// transfer).
const maxMissed = 3

func (h *Host) dropFailing(ctx context.Context, s *hosted, acked []string, failed map[string]bool) {
	s.mu.Lock()
	if s.missed == nil {
		s.missed = map[string]int{}
	}
	for _, n := range acked {
		delete(s.missed, n)
	}
	var drop []string
	for n, secondary := range failed {
		if !secondary {
			continue
		}
		s.missed[n]++
		if s.missed[n] >= maxMissed {
			drop = append(drop, n)
			delete(s.missed, n)
		}
	}
	s.mu.Unlock()
	for _, n := range drop {
		h.log.Warn("demoting a secondary that missed checkpoints in a row", "service", s.spec.Name, "node", n, "missed", maxMissed)
		if err := h.node.Demote(ctx, s.spec.Name, n); err != nil {
			h.log.Warn("demoting the secondary failed", "service", s.spec.Name, "node", n, "err", err)
		}
	}
}

// send delivers the spooled checkpoint to t and records its
// acknowledgement (promoting t first if it is a spare).
func (h *Host) send(ctx context.Context, s *hosted, t target, stamp core.Stamp, spool string) error {
	f, err := os.Open(spool)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := h.cfg.Sender.SendCheckpoint(ctx, t.addr, s.spec.Name, stamp, f); err != nil {
		return err
	}
	if t.spare {
		if err := h.node.Promote(ctx, s.spec.Name, t.node); err != nil {
			return fmt.Errorf("promote to secondary after the full transfer: %w", err)
		}
		h.log.Info("spare promoted to secondary after a full state transfer", "service", s.spec.Name, "node", t.node, "seq", stamp.Seq)
	}
	if err := h.node.Acknowledge(ctx, s.spec.Name, t.node, stamp.Seq); err != nil {
		return fmt.Errorf("record the acknowledgement: %w", err)
	}
	return nil
}

// targets lists the live secondaries, plus the spares to promote so that
// the service has its secondaries; extra secondaries are demoted.
func (h *Host) targets(ctx context.Context, s *hosted, only string) ([]target, error) {
	name := s.spec.Name
	members, err := h.node.Members(ctx)
	if err != nil {
		return nil, err
	}
	roster, err := h.node.Roster(ctx, name)
	if err != nil {
		return nil, err
	}
	addr := func(node string) string { return members[node].Address }
	var out []target
	var secs []core.SecondaryEntry
	for _, e := range roster.Secondaries {
		if m, ok := members[e.Node]; ok && m.Session == e.Session && e.Node != h.cfg.Node {
			secs = append(secs, e)
		}
	}
	if only != "" {
		if _, ok := members[only].Services[name]; !ok || only == h.cfg.Node {
			return nil, fmt.Errorf("%w: %q is not a live provider of %q", core.ErrInvalidArgument, only, name)
		}
		spare := true
		for _, e := range secs {
			if e.Node == only {
				spare = false
			}
		}
		return []target{{node: only, addr: addr(only), spare: spare}}, nil
	}
	if extra := len(secs) - s.spec.Secondaries; extra > 0 {
		// The least fresh go first.
		sort.SliceStable(secs, func(i, j int) bool {
			a, b := secs[i], secs[j]
			if a.AckToken != b.AckToken {
				return a.AckToken > b.AckToken
			}
			return a.AckSeq > b.AckSeq
		})
		for _, e := range secs[len(secs)-extra:] {
			if err := h.node.Demote(ctx, name, e.Node); err != nil {
				h.log.Warn("demoting an extra secondary failed", "service", name, "node", e.Node, "err", err)
			}
		}
		secs = secs[:len(secs)-extra]
	}
	in := map[string]bool{}
	for _, e := range secs {
		in[e.Node] = true
		out = append(out, target{node: e.Node, addr: addr(e.Node)})
	}
	if need := s.spec.Secondaries - len(secs); need > 0 {
		var spares []core.Rank
		for id, m := range members {
			sv, ok := m.Services[name]
			if ok && id != h.cfg.Node && !in[id] {
				spares = append(spares, core.Rank{Class: core.ClassSpare, Priority: sv.Priority, Node: id})
			}
		}
		sort.Slice(spares, func(i, j int) bool { return spares[i].Compare(spares[j]) > 0 })
		if h.cfg.Plan != nil {
			// The manager's plan goes first: it spreads the secondaries of
			// all services over the nodes.
			if plan, err := h.cfg.Plan(ctx, name); err == nil && len(plan) > 0 {
				at := func(n string) int {
					if i := slices.Index(plan, n); i >= 0 {
						return i
					}
					return len(plan)
				}
				sort.SliceStable(spares, func(i, j int) bool { return at(spares[i].Node) < at(spares[j].Node) })
			}
		}
		for _, r := range spares[:min(need, len(spares))] {
			out = append(out, target{node: r.Node, addr: addr(r.Node), spare: true})
		}
	}
	for _, t := range out {
		if t.addr == "" {
			return nil, fmt.Errorf("node %q publishes no address: set its node.address (or node.api.listen)", t.node)
		}
	}
	return out, nil
}

// spool writes the provider's checkpoint into a file under the service's
// directory, so that it is taken once and streamed to every target.
func (h *Host) spool(ctx context.Context, s *hosted, ev core.Event, seq int64) (string, int64, error) {
	f, err := os.CreateTemp(s.dir, "checkpoint-*.spool")
	if err != nil {
		return "", 0, fmt.Errorf("checkpoint spool in %q: %w (check node.data_dir)", s.dir, err)
	}
	in := h.info(s, ev, core.RolePrimary)
	in.Seq = seq
	err = h.do(ctx, s, func(c context.Context) error { return s.spec.Provider.Checkpoint(c, in, f) })
	size, _ := f.Seek(0, io.SeekCurrent)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", 0, fmt.Errorf("checkpoint %d of %q: %w", seq, s.spec.Name, err)
	}
	return f.Name(), size, nil
}

// ---- the secondary's side ----

// Admit tells whether a checkpoint of service stamped st may be applied
// here; the node API asks before it reads the body.
// Errors: core.ErrUnknownService; one wrapping core.ErrStaleCheckpoint.
func (h *Host) Admit(service string, st core.Stamp) error {
	s, ok := h.svcs[service]
	if !ok || s.spec.Provider == nil {
		return fmt.Errorf("%w: %q is not run by a provider on this node", core.ErrUnknownService, service)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.role == core.RolePrimary {
		return fmt.Errorf("%w: this node is the primary of %q", core.ErrStaleCheckpoint, service)
	}
	return s.gate.Admit(st)
}

// Apply restores a checkpoint of service stamped st from body, if the
// gate still admits it, and records its stamp on disk. The sender records
// the acknowledgement once Apply returns nil.
func (h *Host) Apply(ctx context.Context, service string, st core.Stamp, body io.Reader) error {
	if err := h.Admit(service, st); err != nil {
		return err
	}
	s := h.svcs[service]
	s.call.Lock()
	defer s.call.Unlock()
	// Admit again under the call lock: another checkpoint may have been
	// applied, or this node promoted, while we waited.
	if err := h.Admit(service, st); err != nil {
		return err
	}
	ev, role := s.state()
	if role == core.RoleNone {
		return fmt.Errorf("%q is not running on this node", service)
	}
	in := h.info(s, ev, role)
	in.Seq = st.Seq
	actx, cancel := context.WithTimeout(ctx, s.spec.ActionTimeout)
	defer cancel()
	if err := s.spec.Provider.Restore(actx, in, body); err != nil {
		return fmt.Errorf("restore %q: %w", service, err)
	}
	if err := saveStamp(s.dir, st); err != nil {
		return err
	}
	s.mu.Lock()
	s.gate.Applied(st)
	s.mu.Unlock()
	h.log.Debug("checkpoint applied", "service", service, "stamp", st.String())
	return nil
}

const stampFile = "applied-checkpoint.json"

func loadStamp(dir string) (core.Stamp, error) {
	var st core.Stamp
	path := filepath.Join(dir, stampFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err == nil {
		err = json.Unmarshal(b, &st)
	}
	if err != nil {
		return st, fmt.Errorf("reading %s: %w (it records the last checkpoint applied; delete it only if this node's state of the service is to be discarded)", path, err)
	}
	return st, nil
}

func saveStamp(dir string, st core.Stamp) error {
	b, _ := json.Marshal(st)
	tmp, err := os.CreateTemp(dir, stampFile+".*")
	if err != nil {
		return err
	}
	_, err = tmp.Write(b)
	if serr := tmp.Sync(); err == nil {
		err = serr
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(dir, stampFile))
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("recording the applied checkpoint in %s: %w", dir, err)
	}
	return nil
}
