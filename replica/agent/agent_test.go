//go:build linux

package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/concordha/concord/core"
	"github.com/concordha/concord/replica"
)

// dumpAgent writes its argc, argv, working directory and environment to
// the file named by its "out" parameter.
const dumpAgent = `out="$OCF_RESKEY_out"
{
	printf 'argc=%s\n' "$#"
	for a in "$@"; do printf 'arg=%s\n' "$a"; done
	printf 'pwd=%s\n' "$(pwd -P)"
	env
} > "$out"`

// readDump parses what dumpAgent wrote: args in order, and the rest by
// key.
func readDump(t *testing.T, path string) (args []string, kv map[string]string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the agent wrote nothing: %v", err)
	}
	kv = map[string]string{}
	for _, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		k, v, _ := strings.Cut(line, "=")
		if k == "arg" {
			args = append(args, v)
			continue
		}
		kv[k] = v
	}
	return args, kv
}

func TestEnvironmentAndArgv(t *testing.T) {
	t.Setenv("CONCORD_TEST_PARENT", "from-parent")
	t.Setenv("CONCORD_TEST_OVERRIDE", "from-parent")
	dir := t.TempDir()
	wantDir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "dump")
	a := mustNew(t, Config{
		Command: writeAgent(t, dumpAgent),
		Args:    []string{"--flag", "two words"},
		Dir:     dir,
		Params:  map[string]string{"out": out, "db_name": "x y", "Port": "5432"},
		Env: []string{
			"CONCORD_API=http://127.0.0.1:1", "CONCORD_API_TOKEN=tok",
			"CONCORD_TEST_OVERRIDE=from-env", "CONCORD_ROLE=from-env",
		},
		Timeouts: Timeouts{Promote: 1500 * time.Millisecond},
	})

	if err := a.Promote(context.Background(), info); err != nil {
		t.Fatalf("Promote: %v", err)
	}
	args, kv := readDump(t, out)
	if want := []string{"--flag", "two words", "promote"}; fmt.Sprint(args) != fmt.Sprint(want) || kv["argc"] != "3" {
		t.Errorf("argv = %q (argc %s), want %q", args, kv["argc"], want)
	}
	if kv["pwd"] != wantDir {
		t.Errorf("working directory = %q, want %q", kv["pwd"], wantDir)
	}
	want := map[string]string{
		"CONCORD_ACTION":              "promote",
		"CONCORD_SERVICE":             "db",
		"CONCORD_NODE":                "n1",
		"CONCORD_ROLE":                "primary",
		"CONCORD_PRIMARY":             "n2",
		"CONCORD_EPOCH":               "7",
		"CONCORD_TOKEN":               "42",
		"CONCORD_SEQ":                 "9",
		"CONCORD_TIMEOUT_MS":          "1500",
		"CONCORD_PARAM_DB_NAME":       "x y",
		"CONCORD_PARAM_PORT":          "5432",
		"CONCORD_PARAM_OUT":           out,
		"OCF_RESOURCE_INSTANCE":       "db",
		"OCF_RESKEY_CRM_meta_timeout": "1500",
		"OCF_RESKEY_db_name":          "x y",
		"OCF_RESKEY_Port":             "5432",
		"CONCORD_API":                 "http://127.0.0.1:1",
		"CONCORD_API_TOKEN":           "tok",
		"CONCORD_TEST_PARENT":         "from-parent",
		"CONCORD_TEST_OVERRIDE":       "from-env",
	}
	for k, v := range want {
		if got, ok := kv[k]; !ok || got != v {
			t.Errorf("%s = %q (set: %v), want %q", k, got, ok, v)
		}
	}

	// Demote: another action name and role; the monitor timeout takes
	// its default.
	in := info
	in.Role = core.RoleSecondary
	if err := a.Demote(context.Background(), in); err != nil {
		t.Fatalf("Demote: %v", err)
	}
	args, kv = readDump(t, out)
	if args[len(args)-1] != "demote" || kv["CONCORD_ACTION"] != "demote" || kv["CONCORD_ROLE"] != "secondary" {
		t.Errorf("demote: argv %q, CONCORD_ACTION %q, CONCORD_ROLE %q", args, kv["CONCORD_ACTION"], kv["CONCORD_ROLE"])
	}
	if kv["CONCORD_TIMEOUT_MS"] != "30000" {
		t.Errorf("demote: CONCORD_TIMEOUT_MS = %q, want the default 30000", kv["CONCORD_TIMEOUT_MS"])
	}

	// A caller's deadline shorter than the timeout is the time the agent
	// has.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.Monitor(ctx, info); err != nil {
		t.Fatalf("Monitor: %v", err)
	}
	_, kv = readDump(t, out)
	var ms int
	if _, err := fmt.Sscan(kv["CONCORD_TIMEOUT_MS"], &ms); err != nil || ms <= 0 || ms > 5000 {
		t.Errorf("monitor under a 5s deadline: CONCORD_TIMEOUT_MS = %q, want in (0, 5000]", kv["CONCORD_TIMEOUT_MS"])
	}
}

