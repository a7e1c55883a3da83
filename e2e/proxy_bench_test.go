package e2e

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// BenchmarkProxyCrashFailover measures how long clients of concord's
// proxy go without a successful write when the primary's node crashes,
// given as time above the session TTL (the failure-detection bound that
// no failover can beat).
//
// Each round, on a cluster of three with a primary and a secondary, a
// client writes as fast as it can, one request at a time and with a
// connection per request, through the proxy of a node that is not the
// primary's. Then the primary's concord and its kvstore daemon are both
// killed with SIGKILL; t0 is the moment both signals are sent (the
// processes may take a few milliseconds more to be gone, so a write
// started just after t0 can still fail on the dying daemon). t1 is the
// completion of the first successful write through the proxy that started
// after t0, and the round's figure is (t1 - t0) - TTL. It can be below
// zero: the session's lease was last renewed up to one renewal interval
// (TTL/3) before the crash, so it can end that much before t0 + TTL.
// Every write that succeeded after t0 must be on the new primary. The
// killed node is then restarted (its etcd member from its data
// directory), and the next round waits for it to run its service again
// and for the cluster to have a primary and a live secondary; that wait
// is not measured.
//
// Each node's concord embeds an etcd member, so a crash of the primary's
// node also kills an etcd member. The rounds alternate: in even rounds
// etcd's leadership is first moved elsewhere (the crash kills a
// follower), in odd rounds onto the primary's member (the crash kills
// etcd's leader too). In the second case etcd must elect a new leader,
// which then renews every lease for its whole TTL plus an election
// timeout before it can expire the dead primary's session: the figure
// grows by about two election timeouts.
//
// Metrics, over the rounds of each kind: ms-above-ttl-median and
// ms-above-ttl-max (etcd's leader elsewhere), and
// ms-above-ttl-median-etcd-leader and ms-above-ttl-max-etcd-leader (the
// crash killed etcd's leader too). ns/op, which would include the
// restarts, is hidden.
func BenchmarkProxyCrashFailover(b *testing.B) {
	c := startCluster(b)
	var above, aboveLeader []time.Duration
	round := 0
	for b.Loop() {
		p, _ := c.primary(b, c.nodes)
		live := c.except(p)
		s := live[round%len(live)]
		c.placeEtcdLeader(b, p, round%2 == 1)
		leader, lerr := c.etcdLeader(p)

		l := startCrashLoad(b, s, fmt.Sprintf("crash-%d-", round))
		eventually(b, 20*time.Second, "a write through "+s.id+"'s proxy before the crash", func() error {
			if l.okCount() == 0 {
				return errors.New("none succeeded yet")
			}
			return nil
		})
		killDaemon(p)
		_ = p.cmd.Process.Kill()
		t0 := time.Now()
		l.setT0(t0)
		eventually(b, 60*time.Second, "a successful write through "+s.id+"'s proxy after the crash", func() error {
			if l.firstAfter().IsZero() {
				return errors.New("none succeeded yet")
			}
			return nil
		})
		l.stop()
		d := l.firstAfter().Sub(t0) - ttl
		if leader {
			aboveLeader = append(aboveLeader, d)
		} else {
			above = append(above, d)
		}

		// The writes that succeeded after the crash are on the new primary.
		next, _ := c.primary(b, live)
		got, err := all(next)
		if err != nil {
			b.Fatalf("reading the new primary %s: %v", next.id, err)
		}
		for _, k := range l.okAfter() {
			if got[k] != k {
				b.Errorf("round %d: the write %s succeeded after the crash but is not on the new primary %s (%q)", round, k, next.id, got[k])
			}
		}
		etcdRole := "not etcd's leader"
		switch {
		case lerr != nil:
			etcdRole = fmt.Sprintf("etcd leader unknown: %v", lerr)
		case leader:
			etcdRole = "etcd's leader"
		}
		nbad, errs := l.failures()
		b.Logf("round %d: killed %s (%s); via %s's proxy, first write after the crash done %v after it: %.0fms above the TTL; new primary %s; %d writes failed",
			round, p.id, etcdRole, s.id, l.firstAfter().Sub(t0).Round(time.Millisecond), ms(d), next.id, nbad)
		if testing.Verbose() {
			for _, e := range errs {
				b.Logf("round %d: failed write: %s", round, e)
			}
		}

		c.restart(b, p)
		round++
	}
	for _, m := range []struct {
		ds     []time.Duration
		suffix string
	}{{above, ""}, {aboveLeader, "-etcd-leader"}} {
		if len(m.ds) == 0 {
			continue
		}
		slices.Sort(m.ds)
		b.ReportMetric(ms(median(m.ds)), "ms-above-ttl-median"+m.suffix)
		b.ReportMetric(ms(m.ds[len(m.ds)-1]), "ms-above-ttl-max"+m.suffix)
	}
	b.ReportMetric(0, "ns/op")
}

// crashLoad writes through one node's proxy, one request at a time, with
// a connection per request, and remembers which writes that started
// after t0 succeeded and when the first of them completed. Unlike load,
// it is one writer that must know, for each request, whether it began
// after the crash.
type crashLoad struct {
	halt    chan struct{}
	done    chan struct{}
	stopped sync.Once

	mu      sync.Mutex
	t0      time.Time
	first   time.Time // completion of the first success started after t0
	after   []string  // keys written successfully by requests started after t0
	errs    []string  // the first failures once t0 is set
	ok, bad int
}

