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
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Exit codes, as OCF resource agents use them.
const (
	exitOK             = 0 // OCF_SUCCESS
	exitGeneric        = 1 // OCF_ERR_GENERIC
	exitArgs           = 2 // OCF_ERR_ARGS
	exitUnimplemented  = 3 // OCF_ERR_UNIMPLEMENTED
	exitConfigured     = 6 // OCF_ERR_CONFIGURED
	exitNotRunning     = 7 // OCF_NOT_RUNNING
	exitRunningPrimary = 8 // OCF_RUNNING_MASTER
)

// Files the agent keeps in the data directory.
const (
	pidFile = "pid"
	logFile = "kvstore.log"
)

// defaultTimeout bounds an action when concord does not say
// (CONCORD_TIMEOUT_MS unset).
const defaultTimeout = 20 * time.Second

// forwardedEnv are the variables a daemon keeps from the start action's
// environment; it drops the other CONCORD_ and OCF_ ones, which describe
// one action and would be stale for the daemon.
var forwardedEnv = []string{"CONCORD_API", "CONCORD_API_TOKEN", "CONCORD_SERVICE", "CONCORD_NODE", "CONCORD_PRIMARY"}

// agent runs one action against the daemon of one data directory.
type agent struct {
	action string
	env    []string
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer

	listen string        // CONCORD_PARAM_LISTEN, as the daemon listens
	base   string        // the daemon's URL as the agent reaches it
	dir    string        // CONCORD_PARAM_DIR, absolute
	sync   bool          // CONCORD_PARAM_SYNC
	lease  time.Duration // CONCORD_PARAM_LEASE; 0 is off

	timeout time.Duration
	client  *http.Client
}

// actions maps each action name onto its implementation.
var actions = map[string]func(*agent, context.Context) int{
	"start":      (*agent).start,
	"stop":       (*agent).stop,
	"promote":    (*agent).promote,
	"demote":     (*agent).demote,
	"monitor":    (*agent).monitor,
	"checkpoint": (*agent).checkpoint,
	"restore":    (*agent).restore,
}

// agentMain runs one action of the resource agent and returns its exit
// code. env is the process environment ("K=V" entries).
func agentMain(action string, env []string, stdin io.Reader, stdout, stderr io.Writer) int {
	run, ok := actions[action]
	if !ok {
		names := make([]string, 0, len(actions))
		for n := range actions {
			names = append(names, n)
		}
		slices.Sort(names)
		fmt.Fprintf(stderr, "kvstore agent: unknown action %q: want serve or one of %s\n", action, strings.Join(names, ", "))
		return exitUnimplemented
	}
	a := &agent{action: action, env: env, stdin: stdin, stdout: stdout, stderr: stderr, client: &http.Client{}}
	if code := a.configure(); code != exitOK {
		return code
	}
	// Leave concord a margin to read the exit code before its own
	// timeout kills the agent.
	budget := a.timeout - min(a.timeout/5, 2*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	return run(a, ctx)
}

// getenv looks a variable up in the agent's environment.
func (a *agent) getenv(name string) string {
	for i := len(a.env) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(a.env[i], name+"="); ok {
			return v
		}
	}
	return ""
}

