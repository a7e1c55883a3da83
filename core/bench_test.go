package core_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/concordha/concord/backends/memory"
	"github.com/concordha/concord/core"
)

// BenchmarkElection measures failover elections on the memory backend, for
// 3, 5, 9 and 25 nodes and 1, 100 and 1,000 services. Every node provides
// every service, with priorities that spread the primaries evenly. Each
// iteration ends the session of the node that is primary of service 0 (as
// the store would at its TTL), waits until every service it was primary
// of has a new primary, and then lets it rejoin, untimed.
//
// Reported per iteration:
//   - moved: services whose primary failed over;
//   - ops/election: store operations that all nodes issued for one moved
//     service's election (reads, candidate writes, the claim);
//   - ops/kept: store operations per service whose primary stayed (the
//     live primary tells every provider of the new round);
//   - round-trips: sequential store round trips on the winner's critical
//     path (worst over the moved services);
//   - ms/failover: time from the session's end to the last moved service
//     having its new primary.
func BenchmarkElection(b *testing.B) {
	for _, nodes := range []int{3, 5, 9, 25} {
		for _, svcs := range []int{1, 100, 1000} {
			b.Run(fmt.Sprintf("nodes=%d/services=%d", nodes, svcs), func(b *testing.B) {
				benchElection(b, nodes, svcs)
			})
		}
	}
}

type reports struct {
	mu   sync.Mutex
	cond *sync.Cond
	all  []core.ElectionReport
}

func (r *reports) add(rep core.ElectionReport) {
	r.mu.Lock()
	r.all = append(r.all, rep)
	r.mu.Unlock()
	r.cond.Broadcast()
}

