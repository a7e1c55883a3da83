// Package deadline keeps a session's client-side deadline, for the
// backends' core.SessionDeadline: it moves forward with each renewal the
// store confirmed, and freezes when the session ends, no later than the
// moment it ended.
package deadline

import (
	"sync"
	"time"
)

// Deadline is a session's deadline. The zero value is a deadline at the
// zero time, not ended. It is safe for concurrent use.
type Deadline struct {
	mu    sync.Mutex
	t     time.Time
	ended bool
}

// Advance moves the deadline to t if t is later and the session has not
// ended. Call it before arming the timer that ends the session at t, so
// that the deadline reported is never later than that timer.
func (d *Deadline) Advance(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.ended && t.After(d.t) {
		d.t = t
	}
}

// End freezes the deadline at now if it is later (the session ended
// early: closed, or expired by force), and runs end, which fires the
// session's Done, under the same lock: no deadline is advanced after it,
// and a reader that sees Done closed sees the frozen deadline.
func (d *Deadline) End(now time.Time, end func()) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if now.Before(d.t) {
		d.t = now
	}
	d.ended = true
	end()
}

// Get returns the deadline.
func (d *Deadline) Get() time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.t
}
