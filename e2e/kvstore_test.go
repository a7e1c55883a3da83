package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/concordha/concord/client"
)

// TestKVStoreUnderConcord: three concord nodes keep the example service
// highly available. A kill -9 of the primary's node (concord and its
// service) hands the service to the freshest secondary with every
// acknowledged write, and the spare becomes a secondary; a failing
// monitor then makes the new primary restart the service, then resign.
func TestKVStoreUnderConcord(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three concord processes")
	}
	c := startCluster(t)
	nodes := c.nodes
	first, sec := c.primary(t, nodes)
	// The node API's checks agree: only the primary's node passes the
	// primary check, only the secondary's the secondary check.
	for _, n := range nodes {
		for check, want := range map[string]bool{"primary": n == first, "secondary": n.id == sec} {
			resp, err := httpc.Get(fmt.Sprintf("http://127.0.0.1:%d/v1/services/kv/%s", n.api, check))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if (resp.StatusCode == 200) != want {
				t.Fatalf("node %s: GET /v1/services/kv/%s = %d, want 200: %v", n.id, check, resp.StatusCode, want)
			}
		}
	}
	// The client package finds the primary through its published endpoint.
	resolver, err := client.New(c.st, "concord/")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the endpoint published", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		ep, err := resolver.Primary(ctx, "kv")
		if err != nil {
			return err
		}
		if ep.Node != first.id || ep.Address != fmt.Sprintf("127.0.0.1:%d", first.kv) {
			return fmt.Errorf("resolved %+v, want %s at port %d", ep, first.id, first.kv)
		}
		return nil
	})
	// Synchronous writes: each is answered only once a checkpoint holding
	// it is acknowledged by the secondary.
	acked := map[string]string{}
	for i := range 30 {
		k, v := fmt.Sprintf("k%02d", i), fmt.Sprintf("v%d", i)
		if err := put(first, k, v); err != nil {
			t.Fatalf("write %s to the primary %s: %v", k, first.id, err)
		}
		acked[k] = v
	}
	// Every node's proxy reaches the primary.
	for i, n := range nodes {
		if err := putViaProxy(n, fmt.Sprintf("proxied-%d", i), n.id); err != nil {
			t.Fatalf("write through %s's proxy: %v", n.id, err)
		}
		acked[fmt.Sprintf("proxied-%d", i)] = n.id
	}
	// HAProxy, checking each node's /v1/services/kv/primary, sends
	// traffic to the primary only.
	lb := startHAProxy(t, c.work, nodes)
	if lb != nil {
		for i := range 5 {
			k := fmt.Sprintf("balanced-%d", i)
			eventually(t, 20*time.Second, "a write through HAProxy", func() error { return lb.put(k, "lb") })
			acked[k] = "lb"
		}
		if got, err := all(first); err != nil || got["balanced-4"] != "lb" {
			t.Fatalf("HAProxy's writes are not on the primary %s: %v %v", first.id, got, err)
		}
	}
	r, err := c.roster()
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Secondaries) == 0 || r.Secondaries[0].Node != sec || r.Secondaries[0].AckSeq == 0 {
		t.Fatalf("roster after synchronous writes: %+v", r)
	}

	// kill -9 the primary's concord, and leave its service running: the
	// service's lease, which that concord renewed, runs out, and it stops
	// taking writes before the others elect a new primary. At no moment do
	// two services take writes.
	_ = first.cmd.Process.Kill()
	<-first.done
	live := c.except(first)
	fencedFirst := false
	eventually(t, 60*time.Second, "a new primary", func() error {
		old, oerr := healthOf(first)
		oldTakesWrites := oerr == nil && old.Role == "primary"
		for _, n := range live {
			if h, err := healthOf(n); err == nil && h.Role == "primary" {
				if oldTakesWrites {
					t.Fatalf("%s took over while the killed node's service still took writes", n.id)
				}
				return nil
			}
		}
		if !oldTakesWrites {
			fencedFirst = true
		}
		return errors.New("no new primary yet")
	})
	if !fencedFirst {
		t.Fatal("the killed node's service was never seen fenced before the new primary")
	}
	if err := put(first, "stale", "write"); err == nil {
		t.Fatal("the fenced service of the killed node took a write")
	}
	killDaemon(first)
	next, sec2 := c.primary(t, live)
	if next.id != sec {
		t.Fatalf("after the kill, %s became primary; the freshest secondary was %s", next.id, sec)
	}
	got, err := all(next)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range acked {
		if got[k] != v {
			t.Fatalf("acknowledged write %s=%s lost in the failover (new primary has %q)", k, v, got[k])
		}
	}
	if sec2 == first.id || sec2 == next.id {
		t.Fatalf("secondary after failover is %s", sec2)
	}
	eventually(t, 10*time.Second, "the new primary's endpoint resolved", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		ep, err := resolver.Primary(ctx, "kv")
		if err != nil {
			return err
		}
		if ep.Node != next.id {
			return fmt.Errorf("resolved %s, want %s", ep.Node, next.id)
		}
		return nil
	})
	if err := put(next, "after", "failover"); err != nil {
		t.Fatalf("write to the new primary: %v", err)
	}
	// HAProxy follows the new primary through the health checks.
	if lb != nil {
		eventually(t, 20*time.Second, "a write through HAProxy after the failover", func() error {
			return lb.put("balanced-after", "lb")
		})
		if got, err := all(next); err != nil || got["balanced-after"] != "lb" {
			t.Fatalf("HAProxy's write after the failover is not on the new primary %s: %v %v", next.id, got, err)
		}
	}
	// The surviving nodes' proxies follow the new primary.
	for _, n := range live {
		eventually(t, 20*time.Second, "a write through "+n.id+"'s proxy", func() error {
			return putViaProxy(n, "proxied-after-"+n.id, "x")
		})
	}
	if got, err := all(next); err != nil || got["proxied-after-"+live[0].id] != "x" {
		t.Fatalf("the proxies' writes are not on the new primary %s: %v %v", next.id, got, err)
	}

	// A failing monitor: restarts, then a failover to the last node.
	if err := os.WriteFile(filepath.Join(next.kvDir, "fail"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var last *kvNode
	eventually(t, 60*time.Second, "failover after failing monitors", func() error {
		for _, n := range live {
			if h, err := healthOf(n); err == nil && h.Role == "primary" && n != next {
				last = n
				return nil
			}
		}
		return errors.New("the failing node is still primary")
	})
	if last.id != sec2 {
		t.Fatalf("after the monitor failures %s became primary, want %s", last.id, sec2)
	}
	restarts := strings.Count(next.logs.String(), `"msg":"restarting the service"`)
	if restarts < 2 || !strings.Contains(next.logs.String(), "resigning so that another node takes over") {
		t.Fatalf("the failing node restarted the service %d times before resigning (want 2, then a resignation)", restarts)
	}
	got, err = all(last)
	if err != nil {
		t.Fatal(err)
	}
	if got["after"] != "failover" || got["k29"] != "v29" {
		t.Fatalf("the last primary lacks acknowledged writes: %v", got)
	}

	// The failed node heals; once it is a secondary again, a planned
	// switchover moves the service back to it, through the replica
	// manager, with nothing lost.
	if err := os.Remove(filepath.Join(next.kvDir, "fail")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "the healed node becomes a secondary again", func() error {
		if _, err := healthOf(next); err != nil {
			return fmt.Errorf("%s's service: %v", next.id, err)
		}
		p, s, err := c.roles(live)
		if err != nil {
			return err
		}
		if p != last || s != next.id {
			return fmt.Errorf("primary %s, secondary %s; want %s and %s", p.id, s, last.id, next.id)
		}
		// A synchronous write succeeds once the secondary takes
		// checkpoints again.
		return put(last, "before", "switchover")
	})
	// Steady traffic through both nodes' proxies runs across the
	// switchover: the primary drains, the proxies hold new connections
	// until the next primary publishes, and no request fails.
	before := proxyCounters(t, live)
	ld := startLoad(t, live, "load-")
	eventually(t, 20*time.Second, "traffic through the proxies", func() error {
		if n := ld.acks(); n < 20 {
			return fmt.Errorf("%d writes acknowledged", n)
		}
		return nil
	})
	c.switchover(t, last, next.id, "--to", next.id)
	switched := ld.acks()
	eventually(t, 20*time.Second, "traffic after the switchover", func() error {
		if n := ld.acks(); n < switched+20 {
			return fmt.Errorf("%d writes acknowledged since the switchover", n-switched)
		}
		return nil
	})
	res := ld.end()
	if res.failed > 0 {
		t.Fatalf("%d of %d requests failed across the switchover, by kind %v; the first of each kind: %q", res.failed, res.requests, res.kinds, res.samples)
	}
	after := proxyCounters(t, live)
	d := since(after, before)
	if d["expired"] != 0 || d["refused"] != 0 {
		t.Fatalf("the proxies expired or refused connections across the switchover: %v, before %v", after, before)
	}
	if d["held"] == 0 {
		t.Fatal("no request was held across the switchover: the traffic did not overlap it")
	}
	t.Logf("switchover under load: %d requests, none failed, %d held, %d connections drained, slowest %v",
		res.requests, d["held"], d["drained"], res.slowest.Round(time.Millisecond))
	if p, _ := c.primary(t, live); p != next {
		t.Fatalf("after the switchover to %s, %s is primary", next.id, p.id)
	}
	// The old primary's service was demoted: it refuses writes.
	eventually(t, 10*time.Second, "the old primary's service demoted", func() error {
		h, err := healthOf(last)
		if err != nil {
			return err
		}
		if h.Role == "primary" {
			return fmt.Errorf("%s's service still reports itself primary", last.id)
		}
		return nil
	})
	if err := put(last, "stale", "write"); err == nil {
		t.Fatalf("the demoted %s accepted a write", last.id)
	}
	got, err = all(next)
	if err != nil {
		t.Fatal(err)
	}
	if got["before"] != "switchover" || got["after"] != "failover" || got["k00"] != "v0" {
		t.Fatalf("the switched-to primary lacks writes: %v", got)
	}
	for k, v := range res.acked {
		if got[k] != v {
			t.Fatalf("write %s=%s, acknowledged through a proxy across the switchover, is not on the new primary (%q)", k, v, got[k])
		}
	}
}
