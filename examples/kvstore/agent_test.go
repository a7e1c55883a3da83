package main

import (
	"bytes"
	"encoding/json"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestAgentLifecycle drives two instances through the actions concord
// runs: start, monitor, promote, writes, checkpoint, restore on a second
// instance, the refusals of stale tokens, the fault switch, stop and a
// restart that keeps the state.
func TestAgentLifecycle(t *testing.T) {
	a := newTestNode(t, "n1")
	a.mustAgent(exitOK, "start", nil)
	pid := a.recordPID()
	if pid == 0 {
		t.Fatal("start left no pid file")
	}
	if fi, err := os.Stat(filepath.Join(a.dir, adminTokenFile)); err != nil {
		t.Fatalf("admin token file: %v", err)
	} else if fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin token file has mode %v, want 0600", fi.Mode().Perm())
	}
	a.mustAgent(exitOK, "start", nil) // already running: no second daemon
	if got := a.recordPID(); got != pid {
		t.Fatalf("a second start replaced pid %d by %d", pid, got)
	}
	a.mustAgent(exitOK, "monitor", nil)

	// A spare refuses writes and says so.
	code, body := a.do("PUT", "/kv/x", "1")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "not the primary") {
		t.Fatalf("write on a spare: %d %s, want 503 naming the primary", code, body)
	}

	a.mustAgent(exitOK, "promote", nil, "CONCORD_TOKEN=5", "CONCORD_EPOCH=2", "CONCORD_ROLE=primary")
	a.mustAgent(exitRunningPrimary, "monitor", nil)
	a.mustDo(http.StatusOK, "PUT", "/kv/colour", "blue")
	a.mustDo(http.StatusOK, "PUT", "/kv/dir/name", "x y z")
	a.mustDo(http.StatusOK, "PUT", "/kv/gone", "soon")
	a.mustDo(http.StatusOK, "DELETE", "/kv/gone", "")
	a.mustDo(http.StatusNotFound, "DELETE", "/kv/gone", "")
	if got := a.mustDo(http.StatusOK, "GET", "/kv/dir/name", ""); got != "x y z" {
		t.Fatalf("GET /kv/dir/name = %q, want %q", got, "x y z")
	}
	a.mustDo(http.StatusNotFound, "GET", "/kv/gone", "")
	want := map[string]string{"colour": "blue", "dir/name": "x y z"}
	if h := a.health(); h.Role != rolePrimary || h.Version != 4 || h.Token != 5 || h.Primary != "n1" {
		t.Fatalf("health %+v, want primary n1, version 4, token 5", h)
	}

	// A promotion with a lower token is a deposed primary's.
	res := a.mustAgent(exitGeneric, "promote", nil, "CONCORD_TOKEN=4", "CONCORD_EPOCH=1")
	if !strings.Contains(res.stderr, "token 4") {
		t.Fatalf("refused promote: stderr %q does not name the token", res.stderr)
	}
	a.mustAgent(exitOK, "promote", nil, "CONCORD_TOKEN=5", "CONCORD_EPOCH=2") // a retry is fine

	ckpt := a.mustAgent(exitOK, "checkpoint", nil, "CONCORD_SEQ=1").stdout
	var st state
	if err := json.Unmarshal([]byte(ckpt), &st); err != nil {
		t.Fatalf("checkpoint is not a state: %v: %q", err, ckpt)
	}
	if st.Version != 4 || st.Token != 5 || !maps.Equal(st.Data, want) {
		t.Fatalf("checkpoint %+v, want version 4, token 5, data %v", st, want)
	}

	// A second instance takes the checkpoint.
	b := newTestNode(t, "n2")
	b.mustAgent(exitOK, "start", nil)
	b.mustAgent(exitOK, "restore", strings.NewReader(ckpt), "CONCORD_SEQ=1", "CONCORD_ROLE=secondary", "CONCORD_PRIMARY=n1")
	if got := b.list(); !maps.Equal(got, want) {
		t.Fatalf("restored keys %v, want %v", got, want)
	}
	if h := b.health(); h.Role != roleSpare || h.Version != 4 || h.Token != 5 || h.Primary != "n1" {
		t.Fatalf("restored health %+v, want spare, version 4, token 5, primary n1 (the sender)", h)
	}
	// A refused write names the primary the checkpoint came from.
	if body := b.mustDo(http.StatusServiceUnavailable, "PUT", "/kv/colour", "red"); !strings.Contains(body, "n1") {
		t.Fatalf("the refusal %q does not name the primary n1", body)
	}

	// States of older tokens are refused, and leave the state alone.
	old := `{"version":9,"token":3,"epoch":1,"data":{"colour":"stale"}}`
	res = b.mustAgent(exitGeneric, "restore", strings.NewReader(old))
	if !strings.Contains(res.stderr, "409") || !strings.Contains(res.stderr, "token 3") {
		t.Fatalf("refused restore: stderr %q, want the 409 and the token", res.stderr)
	}
	b.mustAgent(exitGeneric, "restore", strings.NewReader("{not json"))
	if got := b.list(); !maps.Equal(got, want) {
		t.Fatalf("after refused restores keys %v, want %v", got, want)
	}

	// Demoted, the old primary refuses writes and names the new one.
	a.mustAgent(exitOK, "demote", nil, "CONCORD_ROLE=secondary", "CONCORD_PRIMARY=n2")
	a.mustAgent(exitOK, "monitor", nil)
	code, body = a.do("PUT", "/kv/colour", "red")
	var refusal map[string]string
	json.Unmarshal([]byte(body), &refusal)
	if code != http.StatusServiceUnavailable || refusal["primary"] != "n2" || refusal["error"] == "" {
		t.Fatalf("write on a secondary: %d %s, want 503 with primary n2", code, body)
	}
	b.mustAgent(exitOK, "promote", nil, "CONCORD_TOKEN=6", "CONCORD_EPOCH=3")
	b.mustDo(http.StatusOK, "PUT", "/kv/colour", "red")
	// The old primary's checkpoint (token 5) cannot overwrite the new one.
	b.mustAgent(exitGeneric, "restore", strings.NewReader(ckpt))
	if got := b.mustDo(http.StatusOK, "GET", "/kv/colour", ""); got != "red" {
		t.Fatalf("colour on the new primary = %q after a stale restore, want red", got)
	}

	// The fault switch makes monitor fail, and only while it exists.
	fail := filepath.Join(a.dir, failFile)
	if err := os.WriteFile(fail, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	res = a.mustAgent(exitGeneric, "monitor", nil)
	if !strings.Contains(res.stderr, "fault switch") {
		t.Fatalf("failed monitor: stderr %q does not give the cause", res.stderr)
	}
	os.Remove(fail)
	a.mustAgent(exitOK, "monitor", nil)

	// Stop, then nothing runs; stopping again is fine.
	a.mustAgent(exitOK, "stop", nil)
	a.mustAgent(exitNotRunning, "monitor", nil)
	a.mustAgent(exitOK, "stop", nil)
	if alive(pid) {
		t.Fatalf("daemon pid %d still runs after stop", pid)
	}
	if _, err := os.Stat(filepath.Join(a.dir, pidFile)); !os.IsNotExist(err) {
		t.Fatalf("pid file after stop: %v, want it removed", err)
	}
	a.mustAgent(exitGeneric, "checkpoint", nil)

	// A restart keeps the state and the token, but comes back as a spare.
	a.mustAgent(exitOK, "start", nil)
	if got := a.list(); !maps.Equal(got, want) {
		t.Fatalf("keys after a restart %v, want %v", got, want)
	}
	if h := a.health(); h.Role != roleSpare || h.Token != 5 || h.Version != 4 {
		t.Fatalf("health after a restart %+v, want spare, token 5, version 4", h)
	}
	a.mustAgent(exitGeneric, "promote", nil, "CONCORD_TOKEN=4")
}

