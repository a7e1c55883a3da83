package etcd_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
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
// The ratios are concord's figure over Election's. Each iteration builds
// both clusters afresh; the figures are medians over iterations.
func BenchmarkFailover(b *testing.B) {
	srv, err := embedded.Start(context.Background(), embedded.Config{
		DataDir: b.TempDir(), HeartbeatInterval: 50 * time.Millisecond, ElectionTimeout: 500 * time.Millisecond,
	})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	for _, n := range []int{3, 5} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			var c, e []failover
			for i := 0; i < b.N; i++ {
				root := fmt.Sprintf("bench/%d-%d-%d/", n, i, time.Now().UnixNano())
				c = append(c, concordFailover(b, srv, n, root+"concord/"))
				e = append(e, electionFailover(b, srv, n, root+"election/"))
			}
			cm, em := medianOf(c), medianOf(e)
			ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
			b.ReportMetric(ms(cm.crash-benchTTL), "concord-crash-above-ttl-ms")
			b.ReportMetric(ms(em.crash-benchTTL), "etcd-election-crash-above-ttl-ms")
			b.ReportMetric(ratio(cm.crash-benchTTL, em.crash-benchTTL), "crash-ratio")
			b.ReportMetric(ms(cm.afterExpiry), "concord-after-expiry-ms")
			b.ReportMetric(ms(em.afterExpiry), "etcd-election-after-expiry-ms")
			b.ReportMetric(ms(cm.handover), "concord-handover-ms")
			b.ReportMetric(ms(em.handover), "etcd-election-handover-ms")
			b.ReportMetric(ratio(cm.handover, em.handover), "handover-ratio")
		})
	}
}

// failover is one iteration's figures.
type failover struct {
	crash       time.Duration // cut to next primary
	afterExpiry time.Duration // expiry seen to next primary
	handover    time.Duration // resign call to next primary
}

func medianOf(fs []failover) failover {
	med := func(get func(failover) time.Duration) time.Duration {
		ds := make([]time.Duration, len(fs))
		for i, f := range fs {
			ds[i] = get(f)
		}
		slices.Sort(ds)
		return ds[len(ds)/2]
	}
	return failover{
		crash:       med(func(f failover) time.Duration { return f.crash }),
		afterExpiry: med(func(f failover) time.Duration { return f.afterExpiry }),
		handover:    med(func(f failover) time.Duration { return f.handover }),
	}
}

func ratio(a, b time.Duration) float64 {
	if b <= 0 {
		return 0
	}
	return float64(a) / float64(b)
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

func concordFailover(b *testing.B, srv *embedded.Server, n int, prefix string) failover {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	keys, err := core.NewKeys(prefix)
	if err != nil {
		b.Fatal(err)
	}
	obs := newMember(b, srv)
	defer obs.close()

	primaries := make(chan became, 4*n)
	members := make([]*member, n)
	nodes := make([]*core.Node, n)
	var wg sync.WaitGroup
	for i := range nodes {
		members[i] = newMember(b, srv)
		cfg := core.DefaultConfig()
		cfg.NodeID = fmt.Sprintf("n%d", i)
		cfg.Prefix = prefix
		cfg.Services = []core.ServiceConfig{{Name: "db", Priority: n - i}}
		cfg.SessionTTL, cfg.OpTimeout = benchTTL, benchTTL/4
		cfg.RetryMin, cfg.RetryMax, cfg.ElectionTimeout = 10*time.Millisecond, benchTTL/4, 2*benchTTL
		cfg.Logger = quiet
		node, err := core.Start(ctx, etcd.NewFromClient(members[i].cli, etcd.Config{}), cfg)
		if err != nil {
			b.Fatal(err)
		}
		nodes[i] = node
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ev := range node.Events() {
				if ev.Role == core.RolePrimary {
					primaries <- became{cfg.NodeID, time.Now()}
				}
			}
		}()
	}
	defer func() {
		for _, node := range nodes {
			if node != nil {
				_ = node.Close()
			}
		}
		wg.Wait()
		for _, m := range members {
			m.close()
		}
	}()
	// Wait until n0 (the highest priority) is primary and every node knows.
	waitAgreed := func(not string) string {
		for {
			agreed, ok := "", true
			for _, node := range nodes {
				if node == nil {
					continue
				}
				st, err := node.Status("db")
				if err != nil || st.Primary == "" || st.Primary == not || (agreed != "" && st.Primary != agreed) {
					ok = false
					break
				}
				agreed = st.Primary
			}
			if ok {
				return agreed
			}
			select {
			case <-ctx.Done():
				b.Fatalf("no agreed primary: %v", ctx.Err())
			case <-time.After(time.Millisecond):
			}
		}
	}
	first := waitAgreed("")
	drain(primaries)
	idx := func(id string) int {
		var i int
		fmt.Sscanf(id, "n%d", &i)
		return i
	}

	// Crash: cut the primary off; it can no longer renew its session.
	gone := watchDeleted(ctx, obs.cli, keys.Member(first))
	cut := time.Now()
	members[idx(first)].link.Cut()
	crashed := nodes[idx(first)]
	nodes[idx(first)] = nil
	next := waitBecame(b, ctx, primaries, first)
	var expiry time.Time
	select {
	case expiry = <-gone:
	case <-ctx.Done():
		b.Fatal("the crashed primary's member record was never deleted")
	}
	f := failover{crash: next.at.Sub(cut), afterExpiry: next.at.Sub(expiry)}
	wg.Add(1)
	go func() { defer wg.Done(); _ = crashed.Close() }()

	// Handover: the new primary resigns.
	waitAgreed(first)
	drain(primaries)
	t0 := time.Now()
	if err := nodes[idx(next.node)].Resign(ctx, "db"); err != nil {
		b.Fatalf("resign: %v", err)
	}
	after := waitBecame(b, ctx, primaries, next.node)
	f.handover = after.at.Sub(t0)
	return f
}

func drain[T any](ch chan T) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

// became is a node's becoming primary, as its event reported it.
type became struct {
	node string
	at   time.Time
}

// waitBecame returns the first node other than not to become primary.
func waitBecame(b *testing.B, ctx context.Context, ch chan became, not string) became {
	b.Helper()
	for {
		select {
		case v := <-ch:
			if v.node != not {
				return v
			}
		case <-ctx.Done():
			b.Fatal("no new primary")
		}
	}
}

func electionFailover(b *testing.B, srv *embedded.Server, n int, prefix string) failover {
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
	f := failover{crash: next.at.Sub(cut), afterExpiry: next.at.Sub(expiry)}

	// Handover: the new leader resigns.
	t0 := time.Now()
	if err := elections[next.i].Resign(ctx); err != nil {
		b.Fatalf("resign: %v", err)
	}
	select {
	case after := <-wins:
		f.handover = after.at.Sub(t0)
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