func benchElection(b *testing.B, nodes, svcs int) {
	srv := memory.New(memory.Options{})
	defer srv.Close()
	rep := &reports{}
	rep.cond = sync.NewCond(&rep.mu)
	names := make([]string, svcs)
	for i := range names {
		names[i] = fmt.Sprintf("s%04d", i)
	}
	ids := make([]string, nodes)
	start := func(i int) *core.Node {
		cfg := core.DefaultConfig()
		cfg.NodeID = ids[i]
		cfg.SessionTTL = 5 * time.Second
		cfg.OpTimeout = time.Second
		cfg.RetryMin, cfg.RetryMax = 5*time.Millisecond, 50*time.Millisecond
		cfg.MaxInflight = 256
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		cfg.OnElection = rep.add
		for j, s := range names {
			cfg.Services = append(cfg.Services, core.ServiceConfig{Name: s, Priority: (i + j) % nodes})
		}
		n, err := core.Start(context.Background(), srv.Client(ids[i]), cfg)
		if err != nil {
			b.Fatal(err)
		}
		return n
	}
	running := make([]*core.Node, nodes)
	for i := range ids {
		ids[i] = fmt.Sprintf("n%02d", i)
		running[i] = start(i)
	}
	defer func() {
		for _, n := range running {
			_ = n.Close()
		}
	}()
	obs := srv.Client("bench")
	keys, _ := core.NewKeys("concord/")
	ctx := context.Background()

	// primaries reads every primary record; settled waits until each names
	// a live node and every node agrees.
	primaries := func() map[string]core.PrimaryRecord {
		snap, err := obs.List(ctx, keys.Primaries())
		if err != nil {
			b.Fatal(err)
		}
		out := map[string]core.PrimaryRecord{}
		for _, kv := range snap.KVs {
			rec, err := core.DecodePrimary(kv)
			if err == nil {
				out[keys.NameIn(keys.Primaries(), kv.Key)] = rec
			}
		}
		return out
	}
	settled := func() map[string]core.PrimaryRecord {
		deadline := time.Now().Add(60 * time.Second)
		for {
			p := primaries()
			members, _ := obs.List(ctx, keys.Members())
			live := map[string]string{}
			for _, kv := range members.KVs {
				if m, err := core.DecodeMember(kv); err == nil {
					live[m.Node] = m.Session
				}
			}
			ok := len(p) == svcs && len(live) == nodes
			for _, rec := range p {
				if live[rec.Node] != rec.Session || rec.Session == "" {
					ok = false
				}
			}
			if ok {
				for _, n := range running {
					st, _ := n.Status(names[0])
					if st.Primary != p[names[0]].Node || st.Electing {
						ok = false
					}
				}
			}
			if ok {
				// And no election still running anywhere: no report for a
				// while.
				rep.mu.Lock()
				n := len(rep.all)
				rep.mu.Unlock()
				time.Sleep(50 * time.Millisecond)
				rep.mu.Lock()
				quiet := n == len(rep.all)
				rep.mu.Unlock()
				if quiet {
					return p
				}
			}
			if time.Now().After(deadline) {
				b.Fatalf("the cluster did not settle within a minute")
			}
			time.Sleep(2 * time.Millisecond)
		}
	}

	var moved, electionOps, keptOps, kept, maxRTT int
	var failover time.Duration
	before := settled()
	b.ResetTimer()
	for it := 0; it < b.N; it++ {
		b.StopTimer()
		victim := before[names[0]].Node
		var vi int
		for i, id := range ids {
			if id == victim {
				vi = i
			}
		}
		var lost []string
		for s, rec := range before {
			if rec.Node == victim {
				lost = append(lost, s)
			}
		}
		sort.Strings(lost)
		rep.mu.Lock()
		mark := len(rep.all)
		rep.mu.Unlock()
		srv.Isolate(victim, true) // it must not rejoin during the measurement
		b.StartTimer()
		t0 := time.Now()
		if err := srv.ExpireSession(before[names[0]].Session); err != nil {
			b.Fatal(err)
		}
		// Wait for a claim ("won") of every lost service.
		won := map[string]core.ElectionReport{}
		rep.mu.Lock()
		for len(won) < len(lost) {
			for _, r := range rep.all[mark:] {
				if r.Outcome == core.OutcomeWon {
					won[r.Service] = r
				}
			}
			if len(won) < len(lost) {
				rep.cond.Wait()
			}
		}
		rep.mu.Unlock()
		failover += time.Since(t0)
		b.StopTimer()

		// Let the round finish everywhere (every surviving node reports
		// once per service), then count its operations.
		_ = running[vi].Close()
		srv.Isolate(victim, false)
		var epoch int64
		for _, r := range won {
			epoch = max(epoch, r.Round.Epoch)
			maxRTT = max(maxRTT, r.RoundTrips)
		}
		lostSet := map[string]bool{}
		for _, s := range lost {
			lostSet[s] = true
		}
		deadline := time.Now().Add(time.Minute)
		for {
			var n, eOps, kOps int
			rep.mu.Lock()
			for _, r := range rep.all[mark:] {
				if r.Round.Epoch != epoch {
					continue
				}
				n++
				if lostSet[r.Service] {
					eOps += r.Ops
				} else {
					kOps += r.Ops
				}
			}
			rep.mu.Unlock()
			if n >= (nodes-1)*svcs {
				electionOps += eOps
				keptOps += kOps
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("only %d of %d election reports for epoch %d", n, (nodes-1)*svcs, epoch)
			}
			time.Sleep(time.Millisecond)
		}
		moved += len(lost)
		kept += svcs - len(lost)
		// Bring the victim back as a fresh process, untimed.
		running[vi] = start(vi)
		before = settled()
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(float64(moved)/float64(b.N), "moved")
	b.ReportMetric(float64(electionOps)/float64(max(moved, 1)), "ops/election")
	if kept > 0 {
		b.ReportMetric(float64(keptOps)/float64(kept), "ops/kept")
	}
	b.ReportMetric(float64(maxRTT), "round-trips")
	b.ReportMetric(float64(failover.Microseconds())/1000/float64(b.N), "ms/failover")
	b.ReportMetric(0, "ns/op") // time per op is the setup's, not the election's
}