func TestExitCodes(t *testing.T) {
	cmd := writeAgent(t, `echo "oops $CONCORD_ACTION" >&2; exit "$OCF_RESKEY_code"`)
	cases := []struct {
		act        string
		code       int
		ok         bool
		notRunning bool
		meaning    string
	}{
		{"start", 0, true, false, ""},
		{"start", 1, false, false, "exit code 1 (OCF_ERR_GENERIC"},
		{"start", 4, false, false, "exit code 4 (OCF_ERR_PERM"},
		{"start", 7, false, false, "exit code 7 (OCF_NOT_RUNNING"},
		{"start", 42, false, false, "exit code 42 (not an OCF code)"},
		{"stop", 0, true, false, ""},
		{"stop", 7, true, false, ""},
		{"stop", 1, false, false, "exit code 1 (OCF_ERR_GENERIC"},
		{"promote", 0, true, false, ""},
		{"promote", 3, false, false, "exit code 3 (OCF_ERR_UNIMPLEMENTED"},
		{"promote", 8, false, false, "exit code 8 (OCF_RUNNING_MASTER"},
		{"demote", 0, true, false, ""},
		{"demote", 9, false, false, "exit code 9 (OCF_FAILED_MASTER"},
		{"monitor", 0, true, false, ""},
		{"monitor", 8, true, false, ""},
		{"monitor", 7, false, true, "exit code 7 (OCF_NOT_RUNNING"},
		{"monitor", 1, false, false, "exit code 1 (OCF_ERR_GENERIC"},
		{"monitor", 9, false, false, "exit code 9 (OCF_FAILED_MASTER"},
		{"checkpoint", 0, true, false, ""},
		{"checkpoint", 2, false, false, "exit code 2 (OCF_ERR_ARGS"},
		{"restore", 0, true, false, ""},
		{"restore", 5, false, false, "exit code 5 (OCF_ERR_INSTALLED"},
		{"restore", 6, false, false, "exit code 6 (OCF_ERR_CONFIGURED"},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%s/%d", c.act, c.code), func(t *testing.T) {
			a := mustNew(t, Config{Command: cmd, Params: map[string]string{"code": fmt.Sprint(c.code)}})
			err := call(context.Background(), a, c.act)
			if c.ok {
				if err != nil {
					t.Fatalf("%s exiting %d: %v, want success", c.act, c.code, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("%s exiting %d succeeded, want an error", c.act, c.code)
			}
			if got := errors.Is(err, replica.ErrNotRunning); got != c.notRunning {
				t.Errorf("errors.Is(err, ErrNotRunning) = %v, want %v (err: %v)", got, c.notRunning, err)
			}
			var ee *ExitError
			if !errors.As(err, &ee) || ee.Code != c.code || ee.Action != c.act || ee.Service != "db" {
				t.Fatalf("err = %#v, want an *ExitError for db %s code %d", err, c.act, c.code)
			}
			msg := err.Error()
			for _, want := range []string{`service "db"`, c.act, c.meaning, "oops " + c.act} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not say %q", msg, want)
				}
			}
		})
	}
}

