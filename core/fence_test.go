package core_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/concordha/concord/core"
)

// TestFenceUntil: the primary's FenceUntil returns Fence's token and a
// deadline in the future, within a TTL, that renewals push forward; every
// other node gets ErrNotPrimary and no deadline.
func TestFenceUntil(t *testing.T) {
	c := newCluster(t)
	c.start("a", db)
	c.start("b", db)
	prim := c.primaryOf("db")
	n := c.nodes[prim]

	before := time.Now()
	token, until, err := n.FenceUntil("db")
	after := time.Now()
	if err != nil {
		t.Fatalf("%s: FenceUntil(db) on the primary: %v", prim, err)
	}
	if ftoken, err := n.Fence("db"); err != nil || ftoken != token {
		t.Errorf("%s: Fence(db) = %d, %v; want FenceUntil's token %d", prim, ftoken, err, token)
	}
	if token <= 0 {
		t.Errorf("%s: FenceUntil(db) token = %d, want > 0", prim, token)
	}
	if !until.After(before) || until.After(after.Add(ttl)) {
		t.Fatalf("%s: FenceUntil(db) until = %v, want after %v and no later than %v (now + TTL)", prim, until, before, after.Add(ttl))
	}
	eventually(t, 5*ttl, func() error {
		_, later, err := n.FenceUntil("db")
		if err != nil {
			t.Fatalf("%s: FenceUntil(db) on the primary: %v", prim, err)
		}
		if !later.After(until) {
			return fmt.Errorf("until still %v", later)
		}
		return nil
	})

	for id, other := range c.nodes {
		if id == prim {
			continue
		}
		token, until, err := other.FenceUntil("db")
		if !errors.Is(err, core.ErrNotPrimary) || token != 0 || !until.IsZero() {
			t.Errorf("%s: FenceUntil(db) on a non-primary = %d, %v, %v; want 0, zero time, ErrNotPrimary", id, token, until, err)
		}
	}
	if _, _, err := n.FenceUntil("nope"); !errors.Is(err, core.ErrUnknownService) {
		t.Errorf("%s: FenceUntil(nope) err = %v, want ErrUnknownService", prim, err)
	}
}
