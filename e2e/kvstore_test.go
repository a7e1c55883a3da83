package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/concordha/concord/backends/etcd"
	"github.com/concordha/concord/client"
	"github.com/concordha/concord/core"
	"github.com/concordha/concord/internal/leakcheck"
	"github.com/concordha/concord/internal/poll"
	"github.com/concordha/concord/internal/syncbuf"
)

func TestMain(m *testing.M) { leakcheck.Main(m) }

// build compiles a package of this module into dir.
func build(t testing.TB, dir, name, pkg string) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Dir(filepath.Dir(file))
	out := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}

func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var out []int
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().(*net.TCPAddr).Port)
	}
	for _, ln := range lns {
		ln.Close()
	}
	return out
}

type kvNode struct {
	id                           string
	api, kv, client, peer, proxy int
	cmd                          *exec.Cmd
	logs                         *syncbuf.Buffer
	done                         chan struct{}
	killed                       bool
	kvDir                        string
}

func (n *kvNode) kvURL(path string) string { return fmt.Sprintf("http://127.0.0.1:%d%s", n.kv, path) }

func (n *kvNode) alive() bool {
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

const ttl = 2 * time.Second

func writeConfig(t testing.TB, work string, n *kvNode, cluster string) string {
	body := fmt.Sprintf(`node:
  id: %[1]s
  data_dir: concord-%[1]s
  api:
    listen: 127.0.0.1:%[2]d
cluster:
  prefix: concord/
  secret_file: cluster.secret
store:
  type: embedded
  session_ttl: %[6]v
  op_timeout: 600ms
  retry_min: 20ms
  retry_max: 300ms
  election_timeout: 5s
  embedded:
    data_dir: etcd-%[1]s
    name: %[1]s
    client_url: http://127.0.0.1:%[3]d
    peer_url: http://127.0.0.1:%[4]d
    initial_cluster: %[5]s
    cluster_state: new
    cluster_token: e2e
services:
  - name: kv
    secondaries: 1
    sync_acks: 1
    checkpoint_interval: 500ms
    monitor_interval: 400ms
    max_restarts: 2
    restart_window: 1m
    endpoint: 127.0.0.1:%[7]d
    agent:
      command: ./kvstore
      params:
        listen: 127.0.0.1:%[7]d
        dir: kv-%[1]s
        sync: "true"
        # Below session_ttl - keepalive_interval (2s - 667ms), with a margin.
        lease: 1s
      timeouts:
        monitor: 2s
        start: 4s
proxies:
  - service: kv
    listen: 127.0.0.1:%[8]d
    hold_timeout: 10s
log:
  level: info
  format: json
`, n.id, n.api, n.client, n.peer, cluster, ttl, n.kv, n.proxy)
	path := filepath.Join(work, n.id+".yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func startKVNode(t testing.TB, work, concord, cfg string, n *kvNode) {
	n.logs = &syncbuf.Buffer{}
	n.done = make(chan struct{})
	n.cmd = exec.Command(concord, "run", "--config", cfg)
	n.cmd.Dir = work
	n.cmd.Stdout, n.cmd.Stderr = n.logs, n.logs
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CONCORD_") {
			env = append(env, kv)
		}
	}
	n.cmd.Env = env
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = n.cmd.Wait(); close(n.done) }()
	t.Cleanup(func() {
		if n.alive() {
			_ = n.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-n.done:
			case <-time.After(20 * time.Second):
				t.Errorf("node %s still running 20s after SIGTERM", n.id)
				_ = n.cmd.Process.Kill()
				<-n.done
			}
		}
		killDaemon(n)
		if t.Failed() {
			t.Logf("--- log of %s ---\n%s", n.id, n.logs.String())
		}
	})
}

