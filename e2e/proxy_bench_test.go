package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/concordha/concord/backends/etcd"
	"github.com/concordha/concord/core"
)

// cluster is three concord nodes (a, b, c), each with its member of one
// embedded etcd cluster, keeping the example kvstore service available
// through its resource agent, with a proxy for kv on every node.
type cluster struct {
	work    string // the nodes' working directory: configs, data, binaries
	concord string // the concord binary
	nodes   []*kvNode
	byID    map[string]*kvNode
	cfgs    map[string]string // node id -> its config file
	st      *etcd.Store       // a client of the nodes' etcd cluster
}

// startCluster builds concord and kvstore, starts the three nodes, and
// returns once they run (not once the service has a primary: see
// primary). Everything it starts stops at tb's cleanup.
func startCluster(tb testing.TB) *cluster {
	tb.Helper()
	c := &cluster{work: tb.TempDir(), byID: map[string]*kvNode{}, cfgs: map[string]string{}}
	c.concord = build(tb, c.work, "concord", "./cmd/concord")
	build(tb, c.work, "kvstore", "./examples/kvstore")
	if err := os.WriteFile(filepath.Join(c.work, "cluster.secret"), []byte("e2e-secret-of-at-least-16-bytes\n"), 0o600); err != nil {
		tb.Fatal(err)
	}
	ports := freePorts(tb, 15)
	var initial, endpoints []string
	for i, id := range []string{"a", "b", "c"} {
		n := &kvNode{id: id, api: ports[5*i], kv: ports[5*i+1], client: ports[5*i+2], peer: ports[5*i+3], proxy: ports[5*i+4], kvDir: filepath.Join(c.work, "kv-"+id)}
		c.nodes = append(c.nodes, n)
		c.byID[id] = n
		initial = append(initial, fmt.Sprintf("%s=http://127.0.0.1:%d", id, n.peer))
		endpoints = append(endpoints, etcdURL(n))
	}
	for _, n := range c.nodes {
		c.cfgs[n.id] = writeConfig(tb, c.work, n, strings.Join(initial, ","))
		startKVNode(tb, c.work, c.concord, c.cfgs[n.id], n)
	}
	st, err := etcd.New(etcd.Config{Endpoints: endpoints})
	if err != nil {
		tb.Fatal(err)
	}
	// Registered after the nodes' cleanups, so it runs before them.
	tb.Cleanup(func() { _ = st.Close() })
	c.st = st
	return c
}

// etcdURL is the client URL of n's embedded etcd member.
func etcdURL(n *kvNode) string { return fmt.Sprintf("http://127.0.0.1:%d", n.client) }

// roster reads kv's roster from the store.
func (c *cluster) roster() (core.RosterRecord, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	kv, err := c.st.Get(ctx, "concord/roster/kv")
	if err != nil {
		return core.RosterRecord{}, err
	}
	return core.DecodeRoster(kv)
}

// roles returns the one node among live whose service is primary, and the
// roster's one secondary, which must be another live node; an error says
// why the cluster is not in that state.
func (c *cluster) roles(live []*kvNode) (*kvNode, string, error) {
	var p *kvNode
	for _, n := range live {
		if h, err := healthOf(n); err == nil && h.Role == "primary" {
			if p != nil {
				return nil, "", fmt.Errorf("two primaries: %s and %s", p.id, n.id)
			}
			p = n
		}
	}
	if p == nil {
		return nil, "", errors.New("no primary")
	}
	r, err := c.roster()
	if err != nil {
		return nil, "", err
	}
	var sec string
	for _, e := range r.Secondaries {
		if n := c.byID[e.Node]; e.Node != p.id && n != nil && n.alive() {
			sec = e.Node
		}
	}
	if len(r.Secondaries) != 1 || sec == "" {
		return nil, "", fmt.Errorf("primary %s, roster %+v: want one live secondary", p.id, r.Secondaries)
	}
	return p, sec, nil
}

// primary waits until exactly one node of live has a primary service and
// the roster holds one live secondary other than it, and returns both.
func (c *cluster) primary(tb testing.TB, live []*kvNode) (*kvNode, string) {
	tb.Helper()
	var p *kvNode
	var sec string
	eventually(tb, 60*time.Second, "one primary and one secondary", func() error {
		var err error
		p, sec, err = c.roles(live)
		return err
	})
	return p, sec
}