// TestAgentSync runs a daemon in sync mode against a fake concord API.
func TestAgentSync(t *testing.T) {
	var (
		mu      sync.Mutex
		calls   int
		failing bool
		seen    []int64 // the version the daemon had at each call
	)
	var env []string // the node's, set before the daemon starts
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/services/kv/checkpoint" {
			http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, http.StatusNotFound)
			return
		}
		if r.Header.Get("Authorization") != "Bearer api-secret" {
			http.Error(w, `{"error":"bad token"}`, http.StatusUnauthorized)
			return
		}
		// Take the checkpoint as concord would: through the agent.
		res, err := runAgent(env, "checkpoint", nil)
		var st state
		if err != nil || res.code != 0 || json.Unmarshal([]byte(res.stdout), &st) != nil {
			http.Error(w, "checkpoint failed: "+res.stderr, http.StatusInternalServerError)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		calls++
		seen = append(seen, st.Version)
		if failing {
			http.Error(w, `{"error":"no secondary acknowledged"}`, http.StatusGatewayTimeout)
			return
		}
		w.Write([]byte(`{"seq":` + strconv.Itoa(calls) + `,"acks":1}`))
	}))
	t.Cleanup(api.Close)

	n := newTestNode(t, "n1", "CONCORD_PARAM_SYNC=true", "CONCORD_API="+api.URL, "CONCORD_API_TOKEN=api-secret")
	env = n.env
	n.mustAgent(exitOK, "start", nil)
	n.mustAgent(exitOK, "promote", nil, "CONCORD_TOKEN=1")

	body := n.mustDo(http.StatusOK, "PUT", "/kv/a", "1")
	var ok struct{ Version, Seq int64 }
	if err := json.Unmarshal([]byte(body), &ok); err != nil || ok.Version != 1 || ok.Seq != 1 {
		t.Fatalf("synced write answered %q, want version 1 and seq 1", body)
	}
	mu.Lock()
	if calls != 1 || seen[0] < 1 {
		t.Fatalf("after one write: %d calls, versions checkpointed %v; want 1 call that saw version 1", calls, seen)
	}
	failing = true
	mu.Unlock()

	code, body := n.do("PUT", "/kv/b", "2")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "not replicated") || !strings.Contains(body, "504") {
		t.Fatalf("write while concord fails: %d %s, want 503 'not replicated' with concord's status", code, body)
	}
	if got := n.mustDo(http.StatusOK, "GET", "/kv/b", ""); got != "2" {
		t.Fatalf("the unreplicated write is not applied locally: b = %q", got)
	}
	mu.Lock()
	if calls != 2 {
		t.Fatalf("%d checkpoint calls, want 2", calls)
	}
	mu.Unlock()
}