func TestKilledBySignal(t *testing.T) {
	a := mustNew(t, Config{Command: writeAgent(t, `kill -KILL $$`)})
	err := a.Monitor(context.Background(), info)
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != -1 || !strings.Contains(err.Error(), "signal: killed") {
		t.Fatalf("err = %v, want an *ExitError with code -1 saying the signal", err)
	}
	if errors.Is(err, replica.ErrNotRunning) {
		t.Errorf("a killed monitor wraps ErrNotRunning: %v", err)
	}
}

func TestTimeoutKillsProcessGroup(t *testing.T) {
	cases := []struct {
		name string
		body string
	}{
		// The agent and its child die of SIGTERM.
		{"sigterm", `sleep 60 &
echo $! > "$OCF_RESKEY_pidfile"
echo "waiting for sleep" >&2
wait`},
		// Both ignore SIGTERM: SIGKILL after the grace.
		{"sigkill", `trap '' TERM
sleep 60 &
echo $! > "$OCF_RESKEY_pidfile"
echo "waiting for sleep" >&2
while :; do wait; done`},
	}
	const timeout = 500 * time.Millisecond
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pidfile := filepath.Join(t.TempDir(), "pid")
			a := mustNew(t, Config{
				Command:  writeAgent(t, c.body),
				Params:   map[string]string{"pidfile": pidfile},
				Timeouts: Timeouts{Monitor: timeout},
			})
			begin := time.Now()
			err := a.Monitor(context.Background(), info)
			elapsed := time.Since(begin)
			if err == nil {
				t.Fatal("Monitor of a hanging agent succeeded")
			}
			pid := readPid(t, pidfile)
			killOnCleanup(t, pid)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("err = %v, want it to wrap context.DeadlineExceeded", err)
			}
			for _, want := range []string{`service "db"`, "monitor timed out after 500ms", "agent.timeouts.monitor", "waiting for sleep"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			if elapsed < timeout || elapsed > timeout+grace(timeout)+2*time.Second {
				t.Errorf("Monitor returned after %v, want about %v", elapsed, timeout)
			}
			waitFor(t, 3*time.Second, "the agent's child ends", func() bool { return !alive(pid) })
		})
	}
}

func TestContextEndsAction(t *testing.T) {
	body := `sleep 60 &
echo $! > "$OCF_RESKEY_pidfile"
wait`
	t.Run("deadline", func(t *testing.T) {
		pidfile := filepath.Join(t.TempDir(), "pid")
		a := mustNew(t, Config{Command: writeAgent(t, body), Params: map[string]string{"pidfile": pidfile}})
		ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
		defer cancel()
		err := a.Stop(ctx, info)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want it to wrap context.DeadlineExceeded", err)
		}
		for _, want := range []string{"stop ran into its caller's deadline", "agent.timeouts.stop is 1m0s"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
		}
		pid := readPid(t, pidfile)
		killOnCleanup(t, pid)
		waitFor(t, 3*time.Second, "the agent's child ends", func() bool { return !alive(pid) })
	})
	t.Run("canceled", func(t *testing.T) {
		pidfile := filepath.Join(t.TempDir(), "pid")
		a := mustNew(t, Config{Command: writeAgent(t, body), Params: map[string]string{"pidfile": pidfile}})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		timer := time.AfterFunc(300*time.Millisecond, cancel)
		defer timer.Stop()
		err := a.Start(ctx, info)
		if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "start was canceled") {
			t.Fatalf("err = %v, want a cancellation wrapping context.Canceled", err)
		}
		pid := readPid(t, pidfile)
		killOnCleanup(t, pid)
		waitFor(t, 3*time.Second, "the agent's child ends", func() bool { return !alive(pid) })
	})
	t.Run("already done", func(t *testing.T) {
		marker := filepath.Join(t.TempDir(), "ran")
		a := mustNew(t, Config{Command: writeAgent(t, `touch "$OCF_RESKEY_marker"`), Params: map[string]string{"marker": marker}})
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := a.Start(ctx, info); !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the agent ran under a done context (stat: %v)", err)
		}
	})
}

