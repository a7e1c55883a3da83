package e2e

import (
	"fmt"
	"syscall"
	"testing"
	"time"
)

// TestRollingRestartUnderLoad: the primary's concord is stopped with
// SIGTERM, as in a rolling restart, under steady traffic through a
// proxy. It drains its endpoint, sends a last checkpoint and steps down;
// the secondary takes over. No request fails, and every acknowledged
// write is on the new primary. The stopped node then starts again and
// rejoins.
func TestRollingRestartUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three concord processes")
	}
	c := startCluster(t)
	p, sec := c.primary(t, c.nodes)
	s := c.spare(p, sec)
	via := []*kvNode{s}
	before := proxyCounters(t, via)
	l := startLoad(t, via, "rolling-")
	eventually(t, 20*time.Second, "every worker's write through "+s.id+"'s proxy", l.allSucceeded)

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s's concord still runs 30s after SIGTERM", p.id)
	}
	next, _ := c.primary(t, c.except(p))
	if next.id != sec {
		t.Fatalf("after %s stepped down, %s is primary; want its secondary %s", p.id, next.id, sec)
	}
	stepped := l.acks()
	eventually(t, 20*time.Second, "traffic after the step-down", func() error {
		if n := l.acks(); n < stepped+20 {
			return fmt.Errorf("%d writes acknowledged since the step-down", n-stepped)
		}
		return nil
	})
	r := l.end()
	d := since(proxyCounters(t, via), before)
	if r.failed > 0 {
		t.Fatalf("%d of %d requests failed across the step-down: %v %v", r.failed, r.requests, r.kinds, r.samples)
	}
	if d["held"] == 0 {
		t.Fatal("no request was held across the step-down: the traffic did not overlap it")
	}
	got, err := all(next)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range r.acked {
		if got[k] != v {
			t.Fatalf("write %s=%s, acknowledged across the step-down, is not on the new primary %s (%q)", k, v, next.id, got[k])
		}
	}
	t.Logf("rolling restart under load: %d requests, none failed, %d held, %d drained, slowest %v",
		r.requests, d["held"], d["drained"], r.slowest.Round(time.Millisecond))
	c.restart(t, p)
}