// TestAgentSyncBadToken: a wrong API token fails writes with 503 and
// the daemon names concord's answer.
func TestAgentSyncBadToken(t *testing.T) {
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer right" {
			http.Error(w, `{"error":"unauthorized"}`, http.StatusUnauthorized)
			return
		}
		w.Write([]byte(`{"seq":1,"acks":1}`))
	}))
	t.Cleanup(api.Close)
	n := newTestNode(t, "n1", "CONCORD_PARAM_SYNC=true", "CONCORD_API="+api.URL, "CONCORD_API_TOKEN=wrong")
	n.mustAgent(exitOK, "start", nil)
	n.mustAgent(exitOK, "promote", nil, "CONCORD_TOKEN=1")
	code, body := n.do("PUT", "/kv/a", "1")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "not replicated") || !strings.Contains(body, "401") {
		t.Fatalf("write with a bad API token: %d %s, want 503 'not replicated' naming the 401", code, body)
	}
}

// TestAgentConfiguration covers the exit codes of bad invocations.
func TestAgentConfiguration(t *testing.T) {
	n := newTestNode(t, "n1")
	res := n.mustAgent(exitUnimplemented, "frobnicate", nil)
	if !strings.Contains(res.stderr, `"frobnicate"`) {
		t.Errorf("unknown action: stderr %q does not name it", res.stderr)
	}
	res = n.mustAgent(exitConfigured, "start", nil, "CONCORD_PARAM_LISTEN=", "CONCORD_PARAM_DIR=")
	if !strings.Contains(res.stderr, "CONCORD_PARAM_LISTEN") || !strings.Contains(res.stderr, "CONCORD_PARAM_DIR") {
		t.Errorf("missing params: stderr %q does not name both", res.stderr)
	}
	res = n.mustAgent(exitConfigured, "monitor", nil, "CONCORD_PARAM_SYNC=perhaps")
	if !strings.Contains(res.stderr, "CONCORD_PARAM_SYNC") {
		t.Errorf("bad sync param: stderr %q does not name it", res.stderr)
	}
	n.mustAgent(exitConfigured, "monitor", nil, "CONCORD_PARAM_LISTEN=no-port")
	for _, bad := range []string{"5", "-1s", "soon", "1us"} {
		res = n.mustAgent(exitConfigured, "monitor", nil, "CONCORD_PARAM_LEASE="+bad)
		if !strings.Contains(res.stderr, "CONCORD_PARAM_LEASE") {
			t.Errorf("bad lease param %q: stderr %q does not name it", bad, res.stderr)
		}
	}
	n.mustAgent(exitArgs, "monitor", nil, "CONCORD_TIMEOUT_MS=soon")

	// Nothing started yet.
	n.mustAgent(exitNotRunning, "monitor", nil)
	n.mustAgent(exitOK, "stop", nil)
	n.mustAgent(exitGeneric, "promote", nil, "CONCORD_TOKEN=1")
	n.mustAgent(exitGeneric, "checkpoint", nil)

	n.mustAgent(exitOK, "start", nil)
	n.mustAgent(exitArgs, "promote", nil) // no CONCORD_TOKEN
	n.mustAgent(exitGeneric, "demote", nil, "CONCORD_ROLE=primary")

	// A second daemon on the same directory refuses to run.
	cmd := exec.Command(kvstoreBin, "serve", "--listen", freeAddr(t), "--dir", n.dir)
	out, err := cmd.CombinedOutput()
	if err == nil || !bytes.Contains(out, []byte("another kvstore serve")) {
		t.Fatalf("second daemon on one directory: %v, output %q; want a failure naming the lock", err, out)
	}
}

