//go:build linux

package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/concordha/concord/core"
	"github.com/concordha/concord/internal/poll"
	"github.com/concordha/concord/replica"
)

// info is the replica.Info the tests pass.
var info = replica.Info{
	Service: "db",
	Node:    "n1",
	Role:    core.RolePrimary,
	Primary: "n2",
	Epoch:   7,
	Token:   42,
	Seq:     9,
}

// writeAgent writes a /bin/sh agent with body into a fresh directory and
// returns its path.
func writeAgent(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.sh")
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// mustNew builds an agent from c, failing the test on error.
func mustNew(t *testing.T, c Config) *Agent {
	t.Helper()
	a, err := New(c)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return a
}

// call runs the action named act.
func call(ctx context.Context, a *Agent, act string) error {
	switch act {
	case "start":
		return a.Start(ctx, info)
	case "stop":
		return a.Stop(ctx, info)
	case "promote":
		return a.Promote(ctx, info)
	case "demote":
		return a.Demote(ctx, info)
	case "monitor":
		return a.Monitor(ctx, info)
	case "checkpoint":
		return a.Checkpoint(ctx, info, io.Discard)
	case "restore":
		return a.Restore(ctx, info, strings.NewReader(""))
	}
	return fmt.Errorf("test: unknown action %q", act)
}

// waitFor polls cond until it holds, failing the test after within.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	poll.Every(t, 20*time.Millisecond, within, what, func() error {
		if cond() {
			return nil
		}
		return errors.New("not yet")
	})
}

// readPid reads the pid an agent wrote to path.
func readPid(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the agent wrote no pid file: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		t.Fatalf("pid file holds %q", b)
	}
	return pid
}

// alive reports whether process pid runs (a zombie, which nobody may
// reap in a container, counts as gone).
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return !(i >= 0 && i+2 < len(b) && b[i+2] == 'Z')
}

// killOnCleanup kills process pid when the test ends.
func killOnCleanup(t *testing.T, pid int) {
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
}

// record is one captured log record.
type record struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

// logs captures log records.
type logs struct {
	mu   sync.Mutex
	recs []record
}

func (l *logs) logger() *slog.Logger { return slog.New(&logHandler{l: l}) }

// find returns the records at level with message msg.
func (l *logs) find(level slog.Level, msg string) []record {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []record
	for _, r := range l.recs {
		if r.level == level && r.msg == msg {
			out = append(out, r)
		}
	}
	return out
}

type logHandler struct {
	l     *logs
	attrs []slog.Attr
}

func (h *logHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *logHandler) Handle(_ context.Context, r slog.Record) error {
	rec := record{level: r.Level, msg: r.Message, attrs: map[string]string{}}
	for _, a := range h.attrs {
		rec.attrs[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool {
		rec.attrs[a.Key] = a.Value.String()
		return true
	})
	h.l.mu.Lock()
	h.l.recs = append(h.l.recs, rec)
	h.l.mu.Unlock()
	return nil
}

func (h *logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &logHandler{l: h.l, attrs: append(append([]slog.Attr(nil), h.attrs...), as...)}
}

func (h *logHandler) WithGroup(string) slog.Handler { return h }
