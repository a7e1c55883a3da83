package replica_test

import (
	"context"
	"fmt"
	"testing"
	"time"

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
