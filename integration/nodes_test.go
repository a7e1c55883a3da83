//go:build integration

package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/concordha/concord/core"
	"github.com/concordha/concord/internal/poll"
	"github.com/concordha/concord/internal/syncbuf"
)

// binDir holds the concord binary, built once by concordBinary; TestMain
// makes and removes it.
var binDir string

var concordBuild struct {
	once sync.Once
	path string
	err  error
}

// concordBinary builds cmd/concord once, for the tests that run real
// nodes.
func concordBinary(t *testing.T) string {
	t.Helper()
	concordBuild.once.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Dir(filepath.Dir(file))
		out := filepath.Join(binDir, "concord")
		cmd := exec.Command("go", "build", "-o", out, "./cmd/concord")
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			concordBuild.err = fmt.Errorf("go build ./cmd/concord: %v\n%s", err, b)
			return
		}
		concordBuild.path = out
	})
	if concordBuild.err != nil {
		t.Fatal(concordBuild.err)
	}
	return concordBuild.path
}

// syncBuffer collects a process's output while the test reads it.
type syncBuffer = syncbuf.Buffer

// node is a `concord run` child process.
type node struct {
	id   string
	cmd  *exec.Cmd
	logs *syncBuffer
	done chan struct{} // closed when the process has exited
	err  error         // Wait's result, set before done closes
	// killed says that the test killed the process, which so did not
	// exit on its own.
	killed atomic.Bool
}

// serviceDecl is a service a node provides, with its priority there.
type serviceDecl struct {
	name     string
	priority int
}

// nodeTiming is what every test node uses besides its store settings:
// short enough that a failover takes a few seconds.
type nodeTiming struct {
	sessionTTL, opTimeout, electionTimeout time.Duration
}

// nodeConfig is a node's YAML config: storeYAML holds the lines of the
// store section that name the store (type, endpoints, ...), indented by
// two spaces.
func nodeConfig(id, storeYAML string, tm nodeTiming, services []serviceDecl) string {
	var b strings.Builder
	fmt.Fprintf(&b, "node:\n  id: %s\nstore:\n%s", id, storeYAML)
	fmt.Fprintf(&b, "  session_ttl: %v\n  op_timeout: %v\n  dial_timeout: 2s\n  retry_min: 20ms\n  retry_max: 300ms\n  election_timeout: %v\n",
		tm.sessionTTL, tm.opTimeout, tm.electionTimeout)
	b.WriteString("services:\n")
	for _, s := range services {
		fmt.Fprintf(&b, "  - name: %s\n    priority: %d\n", s.name, s.priority)
	}
	b.WriteString("log:\n  level: info\n  format: json\n")
	return b.String()
}

// startNode runs `concord run` with config body; t's cleanup stops it
// with SIGTERM (SIGKILL if it does not end) and prints its log if t
// failed.
func startNode(t *testing.T, id, body string) *node {
	t.Helper()
	bin := concordBinary(t)
	path := filepath.Join(t.TempDir(), id+".yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	n := &node{id: id, logs: &syncBuffer{}, done: make(chan struct{})}
	n.cmd = exec.Command(bin, "run", "--config", path)
	n.cmd.Stdout, n.cmd.Stderr = n.logs, n.logs
	n.cmd.Env = childEnv()
	n.cmd.SysProcAttr = nodeProcAttr()
	if err := n.cmd.Start(); err != nil {
		t.Fatalf("start node %s: %v", id, err)
	}
	go func() {
		n.err = n.cmd.Wait()
		close(n.done)
	}()
	t.Cleanup(func() {
		switch {
		case n.Alive():
			_ = n.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-n.done:
				if n.err != nil {
					t.Errorf("node %s did not leave cleanly on SIGTERM: %v", id, n.err)
				}
			case <-time.After(15 * time.Second):
				t.Errorf("node %s still running 15s after SIGTERM; killing it", id)
				_ = n.cmd.Process.Kill()
				<-n.done
			}
		case !n.killed.Load():
			t.Errorf("node %s exited on its own: %v", id, n.err)
		}
		if t.Failed() {
			t.Logf("--- log of node %s (%v) ---\n%s", id, n.err, n.logs)
		}
	})
	return n
}

// childEnv is this process's environment without CONCORD_* variables,
// which would override the nodes' config files.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CONCORD_") {
			env = append(env, kv)
		}
	}
	return env
}