// killDaemon kills the node's kvstore daemon, if its pid file names one.
func killDaemon(n *kvNode) {
	b, err := os.ReadFile(filepath.Join(n.kvDir, "pid"))
	if err != nil {
		return
	}
	if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

type health struct {
	Role    string `json:"role"`
	Version int64  `json:"version"`
	Token   int64  `json:"token"`
}

var httpc = &http.Client{Timeout: 2 * time.Second}

func healthOf(n *kvNode) (health, error) {
	var h health
	resp, err := httpc.Get(n.kvURL("/healthz"))
	if err != nil {
		return h, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return h, fmt.Errorf("healthz %d", resp.StatusCode)
	}
	return h, json.NewDecoder(resp.Body).Decode(&h)
}

func put(n *kvNode, k, v string) error { return putURL(httpc, n.kvURL("/kv/"+k), k, v) }

// noReuse makes a connection per request, as a proxy's clients must
// after the proxy closes their connections to a replaced primary.
var noReuse = &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// putViaProxy writes through n's proxy for kv.
func putViaProxy(n *kvNode, k, v string) error {
	return putURL(noReuse, fmt.Sprintf("http://127.0.0.1:%d/kv/%s", n.proxy, k), k, v)
}

func putURL(c *http.Client, url, k, v string) error {
	req, _ := http.NewRequest(http.MethodPut, url, strings.NewReader(v))
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return fmt.Errorf("PUT %s: %d %s", k, resp.StatusCode, bytes.TrimSpace(b))
	}
	return nil
}

func all(n *kvNode) (map[string]string, error) {
	resp, err := httpc.Get(n.kvURL("/kv"))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var m map[string]string
	return m, json.NewDecoder(resp.Body).Decode(&m)
}

func eventually(t testing.TB, within time.Duration, what string, cond func() error) {
	t.Helper()
	poll.Eventually(t, within, what, cond)
}