// startCrashLoad starts a crashLoad through n's proxy, whose keys start
// with prefix. It stops at the latest at tb's cleanup.
func startCrashLoad(tb testing.TB, n *kvNode, prefix string) *crashLoad {
	l := &crashLoad{halt: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		writeKeys(l.halt, prefix, func(k string) {
			start := time.Now()
			err := putURL(noReuse, proxyURL(n, k), k, k)
			end := time.Now()
			l.mu.Lock()
			defer l.mu.Unlock()
			if err != nil {
				l.bad++
				if !l.t0.IsZero() && len(l.errs) < 3 {
					l.errs = append(l.errs, fmt.Sprintf("start-t0 %v, took %v: %v", start.Sub(l.t0).Round(time.Millisecond), end.Sub(start).Round(time.Millisecond), err))
				}
				return
			}
			l.ok++
			if !l.t0.IsZero() && start.After(l.t0) {
				if l.first.IsZero() {
					l.first = end
				}
				l.after = append(l.after, k)
			}
		})
	}()
	tb.Cleanup(l.stop)
	return l
}

func (l *crashLoad) setT0(t time.Time) { l.mu.Lock(); l.t0 = t; l.mu.Unlock() }

func (l *crashLoad) firstAfter() time.Time { l.mu.Lock(); defer l.mu.Unlock(); return l.first }

func (l *crashLoad) okCount() int { l.mu.Lock(); defer l.mu.Unlock(); return l.ok }

// failures returns how many writes failed, and the first ones after t0.
func (l *crashLoad) failures() (int, []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.bad, slices.Clone(l.errs)
}

func (l *crashLoad) okAfter() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.after)
}

// stop ends the load and waits for its request in flight, which the
// client's timeout bounds. Calls after the first do nothing.
func (l *crashLoad) stop() {
	l.stopped.Do(func() {
		close(l.halt)
		<-l.done
	})
}

// BenchmarkSwitchoverUnderLoad measures what clients of concord's proxy
// see during a planned switchover under steady traffic: requests failed
// (the goal is none) and requests the proxy held while the primary role
// moved.
//
// Each round, on a cluster of three with a primary and a secondary, a
// load (see load: two workers with a connection per request, two with
// keep-alive connections and idempotent requests, each request with a
// 15s timeout) writes through the proxy of the third node, neither the
// primary nor the secondary that takes over. Once each worker has had a
// write succeed, `concord switchover kv` runs; after it reports the new
// primary and that primary serves, the traffic goes on for another second
// and stops. A failed request is any error or non-200 answer. Held
// requests are the increase, over the round, of the "held" counter in
// that node's GET /v1/proxies. Every write acknowledged during the round
// must be on the new primary.
//
// Metrics: failed/op, held/op and requests/op (per switchover), and
// max-latency-ms, the longest request of all rounds. ns/op, which would
// include the waits between rounds, is hidden. Failed requests do not
// fail the benchmark: they are its figure.
func BenchmarkSwitchoverUnderLoad(b *testing.B) {
	c := startCluster(b)
	var failed, requests int
	var held uint64
	var slowest time.Duration
	round := 0
	for b.Loop() {
		p, sec := c.primary(b, c.nodes)
		s := c.spare(p, sec)
		via := []*kvNode{s}
		before := proxyCounters(b, via)
		l := startLoad(b, via, fmt.Sprintf("sw-%d-", round))
		eventually(b, 20*time.Second, "every worker's write through "+s.id+"'s proxy before the switchover", l.allSucceeded)

		start := time.Now()
		c.switchover(b, s, sec)
		took := time.Since(start)
		next, _ := c.primary(b, c.nodes)
		if next != c.byID[sec] {
			b.Fatalf("round %d: after the switchover to %s, %s is primary", round, sec, next.id)
		}
		// The traffic goes on for a second with the new primary: a fixed
		// stretch of load, not a wait for a condition.
		<-time.After(time.Second)
		r := l.end()
		d := since(proxyCounters(b, via), before)

		got, err := all(next)
		if err != nil {
			b.Fatalf("round %d: reading the new primary %s: %v", round, next.id, err)
		}
		lost := 0
		for k, v := range r.acked {
			if got[k] != v {
				lost++
			}
		}
		if lost > 0 {
			b.Errorf("round %d: %d of %d writes acknowledged through %s's proxy are not on the new primary %s", round, lost, len(r.acked), s.id, next.id)
		}

		failed += r.failed
		requests += r.requests
		held += d["held"]
		slowest = max(slowest, r.slowest)
		b.Logf("round %d: switchover %s -> %s took %v; via %s's proxy: %d requests, %d failed %v, held %d, drained %d, expired %d, refused %d, longest %v",
			round, p.id, next.id, took.Round(time.Millisecond), s.id, r.requests, r.failed, r.kinds, d["held"], d["drained"], d["expired"], d["refused"], r.slowest.Round(time.Millisecond))
		if testing.Verbose() {
			for _, e := range r.samples {
				b.Logf("round %d: first failure of its kind: %s", round, e)
			}
		}
		round++
	}
	b.ReportMetric(float64(failed)/float64(round), "failed/op")
	b.ReportMetric(float64(held)/float64(round), "held/op")
	b.ReportMetric(float64(requests)/float64(round), "requests/op")
	b.ReportMetric(ms(slowest), "max-latency-ms")
	b.ReportMetric(0, "ns/op")
}

// median of sorted durations.
func median(sorted []time.Duration) time.Duration {
	n := len(sorted)
	if n%2 == 1 {
		return sorted[n/2]
	}
	return (sorted[n/2-1] + sorted[n/2]) / 2
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