func TestDaemonHoldingOutput(t *testing.T) {
	t.Run("redirected", func(t *testing.T) {
		pidfile := filepath.Join(t.TempDir(), "pid")
		a := mustNew(t, Config{
			Command: writeAgent(t, `sleep 30 </dev/null >/dev/null 2>&1 &
echo $! > "$OCF_RESKEY_pidfile"`),
			Params: map[string]string{"pidfile": pidfile},
		})
		begin := time.Now()
		if err := a.Start(context.Background(), info); err != nil {
			t.Fatalf("Start: %v", err)
		}
		pid := readPid(t, pidfile)
		killOnCleanup(t, pid)
		if elapsed := time.Since(begin); elapsed >= waitDelay {
			t.Errorf("Start with a well-behaved daemon took %v, want less than %v", elapsed, waitDelay)
		}
		if !alive(pid) {
			t.Error("the daemon that start left is gone")
		}
	})
	t.Run("holding", func(t *testing.T) {
		var l logs
		pidfile := filepath.Join(t.TempDir(), "pid")
		a := mustNew(t, Config{
			Command: writeAgent(t, `sleep 30 &
echo $! > "$OCF_RESKEY_pidfile"
echo started`),
			Params: map[string]string{"pidfile": pidfile},
			Logger: l.logger(),
		})
		begin := time.Now()
		err := a.Start(context.Background(), info)
		elapsed := time.Since(begin)
		pid := readPid(t, pidfile)
		killOnCleanup(t, pid)
		if err != nil {
			t.Fatalf("Start: %v", err)
		}
		if elapsed > waitDelay+2*time.Second {
			t.Errorf("Start took %v, want about the wait delay %v", elapsed, waitDelay)
		}
		if !alive(pid) {
			t.Error("the daemon that start left is gone")
		}
		if len(l.find(slog.LevelWarn, "agent action: a process the agent started kept its stdout or stderr open after it exited; redirect a daemon's output so that actions do not wait for it")) != 1 {
			t.Error("no warning about the daemon holding the output")
		}
		if got := l.find(slog.LevelDebug, "agent stdout"); len(got) != 1 || got[0].attrs["line"] != "started" {
			t.Errorf("stdout records = %v, want one with line \"started\"", got)
		}
	})
	t.Run("checkpoint fails", func(t *testing.T) {
		pidfile := filepath.Join(t.TempDir(), "pid")
		a := mustNew(t, Config{
			Command: writeAgent(t, `sleep 30 &
echo $! > "$OCF_RESKEY_pidfile"
echo state`),
			Params: map[string]string{"pidfile": pidfile},
		})
		var buf bytes.Buffer
		err := a.Checkpoint(context.Background(), info, &buf)
		pid := readPid(t, pidfile)
		killOnCleanup(t, pid)
		if err == nil || !strings.Contains(err.Error(), "kept stdout open") {
			t.Fatalf("Checkpoint = %v, want an error about the held stdout", err)
		}
	})
}

// countWriter counts what it is given, and how big its biggest Write
// was; it fails once it has taken failAfter bytes, if that is positive.
type countWriter struct {
	n, writes, max, failAfter int
}

var errWriterBroke = errors.New("writer broke")

func (c *countWriter) Write(p []byte) (int, error) {
	if c.failAfter > 0 && c.n >= c.failAfter {
		return 0, errWriterBroke
	}
	c.n += len(p)
	c.writes++
	c.max = max(c.max, len(p))
	return len(p), nil
}