// configure reads the parameters; it returns exitConfigured naming the
// first missing or bad one.
func (a *agent) configure() int {
	a.listen = a.getenv("CONCORD_PARAM_LISTEN")
	dir := a.getenv("CONCORD_PARAM_DIR")
	var missing []string
	if a.listen == "" {
		missing = append(missing, "CONCORD_PARAM_LISTEN (the daemon's host:port; param listen)")
	}
	if dir == "" {
		missing = append(missing, "CONCORD_PARAM_DIR (the data directory; param dir)")
	}
	if len(missing) > 0 {
		fmt.Fprintf(a.stderr, "kvstore agent: %s: not configured: set %s\n", a.action, strings.Join(missing, " and "))
		return exitConfigured
	}
	host, port, err := net.SplitHostPort(a.listen)
	if err != nil {
		fmt.Fprintf(a.stderr, "kvstore agent: %s: CONCORD_PARAM_LISTEN=%q: %v: want host:port\n", a.action, a.listen, err)
		return exitConfigured
	}
	// A daemon listening on every address is reached on loopback, which
	// is also the only place its admin API answers.
	if ip, err := netip.ParseAddr(host); host == "" || (err == nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
		if err == nil && ip.Is6() {
			host = "::1"
		}
	}
	a.base = "http://" + net.JoinHostPort(host, port)
	if a.dir, err = filepath.Abs(dir); err != nil {
		fmt.Fprintf(a.stderr, "kvstore agent: %s: CONCORD_PARAM_DIR=%q: %v\n", a.action, dir, err)
		return exitConfigured
	}
	if v := a.getenv("CONCORD_PARAM_SYNC"); v != "" {
		if a.sync, err = strconv.ParseBool(v); err != nil {
			fmt.Fprintf(a.stderr, "kvstore agent: %s: CONCORD_PARAM_SYNC=%q: want true or false\n", a.action, v)
			return exitConfigured
		}
	}
	if v := a.getenv("CONCORD_PARAM_LEASE"); v != "" {
		d, err := time.ParseDuration(v)
		if err == nil {
			err = checkLease(d)
		}
		if err != nil {
			fmt.Fprintf(a.stderr, "kvstore agent: %s: CONCORD_PARAM_LEASE=%q: %v: want a duration such as 5s, or 0 for off (param lease)\n", a.action, v, err)
			return exitConfigured
		}
		a.lease = d
	}
	a.timeout = defaultTimeout
	if v := a.getenv("CONCORD_TIMEOUT_MS"); v != "" {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ms <= 0 {
			fmt.Fprintf(a.stderr, "kvstore agent: %s: CONCORD_TIMEOUT_MS=%q: want a positive number of milliseconds\n", a.action, v)
			return exitArgs
		}
		a.timeout = time.Duration(ms) * time.Millisecond
	}
	return exitOK
}

// failf reports a failure on stderr and returns exitGeneric.
func (a *agent) failf(format string, args ...any) int {
	a.notef(format, args...)
	return exitGeneric
}

// notef writes one message on stderr.
func (a *agent) notef(format string, args ...any) {
	fmt.Fprintf(a.stderr, "kvstore agent: %s: %s\n", a.action, fmt.Sprintf(format, args...))
}

