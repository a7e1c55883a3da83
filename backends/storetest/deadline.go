package storetest

import (
	"fmt"
	"time"

	"github.com/concordha/concord/core"
)

// deadlineReader reads a session's deadline and checks what every read
// must satisfy: never earlier than the read before (while Done is open),
// and never more than a TTL past the moment of the read, since the
// deadline counts from the send time of a renewal, which is in the past.
type deadlineReader struct {
	c    *check
	s    core.Session
	sd   core.SessionDeadline
	last time.Time
}

func (r *deadlineReader) read() (time.Time, error) {
	d := r.sd.Deadline()
	now := time.Now()
	if d.Before(r.last) {
		return d, fmt.Errorf("session %q: Deadline went back from %v to %v", r.s.ID(), r.last, d)
	}
	if d.After(now.Add(r.c.ttl)) {
		return d, fmt.Errorf("session %q: Deadline %v is %v after now, more than the TTL %v", r.s.ID(), d, d.Sub(now), r.c.ttl)
	}
	r.last = d
	return d, nil
}

// checkSessionDeadline: a session that implements core.SessionDeadline
// reports a deadline in the future and within a TTL, which renewals push
// forward and never back, and which is not in the future once Done has
// fired, whether the session was closed or lost.
func checkSessionDeadline(c *check) {
	st := c.client()
	s := c.session(st)
	sd, ok := s.(core.SessionDeadline)
	if !ok {
		c.t.Skip("the session does not implement core.SessionDeadline")
	}
	r := &deadlineReader{c: c, s: s, sd: sd}
	before := time.Now()
	first, err := r.read()
	if err != nil {
		c.t.Fatal(err)
	}
	if !first.After(before) {
		c.t.Fatalf("session %q: Deadline of a new session %v is not after now (%v)", s.ID(), first, before)
	}
	// Renewals run well within a TTL: the deadline moves forward.
	c.eventually(c.soon(), fmt.Sprintf("Deadline of session %q pushed forward by a renewal", s.ID()), func() error {
		d, err := r.read()
		if err != nil {
			c.t.Fatal(err)
		}
		if isClosed(s.Done()) {
			c.t.Fatalf("session %q ended while waiting for a renewal: %v", s.ID(), s.Err())
		}
		if !d.After(first) {
			return fmt.Errorf("Deadline still %v", d)
		}
		return nil
	})

	// Closed: Done has fired, and the deadline is not in the future and
	// no longer changes.
	if err := s.Close(c.ctx); err != nil {
		c.t.Fatalf("Session.Close: %v", err)
	}
	c.waitClosed(s.Done(), c.soon(), fmt.Sprintf("Done of session %q after Close", s.ID()))
	c.endedDeadline(s, sd, "Close")

	// Lost: the same, when the session ends from outside.
	exp, ok := c.client().(core.Expirer)
	if !ok {
		return
	}
	lost := c.session(st)
	lsd := lost.(core.SessionDeadline)
	if err := exp.ExpireSession(c.ctx, lost.ID()); err != nil {
		c.t.Fatalf("ExpireSession(%q) from a second client: %v", lost.ID(), err)
	}
	c.waitClosed(lost.Done(), c.expiry(), fmt.Sprintf("Done of session %q after ExpireSession", lost.ID()))
	c.endedDeadline(lost, lsd, "ExpireSession")
}

// endedDeadline checks the deadline of a session whose Done has fired:
// not in the future, and stable.
func (c *check) endedDeadline(s core.Session, sd core.SessionDeadline, how string) {
	c.t.Helper()
	d := sd.Deadline()
	if now := time.Now(); d.After(now) {
		c.t.Errorf("session %q after %s: Deadline %v is %v in the future, want none after Done", s.ID(), how, d, d.Sub(now))
	}
	c.consistently(c.ttl/4, fmt.Sprintf("Deadline of session %q after %s", s.ID(), how), func() error {
		if again := sd.Deadline(); !again.Equal(d) {
			return fmt.Errorf("changed from %v to %v after Done", d, again)
		}
		return nil
	})
}