// TestAgentStalePIDFile: a pid file naming another process neither
// counts as running nor gets that process signalled.
func TestAgentStalePIDFile(t *testing.T) {
	if _, err := os.Stat("/proc/self/cmdline"); err != nil {
		t.Skip("needs /proc to tell the daemon from other processes")
	}
	n := newTestNode(t, "n1")
	other := exec.Command("sleep", "30")
	if err := other.Start(); err != nil {
		t.Skip("no sleep command:", err)
	}
	t.Cleanup(func() { other.Process.Kill(); other.Wait() })
	if err := os.MkdirAll(n.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(n.dir, pidFile), []byte(strconv.Itoa(other.Process.Pid)), 0o600); err != nil {
		t.Fatal(err)
	}
	n.mustAgent(exitNotRunning, "monitor", nil)
	n.mustAgent(exitOK, "stop", nil)
	if err := other.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("stop signalled a process that is not its daemon: %v", err)
	}
	n.mustAgent(exitOK, "start", nil)
	n.mustAgent(exitOK, "monitor", nil)
}

// TestAgentLease: a primary started with a lease stops taking writes
// once its monitor stops running as the primary, and a monitor run as
// the primary with its token renews the lease.
func TestAgentLease(t *testing.T) {
	const lease = time.Second
	n := newTestNode(t, "n1", "CONCORD_PARAM_LEASE="+lease.String())
	n.mustAgent(exitOK, "start", nil)
	if h := n.health(); h.LeaseMS != lease.Milliseconds() {
		t.Fatalf("daemon started with CONCORD_PARAM_LEASE=%v reports lease_ms %d", lease, h.LeaseMS)
	}
	promoted := time.Now()
	n.mustAgent(exitOK, "promote", nil, "CONCORD_TOKEN=2", "CONCORD_EPOCH=1", "CONCORD_ROLE=primary")
	n.mustDo(http.StatusOK, "PUT", "/kv/a", "1")

	// No monitor runs: the writes stop within the lease and a margin.
	const margin = 2 * time.Second
	var code int
	var body string
	for {
		code, body = n.do("PUT", "/kv/a", "2")
		if code != http.StatusOK {
			break
		}
		if time.Since(promoted) > lease+margin {
			t.Fatalf("writes still accepted %v after the promotion, with a lease of %v", time.Since(promoted), lease)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "primary lease expired") {
		t.Fatalf("write after the lease: %d %s, want 503 'primary lease expired'", code, body)
	}
	if h := n.health(); h.Role != rolePrimaryFenced {
		t.Fatalf("health after the lease: %+v, want role %s", h, rolePrimaryFenced)
	}
	if got := n.mustDo(http.StatusOK, "GET", "/kv/a", ""); got != "2" && got != "1" {
		t.Fatalf("read on a fenced primary: a = %q", got)
	}

	// Only a monitor run as the primary, with a current token, renews.
	res := n.mustAgent(exitGeneric, "monitor", nil, "CONCORD_ROLE=secondary", "CONCORD_TOKEN=2")
	if !strings.Contains(res.stderr, "lease expired") {
		t.Fatalf("monitor of a fenced primary as a secondary: stderr %q, want the expired lease named", res.stderr)
	}
	res = n.mustAgent(exitGeneric, "monitor", nil, "CONCORD_ROLE=primary", "CONCORD_TOKEN=1")
	if !strings.Contains(res.stderr, "409") || !strings.Contains(res.stderr, "token 1") {
		t.Fatalf("monitor with a lower token: stderr %q, want the 409 and the token", res.stderr)
	}
	n.mustAgent(exitArgs, "monitor", nil, "CONCORD_ROLE=primary", "CONCORD_TOKEN=")
	n.mustDo(http.StatusServiceUnavailable, "PUT", "/kv/a", "3")
	n.mustAgent(exitRunningPrimary, "monitor", nil, "CONCORD_ROLE=primary", "CONCORD_TOKEN=2")
	n.mustDo(http.StatusOK, "PUT", "/kv/a", "3")

	// A start with another lease replaces the daemon, so the lease it
	// enforces is the one the monitor means to renew.
	pid := n.recordPID()
	n.mustAgent(exitOK, "start", nil, "CONCORD_PARAM_LEASE=0")
	if got := n.recordPID(); got == pid {
		t.Fatalf("start with another lease kept the daemon (pid %d)", pid)
	}
	if h := n.health(); h.LeaseMS != 0 || h.Role != roleSpare {
		t.Fatalf("daemon restarted without a lease: %+v, want a spare without lease_ms", h)
	}
}