func TestCheckpoint(t *testing.T) {
	const size = 8_000_000
	t.Run("streams", func(t *testing.T) {
		a := mustNew(t, Config{Command: writeAgent(t, fmt.Sprintf(`echo "seq $CONCORD_SEQ" >&2; head -c %d /dev/zero`, size))})
		var w countWriter
		if err := a.Checkpoint(context.Background(), info, &w); err != nil {
			t.Fatalf("Checkpoint: %v", err)
		}
		if w.n != size {
			t.Errorf("wrote %d bytes, want %d", w.n, size)
		}
		if w.max > 1<<20 || w.writes < size/(1<<20) {
			t.Errorf("%d writes of up to %d bytes: the state was not streamed", w.writes, w.max)
		}
	})
	t.Run("exit fails after output", func(t *testing.T) {
		a := mustNew(t, Config{Command: writeAgent(t, `printf partial; exit 1`)})
		var buf bytes.Buffer
		err := a.Checkpoint(context.Background(), info, &buf)
		var ee *ExitError
		if !errors.As(err, &ee) || ee.Code != 1 {
			t.Fatalf("Checkpoint = %v, want an *ExitError with code 1", err)
		}
		if buf.String() != "partial" {
			t.Errorf("w got %q, want the partial output %q", buf.String(), "partial")
		}
	})
	t.Run("writer fails", func(t *testing.T) {
		a := mustNew(t, Config{Command: writeAgent(t, fmt.Sprintf(`head -c %d /dev/zero`, size))})
		w := countWriter{failAfter: 1 << 20}
		err := a.Checkpoint(context.Background(), info, &w)
		if !errors.Is(err, errWriterBroke) || !strings.Contains(err.Error(), "writing the agent's output failed") {
			t.Fatalf("Checkpoint = %v, want the writer's error", err)
		}
	})
}

// brokenReader yields n bytes, then fails.
type brokenReader struct{ n int }

var errReaderBroke = errors.New("reader broke")

func (r *brokenReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, errReaderBroke
	}
	k := min(len(p), r.n)
	clear(p[:k])
	r.n -= k
	return k, nil
}

func TestRestore(t *testing.T) {
	state := make([]byte, 3_000_000)
	if _, err := rand.Read(state); err != nil {
		t.Fatal(err)
	}
	t.Run("streams", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "state")
		a := mustNew(t, Config{Command: writeAgent(t, `cat > "$OCF_RESKEY_out"`), Params: map[string]string{"out": out}})
		if err := a.Restore(context.Background(), info, bytes.NewReader(state)); err != nil {
			t.Fatalf("Restore: %v", err)
		}
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, state) {
			t.Errorf("the agent got %d bytes, not the %d given", len(got), len(state))
		}
	})
	t.Run("partial read", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "state")
		a := mustNew(t, Config{Command: writeAgent(t, `head -c 10 > "$OCF_RESKEY_out"; exit 0`), Params: map[string]string{"out": out}})
		if err := a.Restore(context.Background(), info, bytes.NewReader(state)); err != nil {
			t.Fatalf("Restore of an agent that reads part of stdin and exits 0: %v", err)
		}
		if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, state[:10]) {
			t.Errorf("the agent got %q (%v), want the first 10 bytes", got, err)
		}
	})
	t.Run("exit fails", func(t *testing.T) {
		a := mustNew(t, Config{Command: writeAgent(t, `cat > /dev/null; echo "bad state" >&2; exit 1`)})
		err := a.Restore(context.Background(), info, bytes.NewReader(state))
		var ee *ExitError
		if !errors.As(err, &ee) || ee.Action != "restore" || !strings.Contains(err.Error(), "bad state") {
			t.Fatalf("Restore = %v, want an *ExitError quoting stderr", err)
		}
	})
	t.Run("reader fails", func(t *testing.T) {
		a := mustNew(t, Config{Command: writeAgent(t, `cat > /dev/null`)})
		err := a.Restore(context.Background(), info, &brokenReader{n: 100_000})
		if !errors.Is(err, errReaderBroke) {
			t.Fatalf("Restore = %v, want the reader's error", err)
		}
	})
}