// Alive tells whether the process still runs.
func (n *node) Alive() bool {
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// Kill sends SIGKILL and waits until the process is gone.
func (n *node) Kill(t *testing.T) {
	t.Helper()
	n.killed.Store(true)
	if err := n.cmd.Process.Kill(); err != nil {
		t.Fatalf("kill node %s: %v", n.id, err)
	}
	select {
	case <-n.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("node %s still running 10s after SIGKILL", n.id)
	}
}

// logLine is one JSON log record of a node.
type logLine struct {
	Msg     string `json:"msg"`
	Service string `json:"service"`
	Role    string `json:"role"`
	Primary string `json:"primary"`
	Token   int64  `json:"token"`
	Session string `json:"session"`
}

// lines returns the node's JSON log records so far.
func (n *node) lines() []logLine {
	var out []logLine
	sc := bufio.NewScanner(strings.NewReader(n.logs.String()))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		var l logLine
		if json.Unmarshal(sc.Bytes(), &l) == nil {
			out = append(out, l)
		}
	}
	return out
}

// role returns the node's latest "role" record of svc, as the node
// itself reports it; ok is false if there is none yet.
func (n *node) role(svc string) (l logLine, ok bool) {
	for _, x := range n.lines() {
		if x.Msg == "role" && x.Service == svc {
			l, ok = x, true
		}
	}
	return l, ok
}

// count counts the node's log records with message msg (and service
// svc, unless "").
func (n *node) count(msg, svc string) int {
	c := 0
	for _, x := range n.lines() {
		if x.Msg == msg && (svc == "" || x.Service == svc) {
			c++
		}
	}
	return c
}

// observer reads a cluster's records through a store client of its own.
type observer struct {
	st   core.Store
	keys core.Keys
}

func newObserver(st core.Store) *observer {
	keys, err := core.NewKeys("concord/")
	if err != nil {
		panic(err)
	}
	return &observer{st: st, keys: keys}
}

// primary is a service's primary record with its fencing token.
type primary struct {
	core.PrimaryRecord
	Token int64 // the record's store revision
}

func (p primary) String() string {
	return fmt.Sprintf("%q (session %s, epoch %d, token %d)", p.Node, p.Session, p.Epoch, p.Token)
}

// opCtx bounds one observation.
func opCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 2*time.Second)
}

// primary reads svc's primary record; the zero value if there is none.
func (o *observer) primary(svc string) (primary, error) {
	ctx, cancel := opCtx()
	defer cancel()
	kv, err := o.st.Get(ctx, o.keys.Primary(svc))
	if errors.Is(err, core.ErrNotFound) {
		return primary{}, nil
	}
	if err != nil {
		return primary{}, err
	}
	rec, err := core.DecodePrimary(kv)
	return primary{PrimaryRecord: rec, Token: kv.Revision}, err
}

// members reads the member records, by node.
func (o *observer) members() (map[string]core.MemberRecord, int64, error) {
	ctx, cancel := opCtx()
	defer cancel()
	snap, err := o.st.List(ctx, o.keys.Members())
	if err != nil {
		return nil, 0, err
	}
	out := map[string]core.MemberRecord{}
	for _, kv := range snap.KVs {
		m, err := core.DecodeMember(kv)
		if err != nil {
			return nil, 0, err
		}
		out[m.Node] = m
	}
	return out, snap.Revision, nil
}

// candidates reads svc's candidate variables, by owner.
func (o *observer) candidates(svc string) (map[string]core.CandidateRecord, error) {
	ctx, cancel := opCtx()
	defer cancel()
	snap, err := o.st.List(ctx, o.keys.Candidates(svc))
	if err != nil {
		return nil, err
	}
	out := map[string]core.CandidateRecord{}
	for _, kv := range snap.KVs {
		c, err := core.DecodeCandidate(kv)
		if err != nil {
			return nil, err
		}
		out[o.keys.NameIn(o.keys.Candidates(svc), kv.Key)] = c
	}
	return out, nil
}

// watchGone starts watching the member records; the function it returns
// waits until node id's record is gone, failing t after within. Watching
// (rather than polling) sees the deletion as soon as the nodes do.
func (o *observer) watchGone(t *testing.T, id string) func(within time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch, err := o.st.Watch(ctx, o.keys.Members())
	if err != nil {
		t.Fatalf("watch the members: %v", err)
	}
	key := o.keys.Member(id)
	return func(within time.Duration) {
		t.Helper()
		defer cancel()
		timer := time.NewTimer(within)
		defer timer.Stop()
		for {
			select {
			case snap, ok := <-ch:
				if !ok || snap.Err != nil {
					t.Fatalf("the watch of the members ended: %v", snap.Err)
				}
				if !slices.ContainsFunc(snap.KVs, func(kv core.KV) bool { return kv.Key == key }) {
					return
				}
			case <-timer.C:
				t.Fatalf("%s's member record is still there after %v", id, within)
			}
		}
	}
}

