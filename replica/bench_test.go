package replica_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/concordha/concord/core"
	"github.com/concordha/concord/replica"
)

// BenchmarkSyncCheckpoint: the latency of a synchronous checkpoint (what a
// service waits for before it answers a write, with sync_acks 1): take
// the state, send it to the secondary, restore it there, and record the
// acknowledgement in the store (the in-memory store here, so the figure
// is concord's own cost, without a store's round trip).
func BenchmarkSyncCheckpoint(b *testing.B) {
	c := newCluster(b)
	sync1 := func(sp *replica.ServiceSpec) { sp.SyncAcks, sp.CheckpointInterval = 1, time.Hour }
	for _, id := range []string{"a", "b"} {
		c.start(id, svc{name: "db", tune: sync1})
	}
	prim, _ := c.settled("db", 1)
	p := c.members[prim]
	for i := range 1000 {
		p.prov["db"].put(fmt.Sprintf("key-%04d", i), "a value of some forty bytes, more or less")
	}
	b.ResetTimer()
	for i := range b.N {
		p.prov["db"].put("counter", fmt.Sprint(i))
		if _, acks, err := p.host.Checkpoint(context.Background(), "db"); err != nil || acks != 1 {
			b.Fatalf("Checkpoint: %d acks, %v", acks, err)
		}
	}
}

// BenchmarkReplicatedFailover: the primary's session is ended at the store
// (what the store does once a crashed node's TTL has run out) and the
// figure is the time from then until its freshest secondary's provider
// serves as primary: the time above the failure-detection bound, made of
// the election, the events and the provider's promotion.
func BenchmarkReplicatedFailover(b *testing.B) {
	var above []time.Duration
	for range b.N {
		c := newCluster(b)
		for _, id := range []string{"a", "b", "c"} {
			c.start(id, svc{name: "db"})
		}
		prim, secs := c.settled("db", 1)
		ctx := context.Background()
		st := c.srv.Client("bench")
		kv, err := st.Get(ctx, "concord/members/"+prim)
		if err != nil {
			b.Fatal(err)
		}
		m, err := core.DecodeMember(kv)
		if err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		if err := st.ExpireSession(ctx, m.Session); err != nil {
			b.Fatal(err)
		}
		// Poll every millisecond (the shared wait ticks too slowly for
		// the figure), bounded.
		tick := time.NewTicker(time.Millisecond)
		for {
			if _, role, _ := c.members[secs[0]].prov["db"].snapshot(); role == core.RolePrimary {
				break
			}
			if time.Since(t0) > 20*ttl {
				b.Fatal("the secondary's provider did not become primary")
			}
			<-tick.C
		}
		tick.Stop()
		above = append(above, time.Since(t0))
		for id := range c.members {
			c.stop(id)
		}
	}
	slices.Sort(above)
	b.ReportMetric(float64(above[len(above)/2].Microseconds())/1000, "ms-above-TTL")
	b.ReportMetric(0, "ns/op")
}