func TestStderr(t *testing.T) {
	t.Run("tail", func(t *testing.T) {
		var l logs
		a := mustNew(t, Config{
			Command: writeAgent(t, `i=1
while [ $i -le 50 ]; do printf 'err-%02d\n' $i >&2; i=$((i+1)); done
exit 1`),
			Logger: l.logger(),
		})
		err := a.Start(context.Background(), info)
		var ee *ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("Start = %v, want an *ExitError", err)
		}
		if len(ee.Stderr) != tailLines || ee.Stderr[0] != "err-31" || ee.Stderr[tailLines-1] != "err-50" {
			t.Errorf("Stderr = %q, want err-31 to err-50", ee.Stderr)
		}
		msg := err.Error()
		if !strings.Contains(msg, "err-31") || !strings.Contains(msg, "err-50") || strings.Contains(msg, "err-30") {
			t.Errorf("error %q does not quote exactly the last %d lines", msg, tailLines)
		}
		lines := l.find(slog.LevelDebug, "agent stderr")
		if len(lines) != 50 || lines[0].attrs["line"] != "err-01" || lines[0].attrs["service"] != "db" || lines[0].attrs["action"] != "start" {
			t.Errorf("got %d stderr records (first %v), want 50 from err-01 with service and action", len(lines), lines[:min(1, len(lines))])
		}
		if warns := l.find(slog.LevelWarn, "agent action failed"); len(warns) != 1 || !strings.Contains(warns[0].attrs["err"], "err-50") {
			t.Errorf("failure warnings = %v, want one quoting stderr", warns)
		}
	})
	t.Run("long line", func(t *testing.T) {
		a := mustNew(t, Config{Command: writeAgent(t, `head -c 100000 /dev/zero | tr '\0' x >&2; exit 1`)})
		err := a.Start(context.Background(), info)
		var ee *ExitError
		if !errors.As(err, &ee) || len(ee.Stderr) != 1 {
			t.Fatalf("Start = %v, want an *ExitError with one stderr line", err)
		}
		if n := len(ee.Stderr[0]); n > maxLineBytes+len(" [cut]") || !strings.HasSuffix(ee.Stderr[0], "[cut]") {
			t.Errorf("the stderr line kept is %d bytes, want it cut to %d", n, maxLineBytes)
		}
		if n := len(err.Error()); n > 2000 {
			t.Errorf("the error is %d bytes long", n)
		}
	})
	t.Run("stdout bounded", func(t *testing.T) {
		var l logs
		a := mustNew(t, Config{
			Command: writeAgent(t, `i=1; while [ $i -le 200 ]; do echo "out-$i"; i=$((i+1)); done`),
			Logger:  l.logger(),
		})
		if err := a.Monitor(context.Background(), info); err != nil {
			t.Fatalf("Monitor: %v", err)
		}
		got := l.find(slog.LevelDebug, "agent stdout")
		if len(got) != maxStdoutLines || got[0].attrs["line"] != "out-1" {
			t.Errorf("logged %d stdout lines, want the first %d", len(got), maxStdoutLines)
		}
		if more := l.find(slog.LevelDebug, "agent stdout: more lines not logged"); len(more) != 1 || more[0].attrs["lines"] != "150" {
			t.Errorf("records of dropped lines = %v, want one saying 150", more)
		}
	})
}

