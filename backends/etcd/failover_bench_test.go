package etcd_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	"github.com/concordha/concord/backends/etcd"
	"github.com/concordha/concord/backends/etcd/embedded"
	"github.com/concordha/concord/core"
	"github.com/concordha/concord/internal/failoverbench"
	"github.com/concordha/concord/internal/netfault"
)

var quiet = slog.New(slog.DiscardHandler)

// benchTTL is the session TTL of both contenders: etcd's shortest lease
// (whole seconds) on an embedded etcd with a 50ms raft heartbeat.
const benchTTL = time.Second

// BenchmarkFailover measures, on one embedded etcd, how long a service
// has no primary when the primary fails, for concord and for etcd's own
// client/v3/concurrency Election (Campaign, Resign) with the same TTL:
//
//   - crash: the primary's network link is cut (its process is gone as far
//     as etcd can tell); measured from the cut to the moment the next
//     primary knows it is primary, and reported as time above the session
//     TTL, the failure-detection bound both must wait out. The lease ends
//     between TTL-minus-one-renewal-interval and TTL after the cut, and
//     etcd checks for expired leases every 500ms, so part of the figure is
//     etcd's own and is the same for both;
//   - after-expiry: from the moment a watcher sees the dead primary's key
//     deleted by the expiry to the next primary knowing: the election's own
//     cost, without the store's detection;
//   - handover: a graceful hand-over (concord's Resign, which SIGTERM runs;
//     Election.Resign), from the call to the next primary knowing.
//
// concord's side is internal/failoverbench, the harness every store's
// failover benchmark uses (see integration/ for Consul and ZooKeeper);
// Election's side here follows the same steps. The ratios are concord's
// figure over Election's. Each iteration builds both clusters afresh; the
// figures are medians over iterations.
func BenchmarkFailover(b *testing.B) {
	srv, err := embedded.Start(context.Background(), embedded.Config{
		DataDir: b.TempDir(), HeartbeatInterval: 50 * time.Millisecond, ElectionTimeout: 500 * time.Millisecond,
	})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	setup := failoverbench.Setup{
		TTL: benchTTL,
		NewMember: failoverbench.Linked(strings.TrimPrefix(srv.Endpoints()[0], "http://"), func(b *testing.B, addr string) core.Store {
			st, err := etcd.New(etcd.Config{Endpoints: []string{"http://" + addr}, DialTimeout: benchTTL, Logger: quiet})
			if err != nil {
				b.Fatal(err)
			}
			return st
		}),
	}
	for _, n := range []int{3, 5} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			var c, e []failoverbench.Result
			for i := 0; i < b.N; i++ {
				root := fmt.Sprintf("bench/%d-%d-%d/", n, i, time.Now().UnixNano())
				c = append(c, failoverbench.Run(b, setup, n, root+"concord/"))
				e = append(e, electionFailover(b, srv, n, root+"election/"))
			}
			cm, em := failoverbench.Median(c), failoverbench.Median(e)
			ms := failoverbench.Ms
			b.ReportMetric(ms(cm.Crash-benchTTL), "concord-crash-above-ttl-ms")
			b.ReportMetric(ms(em.Crash-benchTTL), "etcd-election-crash-above-ttl-ms")
			b.ReportMetric(failoverbench.Ratio(cm.Crash-benchTTL, em.Crash-benchTTL), "crash-ratio")
			b.ReportMetric(ms(cm.AfterExpiry), "concord-after-expiry-ms")
			b.ReportMetric(ms(em.AfterExpiry), "etcd-election-after-expiry-ms")
			b.ReportMetric(ms(cm.Handover), "concord-handover-ms")
			b.ReportMetric(ms(em.Handover), "etcd-election-handover-ms")
			b.ReportMetric(failoverbench.Ratio(cm.Handover, em.Handover), "handover-ratio")
		})
	}
}

// member is one contender's process: its own link to etcd, so that it
// can be cut off, and its own client.
type member struct {
	link *netfault.Link
	cli  *clientv3.Client
}

func newMember(b *testing.B, srv *embedded.Server) *member {
	b.Helper()
	link, err := netfault.New(strings.TrimPrefix(srv.Endpoints()[0], "http://"))
	if err != nil {
		b.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://" + link.Addr()}, DialTimeout: benchTTL, Logger: zap.NewNop()})
	if err != nil {
		b.Fatal(err)
	}
	return &member{link: link, cli: cli}
}

func (m *member) close() {
	_ = m.cli.Close()
	_ = m.link.Close()
}

// watchDeleted returns a channel that gets the time key's deletion is
// seen, through the benchmark's own client.
func watchDeleted(ctx context.Context, cli *clientv3.Client, key string) <-chan time.Time {
	seen := make(chan time.Time, 1)
	wch := cli.Watch(clientv3.WithRequireLeader(ctx), key)
	go func() {
		for resp := range wch {
			for _, ev := range resp.Events {
				if ev.Type == clientv3.EventTypeDelete {
					select {
					case seen <- time.Now():
					default:
					}
				}
			}
		}
	}()
	return seen
}

func electionFailover(b *testing.B, srv *embedded.Server, n int, prefix string) failoverbench.Result {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	obs := newMember(b, srv)
	defer obs.close()

	type won struct {
		i  int
		at time.Time
	}
	wins := make(chan won, n)
	members := make([]*member, n)
	sessions := make([]*concurrency.Session, n)
	elections := make([]*concurrency.Election, n)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
		for _, m := range members {
			m.close()
		}
	}()
	for i := range members {
		members[i] = newMember(b, srv)
		s, err := concurrency.NewSession(members[i].cli, concurrency.WithTTL(int(benchTTL/time.Second)))
		if err != nil {
			b.Fatal(err)
		}
		sessions[i] = s
		elections[i] = concurrency.NewElection(s, prefix)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := elections[i].Campaign(ctx, fmt.Sprintf("n%d", i)); err == nil {
				wins <- won{i, time.Now()}
			}
		}()
		// Campaign in order, so that the line of succession is fixed.
		waitKeys(b, ctx, obs.cli, prefix, i+1)
	}
	leader := <-wins

	// Crash: cut the leader off; its lease expires after the TTL.
	key := elections[leader.i].Key()
	gone := watchDeleted(ctx, obs.cli, key)
	cut := time.Now()
	members[leader.i].link.Cut()
	var next won
	select {
	case next = <-wins:
	case <-ctx.Done():
		b.Fatal("no new leader after the crash")
	}
	var expiry time.Time
	select {
	case expiry = <-gone:
	case <-ctx.Done():
		b.Fatal("the crashed leader's key was never deleted")
	}
	f := failoverbench.Result{Crash: next.at.Sub(cut), AfterExpiry: next.at.Sub(expiry)}

	// Handover: the new leader resigns.
	t0 := time.Now()
	if err := elections[next.i].Resign(ctx); err != nil {
		b.Fatalf("resign: %v", err)
	}
	select {
	case after := <-wins:
		f.Handover = after.at.Sub(t0)
	case <-ctx.Done():
		b.Fatal("no new leader after the resignation")
	}
	for i, s := range sessions {
		if i != leader.i {
			_ = s.Close()
		}
	}
	return f
}

// waitKeys waits until n keys exist under prefix.
func waitKeys(b *testing.B, ctx context.Context, cli *clientv3.Client, prefix string, n int) {
	b.Helper()
	for {
		resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err == nil && resp.Count >= int64(n) {
			return
		}
		select {
		case <-ctx.Done():
			b.Fatalf("%d campaigners never registered under %s", n, prefix)
		case <-time.After(time.Millisecond):
		}
	}
}
