package replica_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/concordha/concord/core"
	"github.com/concordha/concord/replica"
)

func managerSvc(grace time.Duration) svc {
	return svc{manager: &replica.ManagerConfig{Interval: 30 * time.Millisecond, DepartedGrace: grace, HandoverTimeout: 10 * ttl}}
}

// request writes a switchover request as `concord switchover` does, and
// waits for its outcome.
func (c *cluster) request(service, to string) replica.SwitchoverRecord {
	c.t.Helper()
	st := c.srv.Client("cli")
	keys, _ := core.NewKeys("concord/")
	ctx := context.Background()
	b, _ := json.Marshal(replica.SwitchoverRecord{ID: "req-" + to, To: to, State: replica.SwitchoverPending, Updated: time.Now()})
	if kv, err := st.Get(ctx, keys.Switchover(service)); err == nil {
		_, err = st.CompareAndSwap(ctx, kv.Key, b, kv.Version)
		if err != nil {
			c.t.Fatal(err)
		}
	} else if _, err := st.Create(ctx, keys.Switchover(service), b); err != nil {
		c.t.Fatal(err)
	}
	var rec replica.SwitchoverRecord
	eventually(c.t, 20*ttl, func() error {
		kv, err := st.Get(ctx, keys.Switchover(service))
		if err != nil {
			return err
		}
		rec, err = replica.DecodeSwitchover(kv)
		if err != nil {
			return err
		}
		if rec.State != replica.SwitchoverDone && rec.State != replica.SwitchoverFailed {
			return fmt.Errorf("switchover is %s", rec.State)
		}
		return nil
	})
	return rec
}

// TestManagerRunsSwitchovers: the replica manager, elected one tier up,
// carries out switchover requests from the store; when its node leaves,
// another node runs it and takes up the requests.
func TestManagerRunsSwitchovers(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"a", "b", "c"} {
		c.start(id, svc{name: "db"}, managerSvc(time.Hour))
	}
	prim, secs := c.settled("db", 1)
	spare := c.spare(prim, secs[0])
	c.members[prim].prov["db"].put("k", "v")
	rec := c.request("db", spare)
	if rec.State != replica.SwitchoverDone || rec.Primary != spare {
		t.Fatalf("switchover to %s: %+v", spare, rec)
	}
	if p, _ := c.settled("db", 1); p != spare {
		t.Fatalf("after the switchover to %s, %s is primary", spare, p)
	}
	if d, _, _ := c.members[spare].prov["db"].snapshot(); d["k"] != "v" {
		t.Fatalf("the new primary lacks the last write: %v", d)
	}
	// A request that cannot be met fails with a reason.
	if rec := c.request("db", "nobody"); rec.State != replica.SwitchoverFailed || rec.Detail == "" {
		t.Fatalf("switchover to an unknown node: %+v", rec)
	}

	// The node running the manager leaves; another takes the role over
	// and runs the next request (to the freshest secondary).
	mgr := c.primaryOf(replica.ManagerService)
	c.stop(mgr)
	if next := c.primaryOf(replica.ManagerService); next == mgr {
		t.Fatal("the manager did not move")
	}
	prim, _ = c.settled("db", 1)
	rec = c.request("db", "")
	if rec.State != replica.SwitchoverDone || rec.Primary == prim {
		t.Fatalf("switchover after the manager moved: %+v (primary was %s)", rec, prim)
	}
}

// primaryOf waits for a node to be the service's primary and returns it.
func (c *cluster) primaryOf(service string) string {
	c.t.Helper()
	var p string
	eventually(c.t, 20*ttl, func() error {
		for id, m := range c.members {
			if st, _ := m.node.Status(service); st.Role == core.RolePrimary {
				p = id
				return nil
			}
		}
		return errors.New("no primary")
	})
	return p
}

// TestManagerWritesPlans: every service gets a plan that lists its live
// providers but the primary, secondaries first.
func TestManagerWritesPlans(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"a", "b", "c"} {
		c.start(id, svc{name: "db"}, managerSvc(time.Hour))
	}
	prim, secs := c.settled("db", 1)
	st := c.srv.Client("cli")
	eventually(t, 20*ttl, func() error {
		kv, err := st.Get(context.Background(), "concord/manager/plan/db")
		if err != nil {
			return err
		}
		p, err := replica.DecodePlan(kv)
		if err != nil {
			return err
		}
		if len(p.Order) != 2 || p.Order[0] != secs[0] || slices.Contains(p.Order, prim) {
			return fmt.Errorf("plan %v: want the secondary %s first and not the primary %s", p.Order, secs[0], prim)
		}
		return nil
	})
}

// TestManagerRemovesDepartedRecords: once a node, or a service, has been
// gone for DepartedGrace, the manager deletes its records; those of live
// nodes and services stay.
func TestManagerRemovesDepartedRecords(t *testing.T) {
	c := newCluster(t)
	grace := 300 * time.Millisecond
	for _, id := range []string{"a", "b"} {
		c.start(id, svc{name: "db"}, managerSvc(grace))
	}
	c.start("c", svc{name: "db"}, svc{name: "old"}, managerSvc(grace))
	c.settled("db", 1)
	c.settled("old", 0)
	st := c.srv.Client("cli")
	ctx := context.Background()
	exists := func(key string) bool {
		_, err := st.Get(ctx, key)
		return err == nil
	}
	eventually(t, 10*ttl, func() error {
		for _, k := range []string{"concord/cand/db/c", "concord/primary/old", "concord/cand/old/c", "concord/endpoints/old"} {
			if !exists(k) {
				return fmt.Errorf("%s missing before c left", k)
			}
		}
		return nil
	})
	c.stop("c")
	eventually(t, 20*ttl+10*grace, func() error {
		for _, k := range []string{"concord/cand/db/c", "concord/primary/old", "concord/cand/old/c", "concord/endpoints/old"} {
			if exists(k) {
				return fmt.Errorf("%s still there", k)
			}
		}
		return nil
	})
	for _, k := range []string{"concord/cand/db/a", "concord/cand/db/b", "concord/primary/db"} {
		if !exists(k) {
			t.Fatalf("%s of a live node or service was removed", k)
		}
	}
}

// TestManagerAuditsConfigAcrossNodes: the manager logs what no node can
// see alone: depends_on declared differently, and a provider of a
// dependency that does not provide the dependent.
func TestManagerAuditsConfigAcrossNodes(t *testing.T) {
	c := newCluster(t)
	c.start("a", svc{name: "db"}, svc{name: "app", dep: "db"}, managerSvc(time.Hour))
	c.start("b", svc{name: "db"}, svc{name: "app"}, managerSvc(time.Hour))
	c.start("c", svc{name: "db"}, managerSvc(time.Hour))
	eventually(t, 20*ttl, func() error {
		logs := c.logs.String()
		for _, want := range []string{
			"services[app].depends_on differs between nodes: (none) on [b], db on [a]",
			"node c provides db but not app, which depends on it",
		} {
			if !strings.Contains(logs, want) {
				return fmt.Errorf("no warning %q yet", want)
			}
		}
		return nil
	})
}