func TestValidate(t *testing.T) {
	good := writeAgent(t, `exit 0`)
	plain := filepath.Join(t.TempDir(), "plain")
	if err := os.WriteFile(plain, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "missing")
	cases := []struct {
		name string
		c    Config
		want []string // "" entries: valid
	}{
		{"good", Config{Command: good}, nil},
		{"from PATH", Config{Command: "sh"}, nil},
		{"relative to dir", Config{Command: "./" + filepath.Base(good), Dir: filepath.Dir(good)}, nil},
		{"no command", Config{}, []string{"agent.command is empty"}},
		{"missing", Config{Command: missing}, []string{"agent.command", missing, "no such file"}},
		{"not executable", Config{Command: plain}, []string{"agent.command", plain, "not executable"}},
		{"directory", Config{Command: t.TempDir()}, []string{"agent.command", "is a directory"}},
		{"not in PATH", Config{Command: "concord-no-such-agent"}, []string{"agent.command", "concord-no-such-agent"}},
		{"bad dir", Config{Command: good, Dir: missing}, []string{"agent.dir", missing}},
		{"negative timeout", Config{Command: good, Timeouts: Timeouts{Stop: -time.Second}}, []string{"agent.timeouts.stop", "-1s"}},
		{"bad param", Config{Command: good, Params: map[string]string{"a-b": "1"}}, []string{"agent.params", `"a-b"`}},
		{"empty param", Config{Command: good, Params: map[string]string{"": "1"}}, []string{"agent.params", `""`}},
		{"colliding params", Config{Command: good, Params: map[string]string{"x": "1", "X": "2"}}, []string{"agent.params", "CONCORD_PARAM_X"}},
		{"bad env", Config{Command: good, Env: []string{"A=1", "NOEQ"}}, []string{"agent.env[1]", "KEY=value"}},
		{"two faults", Config{Timeouts: Timeouts{Monitor: -1}}, []string{"agent.command", "agent.timeouts.monitor"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.c.Validate()
			if c.want == nil {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				if _, err := New(c.c); err != nil {
					t.Fatalf("New: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate accepted a bad config")
			}
			if !errors.Is(err, core.ErrInvalidArgument) {
				t.Errorf("err = %v, want it to wrap core.ErrInvalidArgument", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if a, err := New(c.c); err == nil || a != nil {
				t.Errorf("New = %v, %v: want no agent and an error", a, err)
			}
		})
	}
}

func TestDefaultTimeouts(t *testing.T) {
	d := DefaultTimeouts()
	want := Timeouts{Start: time.Minute, Stop: time.Minute, Promote: 30 * time.Second, Demote: 30 * time.Second,
		Monitor: 10 * time.Second, Checkpoint: 2 * time.Minute, Restore: 2 * time.Minute}
	if d != want {
		t.Errorf("DefaultTimeouts() = %+v, want %+v", d, want)
	}
	got := Timeouts{Monitor: time.Second}.withDefaults()
	want.Monitor = time.Second
	if got != want {
		t.Errorf("withDefaults = %+v, want %+v", got, want)
	}
}

func TestExecutableGoneAtRun(t *testing.T) {
	cmd := writeAgent(t, `exit 0`)
	a := mustNew(t, Config{Command: cmd})
	if err := os.Remove(cmd); err != nil {
		t.Fatal(err)
	}
	err := a.Start(context.Background(), info)
	if err == nil || !strings.Contains(err.Error(), "agent.command") || !strings.Contains(err.Error(), cmd) {
		t.Fatalf("Start = %v, want an error naming agent.command and %s", err, cmd)
	}
}

func TestBadArguments(t *testing.T) {
	a := mustNew(t, Config{Command: writeAgent(t, `exit 0`)})
	var nilCtx context.Context
	var nilAgent *Agent
	for name, err := range map[string]error{
		"nil writer":  a.Checkpoint(context.Background(), info, nil),
		"nil reader":  a.Restore(context.Background(), info, nil),
		"nil context": a.Monitor(nilCtx, info),
		"nil agent":   nilAgent.Monitor(context.Background(), info),
	} {
		if !errors.Is(err, core.ErrInvalidArgument) {
			t.Errorf("%s: err = %v, want core.ErrInvalidArgument", name, err)
		}
	}
}
