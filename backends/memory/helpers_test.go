package memory

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/concordha/concord/backends/storetest"
	"github.com/concordha/concord/core"
)

// bound is the longest any test waits for something that should happen.
const bound = 10 * time.Second

var t0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// manual returns a server on a ManualClock at t0, closed when the test ends.
func manual(t *testing.T, opts Options) (*Server, *core.ManualClock) {
	t.Helper()
	clk := core.NewManualClock(t0)
	opts.Clock = clk
	srv := New(opts)
	t.Cleanup(srv.Close)
	return srv, clk
}

// eventually polls cond until it returns nil or bound passes.
func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	storetest.Eventually(t, bound, what, cond)
}

// quiet fails if ch yields anything within d: a bounded check that
// something stays blocked.
func quiet[T any](t *testing.T, ch <-chan T, d time.Duration, what string) {
	t.Helper()
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case v := <-ch:
		t.Fatalf("%s: got %v, want nothing yet", what, v)
	case <-tm.C:
	}
}

// recv waits, bounded, for a value from ch.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	tm := time.NewTimer(bound)
	defer tm.Stop()
	select {
	case v := <-ch:
		return v
	case <-tm.C:
		t.Fatalf("%s: nothing after %v", what, bound)
	}
	panic("unreachable")
}

func waitDone(t *testing.T, s core.Session, what string) {
	t.Helper()
	tm := time.NewTimer(bound)
	defer tm.Stop()
	select {
	case <-s.Done():
	case <-tm.C:
		t.Fatalf("%s: Done of session %s not closed after %v", what, s.ID(), bound)
	}
}

func isDone(s core.Session) bool {
	select {
	case <-s.Done():
		return true
	default:
		return false
	}
}

// waitTimer waits until the clock has a pending timer at exactly at: the
// sign that some goroutine is now waiting for that moment.
func waitTimer(t *testing.T, clk *core.ManualClock, at time.Time) {
	t.Helper()
	eventually(t, fmt.Sprintf("a timer pending at %v", at.Sub(t0)), func() error {
		next, ok := clk.NextDeadline()
		if !ok || !next.Equal(at) {
			return fmt.Errorf("next deadline %v (pending %v)", next.Sub(t0), ok)
		}
		return nil
	})
}

// leaseDeadline reads a session's server deadline.
func leaseDeadline(srv *Server, id string) (time.Time, bool) {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	l, ok := srv.leases[id]
	if !ok {
		return time.Time{}, false
	}
	return l.deadline, true
}

// drain reads a watch to its end and returns the last snapshot.
func drain(t *testing.T, ch <-chan core.Snapshot, what string) core.Snapshot {
	t.Helper()
	var last core.Snapshot
	deadline := time.NewTimer(bound)
	defer deadline.Stop()
	for {
		select {
		case snap, ok := <-ch:
			if !ok {
				return last
			}
			last = snap
		case <-deadline.C:
			t.Fatalf("%s: watch still open after %v", what, bound)
		}
	}
}

func wantIs(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: err = %v, want %v", what, err, target)
	}
}

func noErr(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func keysOf(snap core.Snapshot) []string {
	var keys []string
	for _, kv := range snap.KVs {
		keys = append(keys, kv.Key)
	}
	return keys
}
