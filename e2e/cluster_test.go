package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
	"github.com/concordha/concord/core"
	"github.com/concordha/concord/internal/leakcheck"
	"github.com/concordha/concord/internal/poll"
	"github.com/concordha/concord/internal/syncbuf"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func TestMain(m *testing.M) { leakcheck.Main(m) }

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

// except returns the cluster's nodes other than n, in order.
func (c *cluster) except(n *kvNode) []*kvNode {
	var out []*kvNode
	for _, m := range c.nodes {
		if m != n {
			out = append(out, m)
		}
	}
	return out
}

// spare returns the node that is neither p nor the node called sec.
func (c *cluster) spare(p *kvNode, sec string) *kvNode {
	for _, n := range c.except(p) {
		if n.id != sec {
			return n
		}
	}
	return nil
}

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

// placeEtcdLeader makes n's etcd member etcd's leader (onIt) or moves
// the leadership to another member (!onIt), with etcd's MoveLeader, and
// waits until the members agree.
func (c *cluster) placeEtcdLeader(tb testing.TB, n *kvNode, onIt bool) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ids := map[string]uint64{}
	var leader uint64
	for _, m := range c.nodes {
		st, err := c.st.Client().Status(ctx, etcdURL(m))
		if err != nil {
			tb.Fatalf("etcd status of %s: %v", m.id, err)
		}
		ids[m.id], leader = st.Header.MemberId, st.Leader
	}
	if (leader == ids[n.id]) == onIt {
		return
	}
	target := ids[n.id]
	if !onIt {
		for _, m := range c.nodes {
			if m != n {
				target = ids[m.id]
				break
			}
		}
	}
	var leaderURL string
	for _, m := range c.nodes {
		if ids[m.id] == leader {
			leaderURL = etcdURL(m)
		}
	}
	// MoveLeader must reach the leader itself.
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{leaderURL}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		tb.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.MoveLeader(ctx, target); err != nil {
		tb.Fatalf("moving etcd's leadership: %v", err)
	}
	eventually(tb, 20*time.Second, "etcd's leadership moved", func() error {
		for _, m := range c.nodes {
			st, err := c.st.Client().Status(ctx, etcdURL(m))
			if err != nil {
				return err
			}
			if st.Leader != target {
				return fmt.Errorf("%s sees leader %x, want %x", m.id, st.Leader, target)
			}
		}
		return nil
	})
	// A new leader extends every lease by an election timeout. Wait until
	// n's session has been renewed since, so that the move does not add to
	// what comes next: n's primary check proves its session valid until
	// (send time of its last confirmed renewal) + 90% of the TTL, which
	// passes moved + 90% of the TTL only once a renewal sent after the
	// move was confirmed.
	moved := time.Now()
	eventually(tb, 20*time.Second, "the primary's session renewed under the new leader", func() error {
		asked := time.Now()
		resp, err := httpc.Get(fmt.Sprintf("http://127.0.0.1:%d/v1/services/kv/primary", n.api))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var a struct {
			ValidForMS int64 `json:"valid_for_ms"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&a); err != nil || resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s's primary check: %d, %v", n.id, resp.StatusCode, err)
		}
		if until := asked.Add(time.Duration(a.ValidForMS) * time.Millisecond); !until.After(moved.Add(ttl * 9 / 10)) {
			return fmt.Errorf("proven until %v, not past %v", until, moved.Add(ttl*9/10))
		}
		return nil
	})
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

// switchover runs `concord switchover kv` with via's config and extra
// arguments (such as --to), and fails tb unless it succeeds and reports
// want as the new primary.
func (c *cluster) switchover(tb testing.TB, via *kvNode, want string, extra ...string) {
	tb.Helper()
	args := append([]string{"switchover", "kv"}, extra...)
	args = append(args, "--config", filepath.Base(c.cfgs[via.id]))
	cmd := exec.Command(c.concord, args...)
	cmd.Dir = c.work
	out, err := cmd.CombinedOutput()
	if err != nil {
		tb.Fatalf("concord %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	if !strings.Contains(string(out), "the primary is now "+want) {
		tb.Fatalf("concord %s printed %q; want the primary to be %s", strings.Join(args, " "), out, want)
	}
}

// build compiles a package of this module into dir.
func build(tb testing.TB, dir, name, pkg string) string {
	tb.Helper()
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Dir(filepath.Dir(file))
	out := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}

// freePorts returns n ports that were free a moment ago: the listeners
// that found them are closed before it returns, so a port can in
// principle be taken by someone else before its user binds it.
func freePorts(tb testing.TB, n int) []int {
	tb.Helper()
	var out []int
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().(*net.TCPAddr).Port)
	}
	for _, ln := range lns {
		ln.Close()
	}
	return out
}

// kvNode is one concord process, its ports and the kvstore service it
// runs. cmd, logs and done are those of its current run (see
// startKVNode).
type kvNode struct {
	id                           string
	api, kv, client, peer, proxy int
	cmd                          *exec.Cmd
	logs                         *syncbuf.Buffer
	done                         chan struct{} // closed when cmd has exited
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

// etcdURL is the client URL of n's embedded etcd member.
func etcdURL(n *kvNode) string { return fmt.Sprintf("http://127.0.0.1:%d", n.client) }

// ttl is the session TTL of every node: the bound on detecting a crash.
const ttl = 2 * time.Second

func writeConfig(tb testing.TB, work string, n *kvNode, cluster string) string {
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
		tb.Fatal(err)
	}
	return path
}

// startKVNode runs concord with config cfg in work as node n. At tb's
// cleanup it stops the process (SIGTERM, then SIGKILL after 20s), kills
// the node's kvstore daemon, and logs the node's output if tb failed.
func startKVNode(tb testing.TB, work, concord, cfg string, n *kvNode) {
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
		tb.Fatal(err)
	}
	go func() { _ = n.cmd.Wait(); close(n.done) }()
	tb.Cleanup(func() {
		if n.alive() {
			_ = n.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-n.done:
			case <-time.After(20 * time.Second):
				tb.Errorf("node %s still running 20s after SIGTERM", n.id)
				_ = n.cmd.Process.Kill()
				<-n.done
			}
		}
		killDaemon(n)
		if tb.Failed() {
			tb.Logf("--- log of %s ---\n%s", n.id, n.logs.String())
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

func eventually(tb testing.TB, within time.Duration, what string, cond func() error) {
	tb.Helper()
	poll.Eventually(tb, within, what, cond)
}
