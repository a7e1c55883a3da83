package replica

import (
	"context"
	"errors"
	"fmt"
	"time"

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
	if s.spec.Endpoint != "" && h.cfg.Store != nil && s.spec.Drain > 0 {
		if err := h.drain(ctx, s, ev); err != nil {
			return err
		}
		resigned := false
		defer func() {
			if !resigned {
				h.undrain(s, ev)
			}
		}()
		err := h.handOver(ctx, s, ev, to)
		resigned = err == nil
		return err
	}
	return h.handOver(ctx, s, ev, to)
}

// drain marks the endpoint draining and waits the service's Drain, while
// the service keeps serving as primary (checkpoints go on): clients'
// new connections are held off, and what is in flight finishes.
func (h *Host) drain(ctx context.Context, s *hosted, ev core.Event) error {
	if err := h.writeEndpoint(ctx, s, ev, s.spec.Drain); err != nil {
		return fmt.Errorf("marking the endpoint draining before the switchover: %w; the primary stays", err)
	}
	t := time.NewTimer(s.spec.Drain)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		h.undrain(s, ev)
		return fmt.Errorf("draining before the switchover: %w; the primary stays", ctx.Err())
	}
}

// undrain publishes the endpoint again after a handover that did not
// happen, if this node is still the primary of the tenure ev.
func (h *Host) undrain(s *hosted, ev core.Event) {
	if cur, _ := s.state(); cur.Role != core.RolePrimary || cur.Token != ev.Token {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.writeEndpoint(ctx, s, ev, 0); err != nil {
		h.log.Error("the switchover failed and the endpoint stays draining: clients are held until the next primary publishes", "service", s.spec.Name, "err", err)
		return
	}
	h.log.Info("the switchover failed; the endpoint is published again", "service", s.spec.Name)
}

// handOver takes the last checkpoint and resigns.
func (h *Host) handOver(ctx context.Context, s *hosted, ev core.Event, to string) error {
	service := s.spec.Name
	if cur, role := s.state(); cur.Role != core.RolePrimary || role != core.RolePrimary || cur.Token != ev.Token {
		return fmt.Errorf("%w: %q: the role was lost before the handover", core.ErrNotPrimary, service)
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

// PrepareStepDown readies the services this node serves as primary for
// a step-down (concord run calls it on SIGTERM, before core.Node.StepDown):
// it marks the endpoint of each that publishes one draining and waits
// the longest of their Drain (or until ctx ends), so that clients finish
// what they started and hold their new connections off; then it sends
// each a last checkpoint, so that the secondary that takes over holds
// every write made until then. The services stay primary here: the caller
// resigns them after. Errors (a record that cannot be written, a
// checkpoint that fails) do not stop the others, and are returned
// together at the end.
func (h *Host) PrepareStepDown(ctx context.Context) error {
	var wait time.Duration
	var errs []error
	var primaries []*hosted
	for _, s := range h.svcs {
		ev, role := s.state()
		if ev.Role != core.RolePrimary || role != core.RolePrimary {
			continue
		}
		primaries = append(primaries, s)
		if s.spec.Endpoint == "" || s.spec.Drain <= 0 || h.cfg.Store == nil {
			continue
		}
		if err := h.writeEndpoint(ctx, s, ev, s.spec.Drain); err != nil {
			errs = append(errs, fmt.Errorf("draining %q: %w", s.spec.Name, err))
			continue
		}
		wait = max(wait, s.spec.Drain)
	}
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return errors.Join(append(errs, ctx.Err())...)
		}
	}
	for _, s := range primaries {
		ev, role := s.state()
		if s.spec.Provider == nil || ev.Role != core.RolePrimary || role != core.RolePrimary {
			continue
		}
		seq, acked, err := h.cycle(ctx, s, ev, "")
		if err != nil {
			errs = append(errs, fmt.Errorf("last checkpoint of %q: %w", s.spec.Name, err))
			continue
		}
		h.log.Info("last checkpoint before stepping down", "service", s.spec.Name, "seq", seq, "acks", len(acked))
	}
	return errors.Join(errs...)
}