// agreed checks, once, that the cluster is calm with exactly the nodes of
// live as members and for each service in want the node want names as
// primary ("" for any of live):
//   - the primary record names that node with its current session;
//   - every live provider's candidate variable names it (agreement);
//   - that node reports itself primary with the record's token, and
//     every other live node reports that node as primary and itself not.
//
// It returns the primaries.
func (o *observer) agreed(live []*node, want map[string]string) (map[string]primary, error) {
	out := map[string]primary{}
	for svc := range want {
		p, err := o.primary(svc)
		if err != nil {
			return nil, err
		}
		out[svc] = p
	}
	members, _, err := o.members()
	if err != nil {
		return nil, err
	}
	if len(members) != len(live) {
		return nil, fmt.Errorf("the members are %v, want %v", keysOf(members), nodeIDs(live))
	}
	for _, n := range live {
		if _, ok := members[n.id]; !ok {
			return nil, fmt.Errorf("node %s is not a member (members: %v)", n.id, keysOf(members))
		}
		if !n.Alive() {
			return nil, fmt.Errorf("node %s exited: %v", n.id, n.err)
		}
	}
	for svc, w := range want {
		p := out[svc]
		if p.Node == "" {
			return nil, fmt.Errorf("%s has no primary: %v", svc, p)
		}
		if w != "" && p.Node != w {
			return nil, fmt.Errorf("the primary of %s is %v, want %q", svc, p, w)
		}
		m, ok := members[p.Node]
		if !ok || m.Session != p.Session {
			return nil, fmt.Errorf("the primary of %s, %v, is not a live member (its member record: %+v)", svc, p, m)
		}
		cands, err := o.candidates(svc)
		if err != nil {
			return nil, err
		}
		for _, n := range live {
			if c := cands[n.id]; c.Node != p.Node {
				return nil, fmt.Errorf("node %s's candidate variable of %s names %q (round %v), not the primary %q", n.id, svc, c.Node, c.Round, p.Node)
			}
			r, ok := n.role(svc)
			switch {
			case !ok:
				return nil, fmt.Errorf("node %s has reported no role for %s yet", n.id, svc)
			case r.Primary != p.Node || r.Token != p.Token:
				return nil, fmt.Errorf("node %s reports %q as primary of %s with token %d; the store says %v", n.id, r.Primary, svc, r.Token, p)
			case (r.Role == "primary") != (n.id == p.Node):
				return nil, fmt.Errorf("node %s reports its role in %s as %s while the primary is %v", n.id, svc, r.Role, p)
			}
		}
	}
	return out, nil
}

// waitAgreed polls agreed until it holds, failing t after within.
func (o *observer) waitAgreed(t *testing.T, within time.Duration, live []*node, want map[string]string) map[string]primary {
	t.Helper()
	var got map[string]primary
	eventually(t, within, fmt.Sprintf("agreement among %v on the primaries %v", nodeIDs(live), want), func() error {
		var err error
		got, err = o.agreed(live, want)
		return err
	})
	return got
}

// eventually polls cond every 50ms until it returns nil, failing t after
// within. (poll.Eventually polls every 10ms, which here would load the
// 2-core machines the tests run on with store reads.)
func eventually(t *testing.T, within time.Duration, what string, cond func() error) {
	t.Helper()
	poll.Every(t, 50*time.Millisecond, within, what, cond)
}

// requireSteady checks that the primaries stay exactly got for d: no
// second election follows the one that settled.
func (o *observer) requireSteady(t *testing.T, d time.Duration, got map[string]primary) {
	t.Helper()
	end := time.Now().Add(d)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(end) {
		for svc, want := range got {
			p, err := o.primary(svc)
			if err != nil {
				t.Fatalf("read the primary of %s: %v", svc, err)
			}
			if p != want {
				t.Fatalf("the primary of %s changed from %v to %v on a calm cluster", svc, want, p)
			}
		}
		<-tick.C
	}
}

// requireNewer checks that every service's primary was elected anew:
// its fencing token and the epoch it was elected in both grew.
func requireNewer(t *testing.T, before, after map[string]primary) {
	t.Helper()
	for svc, a := range after {
		b := before[svc]
		if a.Token <= b.Token {
			t.Errorf("%s: the fencing token went from %d (%s) to %d (%s): it must strictly increase", svc, b.Token, b.Node, a.Token, a.Node)
		}
		if a.Epoch <= b.Epoch {
			t.Errorf("%s: the primary %s was elected in epoch %d, not after its predecessor %s's epoch %d", svc, a.Node, a.Epoch, b.Node, b.Epoch)
		}
	}
}

func keysOf[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func nodeIDs(ns []*node) []string {
	var out []string
	for _, n := range ns {
		out = append(out, n.id)
	}
	return out
}
