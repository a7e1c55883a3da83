package main

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
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/concordha/concord/internal/leakcheck"
)

// kvstoreBin is the binary the tests drive as concord would.
var kvstoreBin string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	if err := becomeSubreaper(); err != nil {
		fmt.Fprintln(os.Stderr, "kvstore test: become a child subreaper:", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "kvstore-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "kvstore test:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	kvstoreBin = filepath.Join(dir, "kvstore")
	args := []string{"build", "-o", kvstoreBin}
	if raceEnabled {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, ".")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "kvstore test: go build:", err)
		return 1
	}
	code := m.Run()
	if code == 0 {
		// leakcheck.Main cannot be used: the binary's directory must be
		// removed after the check.
		code = leakcheck.Verify(leakcheck.LingerBound)
	}
	return code
}

// testNode is one kvstore instance driven through the agent.
type testNode struct {
	t      *testing.T
	name   string
	dir    string
	listen string
	base   string
	env    []string
	client *http.Client
	pids   []int
}

// newTestNode prepares an instance with its own data directory and a
// free port, and makes sure its daemons die with the test.
func newTestNode(t *testing.T, name string, env ...string) *testNode {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	listen := freeAddr(t)
	n := &testNode{
		t: t, name: name, dir: dir, listen: listen, base: "http://" + listen,
		env: append([]string{
			"CONCORD_PARAM_LISTEN=" + listen,
			"CONCORD_PARAM_DIR=" + dir,
			"CONCORD_SERVICE=kv",
			"CONCORD_NODE=" + name,
			"CONCORD_TIMEOUT_MS=15000",
		}, env...),
		client: &http.Client{Timeout: 10 * time.Second},
	}
	t.Cleanup(n.cleanup)
	return n
}

// freeAddr returns a loopback address whose port was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// cleanup kills and reaps every daemon the node started and fails the
// test if one of them reported a data race.
func (n *testNode) cleanup() {
	n.client.CloseIdleConnections()
	n.recordPID()
	for _, pid := range n.pids {
		syscall.Kill(pid, syscall.SIGKILL)
		reap(n.t, pid)
	}
	if b, err := os.ReadFile(filepath.Join(n.dir, logFile)); err == nil && bytes.Contains(b, []byte("DATA RACE")) {
		n.t.Errorf("%s: the daemon reported a data race:\n%s", n.name, b)
	}
}

// reap waits, bounded, for an adopted daemon to exit and collects it.
func reap(t *testing.T, pid int) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		var ws syscall.WaitStatus
		got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		if got == pid || errors.Is(err, syscall.ECHILD) {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("daemon pid %d did not exit after SIGKILL", pid)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// recordPID remembers the pid of the pid file, for cleanup.
func (n *testNode) recordPID() int {
	b, err := os.ReadFile(filepath.Join(n.dir, pidFile))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		n.t.Fatalf("%s: pid file %q: %v", n.name, b, err)
	}
	for _, p := range n.pids {
		if p == pid {
			return pid
		}
	}
	n.pids = append(n.pids, pid)
	return pid
}

// agentResult is the outcome of one agent run.
type agentResult struct {
	code   int
	stdout string
	stderr string
}

// agent runs one action with the node's environment plus env, as concord
// would.
func (n *testNode) agent(action string, stdin io.Reader, env ...string) agentResult {
	n.t.Helper()
	res, err := runAgent(append(n.env, env...), action, stdin)
	if err != nil {
		n.t.Fatalf("%s: agent %s: %v; stderr:\n%s", n.name, action, err, res.stderr)
	}
	if action == "start" {
		n.recordPID()
	}
	return res
}

// runAgent runs the agent binary with env added to the test's
// environment; safe to call from any goroutine.
func runAgent(env []string, action string, stdin io.Reader) (agentResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, kvstoreBin, action)
	// The race runtime otherwise waits a second at exit, in every agent
	// run and every daemon stop.
	cmd.Env = append(append(os.Environ(), "GORACE=atexit_sleep_ms=0", "CONCORD_ACTION="+action), env...)
	cmd.Stdin = stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := agentResult{stdout: stdout.String(), stderr: stderr.String()}
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.Exited() {
		res.code, err = exit.ExitCode(), nil
	}
	return res, err
}

// mustAgent runs an action and fails the test unless it exits with want.
func (n *testNode) mustAgent(want int, action string, stdin io.Reader, env ...string) agentResult {
	n.t.Helper()
	res := n.agent(action, stdin, env...)
	if res.code != want {
		n.t.Fatalf("%s: agent %s %v: exit %d, want %d; stderr:\n%s", n.name, action, env, res.code, want, res.stderr)
	}
	for _, line := range strings.Split(strings.TrimSpace(res.stderr), "\n") {
		if line != "" && !strings.HasPrefix(line, "kvstore agent:") {
			n.t.Errorf("%s: agent %s: stderr line %q lacks the prefix 'kvstore agent:'", n.name, action, line)
		}
	}
	return res
}

// do sends one request to the daemon and returns status and body.
func (n *testNode) do(method, path, body string) (int, string) {
	n.t.Helper()
	req, err := http.NewRequest(method, n.base+path, strings.NewReader(body))
	if err != nil {
		n.t.Fatal(err)
	}
	resp, err := n.client.Do(req)
	if err != nil {
		n.t.Fatalf("%s: %s %s: %v", n.name, method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		n.t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// mustDo is do that fails the test unless the status is want.
func (n *testNode) mustDo(want int, method, path, body string) string {
	n.t.Helper()
	code, b := n.do(method, path, body)
	if code != want {
		n.t.Fatalf("%s: %s %s: %d %s, want %d", n.name, method, path, code, b, want)
	}
	return b
}

// list returns all keys and values.
func (n *testNode) list() map[string]string {
	n.t.Helper()
	var m map[string]string
	if err := json.Unmarshal([]byte(n.mustDo(http.StatusOK, "GET", "/kv", "")), &m); err != nil {
		n.t.Fatal(err)
	}
	return m
}

// health returns the daemon's /healthz answer (any status).
func (n *testNode) health() health {
	n.t.Helper()
	_, b := n.do("GET", "/healthz", "")
	var h health
	if err := json.Unmarshal([]byte(b), &h); err != nil {
		n.t.Fatalf("%s: /healthz %q: %v", n.name, b, err)
	}
	return h
}