// TestKVStoreUnderConcord: three concord nodes keep the example service
// highly available. A kill -9 of the primary's node (concord and its
// service) hands the service to the freshest secondary with every
// acknowledged write, and the spare becomes a secondary; a failing
// monitor then makes the new primary restart the service, then resign.
func TestKVStoreUnderConcord(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three concord processes")
	}
	work := t.TempDir()
	concord := build(t, work, "concord", "./cmd/concord")
	build(t, work, "kvstore", "./examples/kvstore")
	if err := os.WriteFile(filepath.Join(work, "cluster.secret"), []byte("e2e-secret-of-at-least-16-bytes\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ports := freePorts(t, 16)
	var nodes []*kvNode
	var initial []string
	for i, id := range []string{"a", "b", "c"} {
		n := &kvNode{id: id, api: ports[5*i], kv: ports[5*i+1], client: ports[5*i+2], peer: ports[5*i+3], proxy: ports[5*i+4], kvDir: filepath.Join(work, "kv-"+id)}
		nodes = append(nodes, n)
		initial = append(initial, fmt.Sprintf("%s=http://127.0.0.1:%d", id, n.peer))
	}
	for _, n := range nodes {
		startKVNode(t, work, concord, writeConfig(t, work, n, strings.Join(initial, ",")), n)
	}
	var endpoints []string
	for _, n := range nodes {
		endpoints = append(endpoints, fmt.Sprintf("http://127.0.0.1:%d", n.client))
	}
	st, err := etcd.New(etcd.Config{Endpoints: endpoints})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	roster := func() (core.RosterRecord, error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		kv, err := st.Get(ctx, "concord/roster/kv")
		if err != nil {
			return core.RosterRecord{}, err
		}
		return core.DecodeRoster(kv)
	}
	byID := map[string]*kvNode{}
	for _, n := range nodes {
		byID[n.id] = n
	}
	// primary waits until exactly one live node's service is primary and
	// the roster holds one secondary other than it.
	primary := func(live []*kvNode) (*kvNode, string) {
		t.Helper()
		var p *kvNode
		var sec string
		eventually(t, 60*time.Second, "one primary and one secondary", func() error {
			p, sec = nil, ""
			for _, n := range live {
				h, err := healthOf(n)
				if err == nil && h.Role == "primary" {
					if p != nil {
						return fmt.Errorf("two primaries: %s and %s", p.id, n.id)
					}
					p = n
				}
			}
			if p == nil {
				return errors.New("no primary")
			}
			r, err := roster()
			if err != nil {
				return err
			}
			for _, e := range r.Secondaries {
				if e.Node != p.id && byID[e.Node] != nil && byID[e.Node].alive() {
					sec = e.Node
				}
			}
			if len(r.Secondaries) != 1 || sec == "" {
				return fmt.Errorf("roster %+v: want one live secondary", r.Secondaries)
			}
			return nil
		})
		return p, sec
	}

	first, sec := primary(nodes)
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
	resolver, err := client.New(st, "concord/")
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
	lb := startHAProxy(t, work, nodes, ports[15])
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
	r, _ := roster()
	freshest := r.Secondaries[0]
	if freshest.Node != sec || freshest.AckSeq == 0 {
		t.Fatalf("roster after synchronous writes: %+v", r)
	}

	// kill -9 the primary's concord, and leave its service running: the
	// service's lease, which that concord renewed, runs out, and it stops
	// taking writes before the others elect a new primary. At no moment do
	// two services take writes.
	first.killed = true
	_ = first.cmd.Process.Kill()
	<-first.done
	var live []*kvNode
	for _, n := range nodes {
		if n != first {
			live = append(live, n)
		}
	}
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
	next, sec2 := primary(live)
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
		if p, s := primary(live); p != last || s != next.id {
			return fmt.Errorf("primary %s, secondary %s; want %s and %s", p.id, s, last.id, next.id)
		}
		// A synchronous write succeeds once the secondary takes
		// checkpoints again.
		return put(last, "before", "switchover")
	})
	// Steady traffic through both nodes' proxies runs across the
	// switchover: the primary drains, the proxies hold new connections
	// until the next primary publishes, and no request fails.
	before := map[*kvNode]map[string]uint64{}
	for _, n := range live {
		s, err := proxyStats(n)
		if err != nil {
			t.Fatal(err)
		}
		before[n] = s
	}
	ld := startLoad(live)
	eventually(t, 20*time.Second, "traffic through the proxies", func() error {
		if n := ld.acks(); n < 20 {
			return fmt.Errorf("%d writes acknowledged", n)
		}
		return nil
	})
	sw := exec.Command(concord, "switchover", "kv", "--to", next.id, "--config", last.id+".yaml")
	sw.Dir = work
	out, err := sw.CombinedOutput()
	if err != nil {
		ld.end()
		t.Fatalf("concord switchover kv --to %s: %v\n%s", next.id, err, out)
	}
	if !strings.Contains(string(out), "the primary is now "+next.id) {
		ld.end()
		t.Fatalf("switchover printed %q", out)
	}
	switched := ld.acks()
	eventually(t, 20*time.Second, "traffic after the switchover", func() error {
		if n := ld.acks(); n < switched+20 {
			return fmt.Errorf("%d writes acknowledged since the switchover", n-switched)
		}
		return nil
	})
	ld.end()
	if len(ld.failed) > 0 {
		t.Fatalf("%d of %d requests failed across the switchover: %v", len(ld.failed), ld.started.Load(), ld.failed)
	}
	var held, drained uint64
	for _, n := range live {
		s, err := proxyStats(n)
		if err != nil {
			t.Fatal(err)
		}
		held += s["held"] - before[n]["held"]
		drained += s["drained"] - before[n]["drained"]
		if s["expired"] != before[n]["expired"] || s["refused"] != before[n]["refused"] {
			t.Fatalf("%s's proxy expired or refused connections across the switchover: %v, before %v", n.id, s, before[n])
		}
	}
	if held == 0 {
		t.Fatal("no request was held across the switchover: the traffic did not overlap it")
	}
	t.Logf("switchover under load: %d requests, none failed, %d held, %d connections drained, slowest %v",
		ld.started.Load(), held, drained, ld.slowest.Round(time.Millisecond))
	if p, _ := primary(live); p != next {
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
	for k, v := range ld.acked {
		if got[k] != v {
			t.Fatalf("write %s=%s, acknowledged through a proxy across the switchover, is not on the new primary (%q)", k, v, got[k])
		}
	}
}