// start launches the daemon as a spare, unless it already runs healthy
// with the lease the parameter asks for.
func (a *agent) start(ctx context.Context) int {
	if pid := a.runningPID(); pid != 0 {
		h, err := a.health(ctx)
		if err == nil && h.PID == pid && h.LeaseMS == a.lease.Milliseconds() {
			return exitOK
		}
		if err == nil && h.PID == pid {
			// A lease the daemon does not enforce, or one the monitor
			// no longer means to renew, must not outlive a config change.
			a.notef("kvstore serve (pid %d) runs with a lease of %dms, but CONCORD_PARAM_LEASE asks for %dms: restarting it", pid, h.LeaseMS, a.lease.Milliseconds())
		} else {
			a.notef("kvstore serve (pid %d) runs but is not healthy (%v): restarting it", pid, err)
		}
		if !a.terminate(ctx, pid) {
			return a.failf("kvstore serve (pid %d) did not stop; kill it by hand", pid)
		}
	}
	if err := os.MkdirAll(a.dir, 0o700); err != nil {
		return a.failf("data directory (CONCORD_PARAM_DIR): %v", err)
	}
	token, err := newToken()
	if err != nil {
		return a.failf("admin token: %v", err)
	}
	err = writeFileAtomic(filepath.Join(a.dir, adminTokenFile), 0o600, func(w io.Writer) error {
		_, err := io.WriteString(w, token+"\n")
		return err
	})
	if err != nil {
		return a.failf("admin token: %v", err)
	}
	exe, err := os.Executable()
	if err != nil {
		return a.failf("find the kvstore executable: %v", err)
	}
	logPath := filepath.Join(a.dir, logFile)
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return a.failf("daemon log: %v", err)
	}
	args := []string{"serve", "--listen", a.listen, "--dir", a.dir}
	if a.sync {
		args = append(args, "--sync")
	}
	if a.lease > 0 {
		args = append(args, "--lease", a.lease.String())
	}
	cmd := exec.Command(exe, args...)
	cmd.Dir = a.dir
	cmd.Env = a.daemonEnv()
	// Stdin stays nil (/dev/null); the log file, not a pipe, takes the
	// output, so concord's pipes close when the agent exits. Its own
	// session keeps the daemon out of the agent's process group, which
	// concord kills when an action times out.
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	logf.Close()
	if err != nil {
		return a.failf("launch %s: %v", exe, err)
	}
	pid := cmd.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	if err := a.writePID(pid); err != nil {
		cmd.Process.Kill()
		<-exited
		return a.failf("pid file: %v", err)
	}

	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		h, err := a.health(ctx)
		if err == nil && h.PID == pid {
			return exitOK
		}
		if err == nil {
			err = fmt.Errorf("pid %d answers on %s, not the daemon just started (pid %d)", h.PID, a.listen, pid)
		}
		last = err
		select {
		case err := <-exited:
			os.Remove(filepath.Join(a.dir, pidFile))
			return a.failf("kvstore serve exited while starting (%v); the end of %s:\n%s", err, logPath, logTail(logPath))
		case <-ctx.Done():
			cmd.Process.Kill()
			<-exited
			os.Remove(filepath.Join(a.dir, pidFile))
			return a.failf("kvstore serve did not become healthy within the start timeout %v (last: %v); killed it; see %s", a.timeout, last, logPath)
		case <-tick.C:
		}
	}
}

// daemonEnv is the environment of a daemon: the agent's, without the
// per-action variables, plus the forwarded ones.
func (a *agent) daemonEnv() []string {
	var env []string
	for _, kv := range a.env {
		if !strings.HasPrefix(kv, "CONCORD_") && !strings.HasPrefix(kv, "OCF_") {
			env = append(env, kv)
		}
	}
	for _, name := range forwardedEnv {
		if v := a.getenv(name); v != "" {
			env = append(env, name+"="+v)
		}
	}
	return env
}

