package memory

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/concordha/concord/core"
)

// Operation names that a Fault can target.
const (
	opGet       = "get"
	opList      = "list"
	opCreate    = "create"
	opCAS       = "cas"
	opDelete    = "delete" // Client.DeleteVersion, DeleteVersion
	opTxn       = "txn"
	opWatch     = "watch"
	opSession   = "session"   // NewSession, Grant
	opKeepAlive = "keepalive" // a session's keep-alive, KeepAlive
	opRegister  = "register"  // Session.Register, Register
	opRevoke    = "revoke"    // Session.Close, Revoke
	opExpire    = "expire"    // Client.ExpireSession
)

// Fault makes matching calls fail. A call matches when every non-empty
// field of Client, Ops and KeyPrefix matches it.
type Fault struct {
	// Client is the name of the client whose calls fail; "" matches every
	// client.
	Client string
	// Ops names the operations that fail: "get", "list", "create", "cas",
	// "delete" (DeleteVersion), "txn", "watch", "session" (NewSession,
	// Grant), "keepalive", "register", "revoke" (Session.Close, Revoke)
	// and "expire" (Client.ExpireSession). Empty matches every operation.
	Ops []string
	// KeyPrefix restricts the fault to calls whose key starts with it: the
	// key of get, create, cas, delete and register, the prefix of list
	// and watch, and any op's key for txn. Calls that carry no key
	// (session, keepalive, revoke, expire) match only an empty KeyPrefix.
	KeyPrefix string
	// Err is the error the call returns, wrapped so that errors.Is finds
	// it. nil means core.ErrUnavailable.
	Err error
	// Times is how many matching calls fail before the fault removes
	// itself; 0 (or less) means until it is removed.
	Times int
}

type faultRule struct {
	f    Fault
	left int
}

func (r *faultRule) matches(client, op string, keys []string) bool {
	if r.f.Client != "" && r.f.Client != client {
		return false
	}
	if len(r.f.Ops) > 0 && !slices.Contains(r.f.Ops, op) {
		return false
	}
	if r.f.KeyPrefix == "" {
		return true
	}
	for _, k := range keys {
		if strings.HasPrefix(k, r.f.KeyPrefix) {
			return true
		}
	}
	return false
}

// InjectFault adds a fault and returns a function that removes it, which
// is idempotent. Faults apply to Client calls and to Do, Txn,
// DeleteVersion, Grant, KeepAlive and Register, not to Snapshot,
// ExpireSession or ExpireDue.
// When several faults match a call, the earliest injected one answers.
func (s *Server) InjectFault(f Fault) (remove func()) {
	if f.Err == nil {
		f.Err = core.ErrUnavailable
	}
	f.Ops = slices.Clone(f.Ops)
	r := &faultRule{f: f, left: f.Times}
	s.mu.Lock()
	s.faults = append(s.faults, r)
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.removeFaultLocked(r)
	}
}

func (s *Server) removeFaultLocked(r *faultRule) {
	if i := slices.Index(s.faults, r); i >= 0 {
		s.faults = slices.Delete(s.faults, i, i+1)
	}
}

// ClearFaults removes every injected fault.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
}

// SetLatency delays every call of the named client by d before it reaches
// the server. The delay is waited on the server's Clock, so on a
// core.ManualClock the call proceeds only once the clock is advanced, and
// it ends early with an error if the call's context ends. client ""
// sets the latency of every client and drops per-client settings; a named
// client's own setting overrides it. d <= 0 means no latency.
func (s *Server) SetLatency(client string, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d = max(d, 0)
	if client == "" {
		s.defaultLatency = d
		clear(s.latency)
		return
	}
	s.latency[client] = d
}

// SetHung hangs or unhangs the server. While it is hung, every Client call,
// keep-alives included, blocks until the server is unhung, the call's
// context ends (the call then returns an error wrapping ctx.Err()), or the
// client or server is closed. Watches already running keep delivering.
func (s *Server) SetHung(hung bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case hung && !s.hung:
		s.hung = true
		s.unhung = make(chan struct{})
	case !hung && s.hung:
		s.hung = false
		close(s.unhung)
	}
}

// Isolate cuts the named client off from the server, or reconnects it.
// While it is cut off, its calls (and Do, Txn, DeleteVersion, Grant,
// KeepAlive, Register and Revoke in its name) fail at once with
// core.ErrUnavailable, so its sessions miss their keep-alives, are
// declared lost by the client, and later expire at the server. Cutting a
// client off ends its watches with a last snapshot whose Err wraps
// core.ErrUnavailable; reconnecting does not restore them.
func (s *Server) Isolate(client string, cut bool) {
	s.mu.Lock()
	if !cut {
		delete(s.isolated, client)
		s.mu.Unlock()
		return
	}
	s.isolated[client] = true
	ws := s.takeWatchersLocked(func(w *watcher) bool { return w.c.name == client })
	s.mu.Unlock()
	for _, w := range ws {
		w.end(fmt.Errorf("memory: client %q cut off: %w", client, core.ErrUnavailable))
	}
}

// admitLocked decides whether a call reaches the store: not after Close,
// not from an isolated client, not when a fault matches.
func (s *Server) admitLocked(client, op string, keys []string) error {
	if s.closed {
		return fmt.Errorf("memory: %s: %w", op, core.ErrClosed)
	}
	if s.isolated[client] {
		return fmt.Errorf("memory: %s: client %q is cut off: %w", op, client, core.ErrUnavailable)
	}
	for _, r := range s.faults {
		if !r.matches(client, op, keys) {
			continue
		}
		if r.left > 0 {
			r.left--
			if r.left == 0 {
				s.removeFaultLocked(r)
			}
		}
		return fmt.Errorf("memory: %s: injected fault: %w", op, r.f.Err)
	}
	return nil
}

func (s *Server) latencyLocked(client string) time.Duration {
	if d, ok := s.latency[client]; ok {
		return d
	}
	return s.defaultLatency
}

// wait blocks for d on the server's clock, unless ctx ends or the client
// or server closes first.
func (c *Client) wait(ctx context.Context, op string, d time.Duration) error {
	t := c.srv.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("memory: %s: %w", op, ctx.Err())
	case <-c.srv.done:
		return fmt.Errorf("memory: %s: %w", op, core.ErrClosed)
	case <-c.done:
		return fmt.Errorf("memory: %s: client closed: %w", op, core.ErrClosed)
	}
}

// waitUnhung blocks while the server is hung.
func (c *Client) waitUnhung(ctx context.Context, op string) error {
	s := c.srv
	for {
		s.mu.Lock()
		hung, unhung := s.hung, s.unhung
		s.mu.Unlock()
		if !hung {
			return nil
		}
		select {
		case <-unhung:
		case <-ctx.Done():
			return fmt.Errorf("memory: %s: %w", op, ctx.Err())
		case <-s.done:
			return fmt.Errorf("memory: %s: %w", op, core.ErrClosed)
		case <-c.done:
			return fmt.Errorf("memory: %s: client closed: %w", op, core.ErrClosed)
		}
	}
}
