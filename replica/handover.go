package replica

import (
	"context"
	"fmt"

	"github.com/concordha/concord/core"
)

// Handover moves the service's primary role away from this node in a
// planned way (a switchover). It takes a last checkpoint and sends it,
// then resigns: the resigning node ranks last, and the freshest secondary
// wins. With to set, the last checkpoint goes to that node alone (after
// a full transfer and promotion if it is a spare), which makes it the
// freshest secondary, so it wins. Periodic checkpoints wait meanwhile.
// Errors: core.ErrUnknownService; core.ErrNotPrimary;
// core.ErrInvalidArgument if to is not a live provider; the transfer's or
// the resignation's error.
func (h *Host) Handover(ctx context.Context, service, to string) error {
	s, ok := h.svcs[service]
	if !ok {
		return fmt.Errorf("%w: %q", core.ErrUnknownService, service)
	}
	if to == h.cfg.Node {
		return fmt.Errorf("%w: %q is already the primary of %q", core.ErrInvalidArgument, to, service)
	}
	if s.spec.Provider == nil {
		if to != "" {
			return fmt.Errorf("%w: %q has no provider, so its state cannot be handed to %q; switch over without a target", core.ErrInvalidArgument, service, to)
		}
		return h.node.Resign(ctx, service)
	}
	ev, role := s.state()
	if ev.Role != core.RolePrimary || role != core.RolePrimary {
		return fmt.Errorf("%w: %q", core.ErrNotPrimary, service)
	}
	// No periodic checkpoint may come between the last one and the
	// resignation: it would make the others as fresh as the target.
	s.cycle.Lock()
	defer s.cycle.Unlock()
	seq, acked, err := h.cycleLocked(ctx, s, ev, to)
	if err != nil {
		return fmt.Errorf("last checkpoint before the switchover: %w", err)
	}
	if to != "" && (len(acked) != 1 || acked[0] != to) {
		return fmt.Errorf("last checkpoint %d did not reach %q; the primary stays", seq, to)
	}
	if to == "" && len(acked) < s.spec.SyncAcks {
		return fmt.Errorf("last checkpoint %d reached %d secondaries, %d required; the primary stays", seq, len(acked), s.spec.SyncAcks)
	}
	h.log.Info("switching over: resigning after the last checkpoint", "service", service, "to", to, "seq", seq)
	return h.node.Resign(ctx, service)
}
