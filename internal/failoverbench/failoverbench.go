// Package failoverbench measures how long a service has no primary when
// its primary fails, for concord nodes on any store. It is the one harness
// behind every failover benchmark (`make bench`), so that the figures of
// different stores compare: each benchmark gives it a way to open a
// member's own, cuttable connection to its store, and reports what Run
// returns.
//
// Three figures per run:
//
//   - Crash: the primary's connection to the store is cut (its process is
//     gone as far as the store can tell); from the cut to the moment the
//     next primary knows it is primary. Benchmarks report it as time above
//     the session TTL, the failure-detection bound every contender must
//     wait out.
//   - AfterExpiry: from the moment an observer sees the dead primary's
//     member record deleted by the store to the next primary knowing: the
//     election's own cost, without the store's failure detection.
//   - Handover: a graceful hand-over (Node.Resign, which SIGTERM runs),
//     from the call to the next primary knowing.
package failoverbench

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/concordha/concord/core"
	"github.com/concordha/concord/internal/netfault"
)

// Result is one run's figures.
type Result struct {
	Crash       time.Duration // cut to next primary
	AfterExpiry time.Duration // expiry seen to next primary
	Handover    time.Duration // resign call to next primary
}

// Member is one contender's connection to the store.
type Member struct {
	Store core.Store
	// Cut takes the member off the network at once, as a crash does.
	Cut func()
	// Close releases the connection (after the node on it is closed).
	Close func()
}

// Setup says how to reach the store under test.
type Setup struct {
	// TTL is the nodes' session TTL.
	TTL time.Duration
	// NewMember opens a new member connection. The harness closes it.
	NewMember func(b *testing.B) Member
	// Tune, if set, adjusts each node's config after the harness has set
	// its own (for example a longer OpTimeout for a slower store).
	Tune func(*core.Config)
}

// Linked returns a NewMember that puts a netfault link in front of the
// store at addr (host:port) for each member, and opens the member's
// client through the link's address with open.
func Linked(addr string, open func(b *testing.B, addr string) core.Store) func(b *testing.B) Member {
	return func(b *testing.B) Member {
		b.Helper()
		link, err := netfault.New(addr)
		if err != nil {
			b.Fatal(err)
		}
		st := open(b, link.Addr())
		return Member{Store: st, Cut: link.Cut, Close: func() { _ = st.Close(); _ = link.Close() }}
	}
}

// Median returns the per-figure medians of rs.
func Median(rs []Result) Result {
	med := func(get func(Result) time.Duration) time.Duration {
		ds := make([]time.Duration, len(rs))
		for i, r := range rs {
			ds[i] = get(r)
		}
		slices.Sort(ds)
		return ds[len(ds)/2]
	}
	return Result{
		Crash:       med(func(r Result) time.Duration { return r.Crash }),
		AfterExpiry: med(func(r Result) time.Duration { return r.AfterExpiry }),
		Handover:    med(func(r Result) time.Duration { return r.Handover }),
	}
}

