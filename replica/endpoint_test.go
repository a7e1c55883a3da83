package replica_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/concordha/concord/client"
)

// TestEndpointsFollowThePrimary: the primary publishes its endpoint once
// promoted; the client package resolves it, and its watch follows the
// primary to its successor, never back to a lower token.
func TestEndpointsFollowThePrimary(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"a", "b", "c"} {
		c.start(id, svc{name: "db"})
	}
	prim, secs := c.settled("db", 1)
	r, err := client.New(c.srv.Client("client"), "concord/")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	token, _ := c.members[prim].node.Fence("db")
	var ep client.Endpoint
	eventually(t, 10*ttl, func() error {
		ep, err = r.Primary(ctx, "db")
		return err
	})
	if ep.Node != prim || ep.Address != prim+".example:db" || ep.Token != token {
		t.Fatalf("Primary = %+v, want %s's endpoint with token %d", ep, prim, token)
	}
	updates, err := r.Watch(ctx, "db")
	if err != nil {
		t.Fatal(err)
	}
	next := func(within time.Duration, want func(client.Update) bool) client.Update {
		t.Helper()
		deadline := time.After(within)
		for {
			select {
			case u := <-updates:
				if want(u) {
					return u
				}
			case <-deadline:
				t.Fatal("no such update in time")
			}
		}
	}
	first := next(10*ttl, func(u client.Update) bool { return u.Valid })
	if first.Endpoint.Node != prim {
		t.Fatalf("first valid update names %s, want %s", first.Endpoint.Node, prim)
	}

	c.stop(prim)
	var seen []string
	u := next(20*ttl, func(u client.Update) bool {
		seen = append(seen, fmt.Sprintf("%v %s %d", u.Valid, u.Endpoint.Node, u.Endpoint.Token))
		if u.Valid && u.Endpoint.Node == prim {
			t.Fatalf("the watch went back to the stopped primary: %v", seen)
		}
		return u.Valid
	})
	if u.Endpoint.Node != secs[0] || u.Endpoint.Token <= first.Endpoint.Token {
		t.Fatalf("after the primary left: %+v (seen %v), want %s with a token above %d", u, seen, secs[0], first.Endpoint.Token)
	}
	if _, err := r.Primary(ctx, "nope"); !errors.Is(err, client.ErrNoPrimary) {
		t.Fatalf("Primary of an unknown service: %v, want ErrNoPrimary", err)
	}
}
