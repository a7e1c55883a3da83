package replica_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/concordha/concord/client"
	"github.com/concordha/concord/internal/poll"
	"github.com/concordha/concord/replica"
)

// watcher follows db's endpoint through the client package, on a client
// of the cluster's store of its own, until the test ends.
type watcher struct {
	t       *testing.T
	r       *client.Resolver
	updates <-chan client.Update
}

func watchDB(t *testing.T, c *cluster) *watcher {
	t.Helper()
	r, err := client.New(c.srv.Client("client"), "concord/")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	updates, err := r.Watch(ctx, "db")
	if err != nil {
		t.Fatal(err)
	}
	return &watcher{t: t, r: r, updates: updates}
}

// next reads updates until want accepts one, and returns it and when it
// came; it fails the test after 20 TTLs.
func (w *watcher) next(what string, want func(client.Update) bool) (client.Update, time.Time) {
	w.t.Helper()
	return poll.Receive(w.t, w.updates, 20*ttl, what, want)
}

// TestEndpointsFollowThePrimary: the primary publishes its endpoint once
// promoted; the client package resolves it, and its watch follows the
// primary to its successor, never back to a lower token.
func TestEndpointsFollowThePrimary(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"a", "b", "c"} {
		c.start(id, svc{name: "db"})
	}
	prim, secs := c.settled("db", 1)
	w := watchDB(t, c)
	ctx := context.Background()
	token, _ := c.members[prim].node.Fence("db")
	var ep client.Endpoint
	eventually(t, 10*ttl, func() error {
		var err error
		ep, err = w.r.Primary(ctx, "db")
		return err
	})
	if ep.Node != prim || ep.Address != prim+".example:db" || ep.Token != token {
		t.Fatalf("Primary = %+v, want %s's endpoint with token %d", ep, prim, token)
	}
	first, _ := w.next("the primary's endpoint", func(u client.Update) bool { return u.Valid })
	if first.Endpoint.Node != prim {
		t.Fatalf("first valid update names %s, want %s", first.Endpoint.Node, prim)
	}

	c.stop(prim)
	var seen []string
	u, _ := w.next("the next primary's endpoint", func(u client.Update) bool {
		seen = append(seen, fmt.Sprintf("%v %s %d", u.Valid, u.Endpoint.Node, u.Endpoint.Token))
		if u.Valid && u.Endpoint.Node == prim {
			t.Fatalf("the watch went back to the stopped primary: %v", seen)
		}
		return u.Valid
	})
	if u.Endpoint.Node != secs[0] || u.Endpoint.Token <= first.Endpoint.Token {
		t.Fatalf("after the primary left: %+v (seen %v), want %s with a token above %d", u, seen, secs[0], first.Endpoint.Token)
	}
	if _, err := w.r.Primary(ctx, "nope"); !errors.Is(err, client.ErrNoPrimary) {
		t.Fatalf("Primary of an unknown service: %v, want ErrNoPrimary", err)
	}
}

// TestHandoverDrainsTheEndpoint: a switchover first marks the endpoint
// draining, serves on for the drain, and only then resigns; a switchover
// that fails publishes the endpoint again.
func TestHandoverDrainsTheEndpoint(t *testing.T) {
	const drain = 300 * time.Millisecond
	c := newCluster(t)
	for _, id := range []string{"a", "b", "c"} {
		c.start(id, svc{name: "db", tune: func(s *replica.ServiceSpec) { s.Drain = drain }})
	}
	prim, _ := c.settled("db", 1)
	w := watchDB(t, c)
	next := w.next
	token, _ := c.members[prim].node.Fence("db")
	next("the primary's endpoint", func(u client.Update) bool { return u.Valid && u.Endpoint.Token == token })

	// A switchover to a node that does not exist drains, fails, and
	// publishes the same endpoint again.
	if err := c.members[prim].host.Handover(context.Background(), "db", "nosuch"); err == nil {
		t.Fatal("Handover to an unknown node succeeded")
	}
	u, _ := next("draining", func(u client.Update) bool { return u.Draining })
	if u.Endpoint.Node != prim || u.Endpoint.Token != token || u.Drain != drain {
		t.Fatalf("draining update %+v, want %s's endpoint, token %d, drain %v", u, prim, token, drain)
	}
	next("published again", func(u client.Update) bool { return u.Valid })
	if p, err := w.r.Primary(context.Background(), "db"); err != nil || p.Node != prim || p.Token != token {
		t.Fatalf("after the failed switchover: %+v, %v; want %s with token %d", p, err, prim, token)
	}

	done := make(chan error, 1)
	go func() { done <- c.members[prim].host.Handover(context.Background(), "db", "") }()
	_, began := next("draining", func(u client.Update) bool { return u.Draining })
	// The primary serves on, and keeps its role, through the drain.
	if tk, err := c.members[prim].node.Fence("db"); err != nil || tk != token {
		t.Fatalf("during the drain the primary has token %d, %v; want %d", tk, err, token)
	}
	after, at := next("the next primary's endpoint", func(u client.Update) bool { return u.Valid })
	if err := <-done; err != nil {
		t.Fatalf("Handover: %v", err)
	}
	if after.Endpoint.Node == prim || after.Endpoint.Token <= token {
		t.Fatalf("after the switchover: %+v", after)
	}
	if d := at.Sub(began); d < drain {
		t.Fatalf("the next primary published %v after the drain began, before the drain %v ended", d, drain)
	}
}

// TestPrepareStepDown: PrepareStepDown marks the endpoint of each service
// the node is primary of draining, waits for the drain with the node
// still primary, and sends a last checkpoint; stepping down then hands the
// service on with every write.
func TestPrepareStepDown(t *testing.T) {
	const drain = 300 * time.Millisecond
	c := newCluster(t)
	for _, id := range []string{"a", "b"} {
		// No periodic checkpoint after the first: only the last one can
		// carry the write below.
		c.start(id, svc{name: "db", tune: func(s *replica.ServiceSpec) { s.Drain, s.CheckpointInterval = drain, time.Hour }})
	}
	prim, _ := c.settled("db", 1)
	w := watchDB(t, c)
	token, _ := c.members[prim].node.Fence("db")
	c.members[prim].prov["db"].put("written", "before the step-down")
	began := time.Now()
	if err := c.members[prim].host.PrepareStepDown(context.Background()); err != nil {
		t.Fatalf("PrepareStepDown: %v", err)
	}
	if d := time.Since(began); d < drain {
		t.Fatalf("PrepareStepDown returned after %v, before the drain of %v", d, drain)
	}
	if tk, err := c.members[prim].node.Fence("db"); err != nil || tk != token {
		t.Fatalf("after PrepareStepDown the node holds token %d, %v; want it still primary with %d", tk, err, token)
	}
	w.next("draining", func(u client.Update) bool {
		return u.Draining && u.Endpoint.Node == prim && u.Endpoint.Token == token
	})
	sctx, scancel := context.WithTimeout(context.Background(), 10*ttl)
	defer scancel()
	if err := c.members[prim].node.StepDown(sctx); err != nil {
		t.Fatalf("StepDown: %v", err)
	}
	after, _ := w.next("the next primary's endpoint", func(u client.Update) bool { return u.Valid })
	if after.Endpoint.Node == prim || after.Endpoint.Token <= token {
		t.Fatalf("after the step-down: %+v", after)
	}
	next := after.Endpoint.Node
	if d, _, _ := c.members[next].prov["db"].snapshot(); d["written"] != "before the step-down" {
		t.Fatalf("the next primary %s lacks the write made before the step-down: %v", next, d)
	}
}