// etcdLeader reports whether n's etcd member is the etcd cluster's leader.
func (c *cluster) etcdLeader(n *kvNode) (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := c.st.Client().Status(ctx, etcdURL(n))
	if err != nil {
		return false, err
	}
	return s.Header.MemberId == s.Leader, nil
}

// proxyURL is the URL of key k through n's proxy for kv.
func proxyURL(n *kvNode, k string) string {
	return fmt.Sprintf("http://127.0.0.1:%d/kv/%s", n.proxy, k)
}

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
// Metrics: ms-above-ttl-median and ms-above-ttl-max over the rounds
// (ns/op, which would include the restarts, is hidden). Each round's log
// line says whether the killed node's etcd member was etcd's leader:
// then etcd must elect a leader before the store can expire the session,
// which adds to the figure.
func BenchmarkProxyCrashFailover(b *testing.B) {
	c := startCluster(b)
	var above []time.Duration
	round := 0
	for b.Loop() {
		p, _ := c.primary(b, c.nodes)
		var others []*kvNode
		for _, n := range c.nodes {
			if n != p {
				others = append(others, n)
			}
		}
		s := others[round%len(others)]
		leader, lerr := c.etcdLeader(p)

		l := startCrashLoad(s, fmt.Sprintf("crash-%d-", round))
		b.Cleanup(l.stop) // if the round fails before it stops the load
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
		above = append(above, d)

		// The writes that succeeded after the crash are on the new primary.
		var live []*kvNode
		for _, n := range c.nodes {
			if n != p {
				live = append(live, n)
			}
		}
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
	slices.Sort(above)
	b.ReportMetric(ms(median(above)), "ms-above-ttl-median")
	b.ReportMetric(ms(above[len(above)-1]), "ms-above-ttl-max")
	b.ReportMetric(0, "ns/op")
}

// restart starts n's concord again after a crash, with its config: its
// etcd member rejoins from its data directory. It returns once n's
// service runs, its etcd member answers, and the service has a primary
// and a live secondary.
func (c *cluster) restart(tb testing.TB, n *kvNode) {
	tb.Helper()
	select {
	case <-n.done:
	case <-time.After(10 * time.Second):
		tb.Fatalf("node %s still runs 10s after SIGKILL", n.id)
	}
	startKVNode(tb, c.work, c.concord, c.cfgs[n.id], n)
	eventually(tb, 90*time.Second, "node "+n.id+" back after its restart", func() error {
		if _, err := healthOf(n); err != nil {
			return fmt.Errorf("%s's service: %v", n.id, err)
		}
		if _, err := c.etcdLeader(n); err != nil {
			return fmt.Errorf("%s's etcd member: %v", n.id, err)
		}
		_, _, err := c.roles(c.nodes)
		return err
	})
}

// crashLoad writes through one node's proxy, one request at a time, with
// a connection per request, and remembers which writes that started
// after t0 succeeded and when the first of them completed.
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

func startCrashLoad(n *kvNode, prefix string) *crashLoad {
	l := &crashLoad{halt: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for i := 0; ; i++ {
			select {
			case <-l.halt:
				return
			default:
			}
			k := fmt.Sprintf("%s%d", prefix, i)
			start := time.Now()
			err := putURL(noReuse, proxyURL(n, k), k, k)
			end := time.Now()
			l.mu.Lock()
			switch {
			case err != nil:
				l.bad++
				if !l.t0.IsZero() && len(l.errs) < 3 {
					l.errs = append(l.errs, fmt.Sprintf("start-t0 %v, took %v: %v", start.Sub(l.t0).Round(time.Millisecond), end.Sub(start).Round(time.Millisecond), err))
				}
			default:
				l.ok++
				if !l.t0.IsZero() && start.After(l.t0) {
					if l.first.IsZero() {
						l.first = end
					}
					l.after = append(l.after, k)
				}
			}
			l.mu.Unlock()
		}
	}()
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
// Each round, on a cluster of three with a primary and a secondary, four
// clients write one request at a time through the proxy of the third
// node (neither the primary nor the secondary that takes over): two with
// a connection per request, two with keep-alive connections whose
// requests carry a unique Idempotency-Key header, so that Go's transport
// may retry one on a kept-alive connection the proxy closed while it was
// idle. Every request has a 15s timeout. Once each client has had a
// write succeed, `concord switchover kv` runs; after it reports the new
// primary and that primary serves, the traffic goes on for another second
// and stops. A failed request is any error or non-200 answer. Held
// requests are the increase, over the round, of the "held" counter in
// that node's GET /v1/proxies.
//
// Metrics: failed/op, held/op and requests/op (per switchover), and
// max-latency-ms, the longest request of all rounds. held/op is missing
// if the node API does not serve /v1/proxies. ns/op, which would include
// the waits between rounds, is hidden. Failed requests do not fail the
// benchmark: they are its figure.
func BenchmarkSwitchoverUnderLoad(b *testing.B) {
	c := startCluster(b)
	var failed, held, requests int
	var maxLatency time.Duration
	heldKnown := true
	round := 0
	for b.Loop() {
		p, sec := c.primary(b, c.nodes)
		var s *kvNode
		for _, n := range c.nodes {
			if n != p && n.id != sec {
				s = n
			}
		}
		held0, herr := proxyHeld(s)
		if herr != nil {
			heldKnown = false
		}
		l := startSwitchoverLoad(s, fmt.Sprintf("sw-%d-", round))
		b.Cleanup(func() { l.stop() }) // if the round fails before it stops the load
		eventually(b, 20*time.Second, "every client's write through "+s.id+"'s proxy before the switchover", l.allSucceeded)

		start := time.Now()
		sw := exec.Command(c.concord, "switchover", "kv", "--config", filepath.Base(c.cfgs[s.id]))
		sw.Dir = c.work
		out, err := sw.CombinedOutput()
		took := time.Since(start)
		if err != nil {
			b.Fatalf("round %d: concord switchover kv: %v\n%s", round, err, out)
		}
		if !strings.Contains(string(out), "the primary is now "+sec) {
			b.Fatalf("round %d: switchover printed %q; want the primary to be %s, the secondary", round, out, sec)
		}
		next, _ := c.primary(b, c.nodes)
		if next != c.byID[sec] {
			b.Fatalf("round %d: after the switchover to %s, %s is primary", round, sec, next.id)
		}
		// The traffic goes on for a second with the new primary: a fixed
		// stretch of load, not a wait for a condition.
		<-time.After(time.Second)
		r := l.stop()

		h := int64(-1)
		if heldKnown {
			held1, err := proxyHeld(s)
			if err != nil {
				heldKnown = false
				herr = err
			} else {
				h = int64(held1 - held0)
				held += int(h)
			}
		}
		failed += r.failed
		requests += r.requests
		maxLatency = max(maxLatency, r.maxLatency)
		heldText := fmt.Sprint(h)
		if !heldKnown {
			heldText = fmt.Sprintf("unknown (%v)", herr)
		}
		b.Logf("round %d: switchover %s -> %s took %v; via %s's proxy: %d requests, %d failed %v, held %s, longest %v",
			round, p.id, next.id, took.Round(time.Millisecond), s.id, r.requests, r.failed, r.kinds, heldText, r.maxLatency.Round(time.Millisecond))
		if testing.Verbose() {
			for _, e := range r.samples {
				b.Logf("round %d: first failure of its kind: %s", round, e)
			}
		}
		round++
	}
	b.ReportMetric(float64(failed)/float64(round), "failed/op")
	if heldKnown {
		b.ReportMetric(float64(held)/float64(round), "held/op")
	}
	b.ReportMetric(float64(requests)/float64(round), "requests/op")
	b.ReportMetric(ms(maxLatency), "max-latency-ms")
	b.ReportMetric(0, "ns/op")
}

// proxyHeld reads the held counter of n's proxy for kv from its node API.
func proxyHeld(n *kvNode) (uint64, error) {
	resp, err := httpc.Get(fmt.Sprintf("http://127.0.0.1:%d/v1/proxies", n.api))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return 0, fmt.Errorf("GET /v1/proxies on %s: %d %s", n.id, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	var ps []struct {
		Service string `json:"service"`
		Stats   struct {
			Held *uint64 `json:"held"`
		} `json:"stats"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&ps); err != nil {
		return 0, fmt.Errorf("GET /v1/proxies on %s: %v", n.id, err)
	}
	for _, p := range ps {
		if p.Service == "kv" && p.Stats.Held != nil {
			return *p.Stats.Held, nil
		}
	}
	return 0, fmt.Errorf("GET /v1/proxies on %s: no kv proxy with a held count", n.id)
}

// switchoverLoad is the four clients of BenchmarkSwitchoverUnderLoad.
type switchoverLoad struct {
	halt    chan struct{}
	wg      sync.WaitGroup
	trans   []*http.Transport // the keep-alive clients' transports
	stopped sync.Once

	mu     sync.Mutex
	ok     [4]int
	result loadResult
}

// loadResult is what the clients saw. kinds counts the failures by kind
// (see failureKind); samples holds the first failure of each kind.
type loadResult struct {
	requests, failed int
	maxLatency       time.Duration
	kinds            map[string]int
	samples          []string
}

func startSwitchoverLoad(n *kvNode, prefix string) *switchoverLoad {
	l := &switchoverLoad{halt: make(chan struct{}), result: loadResult{kinds: map[string]int{}}}
	for w := range 4 {
		c, keyed := noReuse, w >= 2
		if keyed {
			tr := &http.Transport{MaxIdleConnsPerHost: 1}
			l.trans = append(l.trans, tr)
			c = &http.Client{Timeout: 15 * time.Second, Transport: tr}
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-l.halt:
					return
				default:
				}
				k := fmt.Sprintf("%s%d-%d", prefix, w, i)
				idem := ""
				if keyed {
					idem = k
				}
				start := time.Now()
				err := putIdem(c, proxyURL(n, k), k, idem)
				took := time.Since(start)
				l.mu.Lock()
				l.result.requests++
				l.result.maxLatency = max(l.result.maxLatency, took)
				if err != nil {
					l.result.failed++
					kind := failureKind(err)
					if l.result.kinds[kind] == 0 {
						l.result.samples = append(l.result.samples, fmt.Sprintf("client %d (keep-alive %v) after %v: %v", w, keyed, took.Round(time.Millisecond), err))
					}
					l.result.kinds[kind]++
				} else {
					l.ok[w]++
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

// allSucceeded is nil once every client has had a write succeed.
func (l *switchoverLoad) allSucceeded() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for w, n := range l.ok {
		if n == 0 {
			return fmt.Errorf("client %d has had no write succeed", w)
		}
	}
	return nil
}

// stop ends the clients, waits for their requests in flight (each bounded
// by its timeout), closes the keep-alive connections and returns what the
// clients saw. Calls after the first only return it.
func (l *switchoverLoad) stop() loadResult {
	l.stopped.Do(func() {
		close(l.halt)
		l.wg.Wait()
		for _, tr := range l.trans {
			tr.CloseIdleConnections()
		}
	})
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.result
}

// httpError is a non-200 answer.
type httpError struct {
	status int
	body   string
}

func (e *httpError) Error() string { return fmt.Sprintf("%d %s", e.status, e.body) }

// failureKind names a failed request's kind for the counts in the log:
// "transport" for an error without an answer, else the status and the
// first words of the answer's error message.
func failureKind(err error) string {
	var he *httpError
	if !errors.As(err, &he) {
		return "transport"
	}
	var body struct {
		Error string `json:"error"`
	}
	msg := he.body
	if json.Unmarshal([]byte(he.body), &body) == nil && body.Error != "" {
		msg = body.Error
	}
	words := strings.Fields(msg)
	return fmt.Sprintf("%d %s", he.status, strings.Join(words[:min(len(words), 4)], " "))
}

// putIdem writes k=k at url, with an Idempotency-Key header if idem is
// set: that makes Go's transport retry the request on a new connection if
// a kept-alive one turns out to be closed before any answer.
func putIdem(c *http.Client, url, k, idem string) error {
	req, err := http.NewRequest(http.MethodPut, url, strings.NewReader(k))
	if err != nil {
		return err
	}
	if idem != "" {
		req.Header.Set("Idempotency-Key", idem)
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return fmt.Errorf("PUT %s: %w", k, &httpError{resp.StatusCode, strings.TrimSpace(string(body))})
	}
	return nil
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