// stop stops the daemon: SIGTERM, then SIGKILL if it outlives most of
// the stop timeout.
func (a *agent) stop(ctx context.Context) int {
	pid := a.runningPID()
	if pid != 0 && !a.terminate(ctx, pid) {
		return a.failf("kvstore serve (pid %d) survived SIGKILL; the pid file stays", pid)
	}
	if err := os.Remove(filepath.Join(a.dir, pidFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return a.failf("pid file: %v", err)
	}
	return exitOK
}

// terminate stops pid and reports whether it is gone.
func (a *agent) terminate(ctx context.Context, pid int) bool {
	deadline, _ := ctx.Deadline()
	grace := min(time.Until(deadline)/4, time.Second)
	syscall.Kill(pid, syscall.SIGTERM)
	if waitGone(pid, time.Until(deadline)-grace) {
		return true
	}
	a.notef("kvstore serve (pid %d) ignored SIGTERM: sending SIGKILL", pid)
	syscall.Kill(pid, syscall.SIGKILL)
	return waitGone(pid, max(time.Until(deadline), 100*time.Millisecond))
}

// waitGone polls until pid is gone or d has passed.
func waitGone(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		if !alive(pid) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// monitor reports 7 if the daemon is not running, 0 (8 as the primary)
// if /healthz answers 200 from it, and 1 otherwise. When concord runs it
// as the primary (CONCORD_ROLE=primary) on a daemon that is the primary,
// it first renews the daemon's primary lease with CONCORD_TOKEN: these
// runs, every monitor_interval, are what keeps the lease alive, and they
// stop when concord dies.
func (a *agent) monitor(ctx context.Context) int {
	pid := a.runningPID()
	if pid == 0 {
		return exitNotRunning
	}
	h, err := a.health(ctx)
	if err != nil {
		return a.failf("kvstore serve (pid %d) runs but is unhealthy: %v", pid, err)
	}
	if h.PID != pid {
		return a.failf("pid %d answers on %s, not the daemon of %s (pid %d)", h.PID, a.listen, a.dir, pid)
	}
	// A daemon that is not the primary holds no lease. It is left alone
	// as before: concord may run this monitor just as it demotes the
	// daemon, and the event that follows brings the two back in line.
	if a.getenv("CONCORD_ROLE") == rolePrimary && (h.Role == rolePrimary || h.Role == rolePrimaryFenced) {
		if h, err = a.renew(ctx); err != nil {
			if errors.Is(err, errBadToken) {
				a.notef("%v", err)
				return exitArgs
			}
			return a.failf("renew the primary lease: %v", err)
		}
	}
	if h.Role == rolePrimaryFenced {
		return a.failf("kvstore serve (pid %d) is a primary whose lease expired, and it refuses writes", pid)
	}
	if h.Role == rolePrimary {
		return exitRunningPrimary
	}
	return exitOK
}

// errBadToken: CONCORD_TOKEN is missing or not an integer.
var errBadToken = errors.New("want the fencing token, an integer")

// token reads CONCORD_TOKEN.
func (a *agent) token() (int64, error) {
	v := a.getenv("CONCORD_TOKEN")
	t, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("CONCORD_TOKEN=%q: %w", v, errBadToken)
	}
	return t, nil
}

// renew renews the primary lease with CONCORD_TOKEN and returns the
// daemon's health after it.
func (a *agent) renew(ctx context.Context) (health, error) {
	token, err := a.token()
	if err != nil {
		return health{}, err
	}
	body, _ := json.Marshal(renewRequest{Token: token})
	resp, err := a.admin(ctx, http.MethodPost, "/admin/renew", bytes.NewReader(body))
	if err != nil {
		return health{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return health{}, fmt.Errorf("POST /admin/renew: %s: %s", resp.Status, errorOf(resp.Body))
	}
	var h health
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&h); err != nil {
		return health{}, fmt.Errorf("POST /admin/renew: %s: %w", resp.Status, err)
	}
	return h, nil
}

// promote makes the daemon the primary with concord's fencing token.
func (a *agent) promote(ctx context.Context) int {
	token, err := a.token()
	if err != nil {
		a.notef("%v", err)
		return exitArgs
	}
	var epoch int64
	if v := a.getenv("CONCORD_EPOCH"); v != "" {
		if epoch, err = strconv.ParseInt(v, 10, 64); err != nil {
			a.notef("CONCORD_EPOCH=%q: want an integer", v)
			return exitArgs
		}
	}
	body, _ := json.Marshal(promoteRequest{Token: token, Epoch: epoch})
	return a.adminCall(ctx, http.MethodPost, "/admin/promote", bytes.NewReader(body))
}

// demote makes the daemon read-only in the role concord gives (a role
// of none or none given means spare).
func (a *agent) demote(ctx context.Context) int {
	role := a.getenv("CONCORD_ROLE")
	if role == "" || role == "none" {
		role = roleSpare
	}
	body, _ := json.Marshal(demoteRequest{Role: role, Primary: a.getenv("CONCORD_PRIMARY")})
	return a.adminCall(ctx, http.MethodPost, "/admin/demote", bytes.NewReader(body))
}

// checkpoint streams the daemon's state to stdout.
func (a *agent) checkpoint(ctx context.Context) int {
	resp, err := a.admin(ctx, http.MethodGet, "/admin/state", nil)
	if err != nil {
		return a.failf("%v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return a.failf("GET /admin/state: %s: %s", resp.Status, errorOf(resp.Body))
	}
	if _, err := io.Copy(a.stdout, resp.Body); err != nil {
		return a.failf("stream the state: %v", err)
	}
	return exitOK
}

// restore streams a state from stdin into the daemon, and tells it which
// node is the primary that sent it (CONCORD_PRIMARY), so that the daemon
// can name it to clients whose writes it refuses.
func (a *agent) restore(ctx context.Context) int {
	path := "/admin/state"
	if p := a.getenv("CONCORD_PRIMARY"); p != "" {
		path += "?primary=" + url.QueryEscape(p)
	}
	return a.adminCall(ctx, http.MethodPut, path, io.NopCloser(a.stdin))
}

// adminCall sends one admin request and maps its status to 0 or 1.
func (a *agent) adminCall(ctx context.Context, method, path string, body io.Reader) int {
	resp, err := a.admin(ctx, method, path, body)
	if err != nil {
		return a.failf("%v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return a.failf("%s %s: %s: %s", method, path, resp.Status, errorOf(resp.Body))
	}
	return exitOK
}

// admin sends a request to the daemon's admin API with the token of the
// data directory.
func (a *agent) admin(ctx context.Context, method, path string, body io.Reader) (*http.Response, error) {
	tok, err := os.ReadFile(filepath.Join(a.dir, adminTokenFile))
	if err != nil {
		return nil, fmt.Errorf("admin token: %w (is the daemon started? run the start action)", err)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	return resp, nil
}

// health asks the daemon's /healthz, each try bounded to a second; a
// status other than 200 is an error.
func (a *agent) health(ctx context.Context) (health, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.base+"/healthz", nil)
	if err != nil {
		return health{}, err
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return health{}, err
	}
	defer resp.Body.Close()
	var h health
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&h); err != nil {
		return health{}, fmt.Errorf("/healthz: %s: %w", resp.Status, err)
	}
	if resp.StatusCode != http.StatusOK {
		return h, fmt.Errorf("/healthz: %s: %s", resp.Status, h.Error)
	}
	return h, nil
}

// runningPID returns the pid of the pid file if that process runs and is
// this directory's daemon; else 0.
func (a *agent) runningPID() int {
	b, err := os.ReadFile(filepath.Join(a.dir, pidFile))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 || !alive(pid) || !a.isDaemon(pid) {
		return 0
	}
	return pid
}

// isDaemon tells whether pid runs `kvstore serve --dir DIR` for this
// directory, so a pid file outliving its daemon never gets another
// process signalled. Without /proc (not Linux) it trusts the pid file.
func (a *agent) isDaemon(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		_, self := os.Stat("/proc/self/cmdline")
		return self != nil
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	i := slices.Index(args, "--dir")
	return slices.Contains(args, "serve") && i >= 0 && i+1 < len(args) && args[i+1] == a.dir
}

func (a *agent) writePID(pid int) error {
	return writeFileAtomic(filepath.Join(a.dir, pidFile), 0o600, func(w io.Writer) error {
		_, err := fmt.Fprintln(w, pid)
		return err
	})
}

// alive tells whether pid runs: it exists and is not a zombie waiting
// for a parent that does not reap it.
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	// The state follows the command name, which is in parentheses and
	// may itself hold any character.
	if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) {
		return b[i+2] != 'Z' && b[i+2] != 'X'
	}
	return true
}

// errorOf extracts the error message of an error response.
func errorOf(r io.Reader) string {
	b, _ := io.ReadAll(io.LimitReader(r, 8<<10))
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(b, &e) == nil && e.Error != "" {
		return e.Error
	}
	return snippet(b)
}

// logTail returns the last lines of the daemon's log.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > 2048 {
		b = b[len(b)-2048:]
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 10 {
		lines = lines[len(lines)-10:]
	}
	return strings.Join(lines, "\n")
}