// Ratio is a/b, or 0 when b is not positive.
func Ratio(a, b time.Duration) float64 {
	if b <= 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// Ms is d in milliseconds, for ReportMetric.
func Ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Report runs b.N failovers of n concord nodes under prefix and reports
// the medians under the given metric name stem (e.g. "concord"): the
// crash figure above bound (the store's failure-detection bound, usually
// the TTL), after-expiry and handover. It returns the medians.
func Report(b *testing.B, s Setup, n int, prefix, stem string, bound time.Duration) Result {
	b.Helper()
	var rs []Result
	for i := 0; i < b.N; i++ {
		rs = append(rs, Run(b, s, n, fmt.Sprintf("%s%d-%d/", prefix, i, time.Now().UnixNano())))
	}
	m := Median(rs)
	b.ReportMetric(Ms(m.Crash-bound), stem+"-crash-above-ttl-ms")
	b.ReportMetric(Ms(m.AfterExpiry), stem+"-after-expiry-ms")
	b.ReportMetric(Ms(m.Handover), stem+"-handover-ms")
	return m
}

// Run starts n concord nodes for one service "db" under prefix, each on
// its own member connection, with priorities that make n0 the first
// primary; then it cuts the primary off and measures the crash failover,
// and has the next primary resign and measures the handover.
func Run(b *testing.B, s Setup, n int, prefix string) Result {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute+20*s.TTL)
	defer cancel()
	keys, err := core.NewKeys(prefix)
	if err != nil {
		b.Fatal(err)
	}
	obs := s.NewMember(b)
	defer obs.Close()

	primaries := make(chan became, 4*n)
	members := make([]Member, n)
	nodes := make([]*core.Node, n)
	var wg sync.WaitGroup
	defer func() {
		for _, node := range nodes {
			if node != nil {
				_ = node.Close()
			}
		}
		wg.Wait()
		for _, m := range members {
			if m.Close != nil {
				m.Close()
			}
		}
	}()
	for i := range nodes {
		members[i] = s.NewMember(b)
		cfg := core.DefaultConfig()
		cfg.NodeID = fmt.Sprintf("n%d", i)
		cfg.Prefix = prefix
		cfg.Services = []core.ServiceConfig{{Name: "db", Priority: n - i}}
		cfg.SessionTTL, cfg.OpTimeout = s.TTL, s.TTL/4
		cfg.RetryMin, cfg.RetryMax, cfg.ElectionTimeout = 10*time.Millisecond, s.TTL/4, 2*s.TTL
		cfg.Logger = slog.New(slog.DiscardHandler)
		if s.Tune != nil {
			s.Tune(&cfg)
		}
		node, err := core.Start(ctx, members[i].Store, cfg)
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
	// waitAgreed waits until every live node knows the same primary, other
	// than not.
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
		_, _ = fmt.Sscanf(id, "n%d", &i)
		return i
	}

	// Crash: cut the primary off; it can no longer renew its session.
	gone := watchGone(ctx, b, obs.Store, keys.Members(), keys.Member(first))
	cut := time.Now()
	members[idx(first)].Cut()
	crashed := nodes[idx(first)]
	nodes[idx(first)] = nil
	next := waitBecame(ctx, b, primaries, first)
	var expiry time.Time
	select {
	case expiry = <-gone:
	case <-ctx.Done():
		b.Fatal("the crashed primary's member record was never deleted")
	}
	r := Result{Crash: next.at.Sub(cut), AfterExpiry: next.at.Sub(expiry)}
	wg.Add(1)
	go func() { defer wg.Done(); _ = crashed.Close() }()

	// Handover: the new primary resigns.
	waitAgreed(first)
	drain(primaries)
	t0 := time.Now()
	if err := nodes[idx(next.node)].Resign(ctx, "db"); err != nil {
		b.Fatalf("resign: %v", err)
	}
	r.Handover = waitBecame(ctx, b, primaries, next.node).at.Sub(t0)
	return r
}

// watchGone returns a channel that gets the time an observer's watch of
// folder first shows key absent after having shown it present.
func watchGone(ctx context.Context, b *testing.B, st core.Store, folder, key string) <-chan time.Time {
	b.Helper()
	ch, err := st.Watch(ctx, folder)
	if err != nil {
		b.Fatal(err)
	}
	seen := make(chan time.Time, 1)
	present := make(chan struct{})
	go func() {
		var wasPresent bool
		for snap := range ch {
			has := slices.ContainsFunc(snap.KVs, func(kv core.KV) bool { return kv.Key == key })
			switch {
			case has && !wasPresent:
				wasPresent = true
				close(present)
			case !has && wasPresent:
				seen <- time.Now()
				for range ch {
				}
				return
			}
		}
	}()
	select {
	case <-present:
	case <-ctx.Done():
		b.Fatalf("the observer never saw %s", key)
	}
	return seen
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
func waitBecame(ctx context.Context, b *testing.B, ch chan became, not string) became {
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
