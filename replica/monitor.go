package replica

import (
	"context"
	"fmt"
	"time"

	"github.com/concordha/concord/core"
)

// monitorLoop checks the service every MonitorInterval. A failed check
// restarts the service locally (claim 7): stop, start and, on the
// primary, promote again with the same token. When MaxRestarts restarts
// within RestartWindow have not helped, a primary resigns so that another
// node takes over; a secondary or spare keeps trying, once per interval.
func (h *Host) monitorLoop(ctx context.Context, s *hosted) {
	defer h.wg.Done()
	t := time.NewTicker(s.spec.MonitorInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := h.check(ctx, s); err != nil && ctx.Err() == nil {
			h.recover(ctx, s, err)
		}
	}
}

func (h *Host) check(ctx context.Context, s *hosted) error {
	ev, role := s.state()
	if role == core.RoleNone {
		return fmt.Errorf("%w: it is not started", ErrNotRunning)
	}
	if role == core.RolePrimary {
		if _, err := h.node.Fence(s.spec.Name); err != nil {
			// The node is no longer the primary, or its session is gone,
			// and the event loop has not demoted the provider yet (it may
			// be busy with another service): demote it from here, so that
			// a stale primary stops serving within a monitor interval.
			// Nor does a monitor run as primary then, which would renew
			// the service's own lease, if it keeps one.
			s.trans.Lock()
			if ev, role := s.state(); role == core.RolePrimary {
				h.log.Warn("the node lost the primary role: demoting the service", "service", s.spec.Name, "err", err)
				h.demote(ctx, s, ev)
			}
			s.trans.Unlock()
			return nil
		}
	}
	in := h.info(s, ev, role)
	return h.do(ctx, s, func(c context.Context) error { return s.spec.Provider.Monitor(c, in) })
}

func (h *Host) recover(ctx context.Context, s *hosted, cause error) {
	name := s.spec.Name
	now := time.Now()
	s.mu.Lock()
	ev, role := s.ev, s.role
	keep := s.restarts[:0]
	for _, t := range s.restarts {
		if now.Sub(t) < s.spec.RestartWindow {
			keep = append(keep, t)
		}
	}
	s.restarts = keep
	exhausted := len(s.restarts) >= s.spec.MaxRestarts
	s.mu.Unlock()

	if exhausted && ev.Role == core.RolePrimary {
		h.giveUpPrimary(ctx, s, fmt.Errorf("monitor failed after %d restarts within %v: %w", len(keep), s.spec.RestartWindow, cause))
		// Bring the service back as a spare, if it will come.
		h.restart(ctx, s, ev, core.RoleSpare)
		return
	}
	s.mu.Lock()
	s.restarts = append(s.restarts, now)
	n := len(s.restarts)
	s.mu.Unlock()
	lvl := "restarting the service"
	if exhausted {
		lvl = "restarting the service (restarts exhausted; not primary, so no failover is needed)"
	}
	h.log.Warn(lvl, "service", name, "role", role.String(), "restart", n, "max_restarts", s.spec.MaxRestarts, "err", cause)
	want := core.RoleSpare
	if ev.Role == core.RolePrimary {
		want = core.RolePrimary
	}
	h.restart(ctx, s, ev, want)
}

// restart stops and starts the provider, then promotes it if want is
// primary and the node still is. A failure here is seen by the next
// check.
func (h *Host) restart(ctx context.Context, s *hosted, ev core.Event, want core.Role) {
	name := s.spec.Name
	s.trans.Lock()
	defer s.trans.Unlock()
	// The event loop may act on this service once we are done.
	defer func() {
		select {
		case h.kick <- struct{}{}:
		default:
		}
	}()
	s.mu.Lock()
	if s.tenure != nil {
		s.tenure()
		s.tenure = nil
	}
	s.role = core.RoleNone
	s.mu.Unlock()
	stop := h.info(s, ev, core.RoleNone)
	if err := h.do(ctx, s, func(c context.Context) error { return s.spec.Provider.Stop(c, stop) }); err != nil {
		h.log.Warn("stop before restart failed", "service", name, "err", err)
	}
	if err := h.start(ctx, s); err != nil {
		h.log.Error("restart failed", "service", name, "err", err)
		return
	}
	if want != core.RolePrimary {
		return
	}
	// Promote only if the node is still primary; otherwise the event
	// loop brings it to its role.
	s.mu.Lock()
	cur := s.ev
	s.mu.Unlock()
	if cur.Role != core.RolePrimary || cur.Token != ev.Token {
		return
	}
	h.promote(ctx, s, cur)
}
