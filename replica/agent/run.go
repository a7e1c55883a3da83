package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/concordha/concord/core"
	"github.com/concordha/concord/replica"
)

const (
	// waitDelay bounds how long an action waits, once the agent has
	// exited, for its stdout and stderr to close: a daemon that kept them
	// open must not hold the action up.
	waitDelay = 2 * time.Second
	// maxGrace is the longest time between SIGTERM and SIGKILL.
	maxGrace = 2 * time.Second
)

// errTimeout is the cause of an action's context when its own timeout
// (not the caller's deadline) ends it.
var errTimeout = errors.New("agent action timeout")

// run runs one action. stdin, if not nil, feeds the agent's stdin;
// stdout, if not nil, takes its stdout (else stdout is logged).
func (a *Agent) run(ctx context.Context, act action, in replica.Info, stdin io.Reader, stdout io.Writer) error {
	if a == nil {
		return fmt.Errorf("agent: %s on a nil *Agent: build it with New: %w", act, core.ErrInvalidArgument)
	}
	if ctx == nil {
		return a.invalid(in, act, "nil context")
	}
	log := a.logger(in, act)

	timeout := a.timeouts.of(act)
	budget := timeout
	if dl, ok := ctx.Deadline(); ok {
		budget = min(budget, time.Until(dl))
	}
	if err := ctx.Err(); err != nil || budget <= 0 {
		if err == nil {
			err = context.DeadlineExceeded
		}
		return fmt.Errorf("agent: service %q: %s not run: its context is done: %w", in.Service, act, err)
	}
	actx, cancel := context.WithTimeoutCause(ctx, timeout, errTimeout)
	defer cancel()

	cmd := exec.Command(a.command, append(slices.Clone(a.args), act.String())...)
	cmd.Dir = a.dir
	cmd.Env = a.environ(act, in, budget)
	cmd.WaitDelay = waitDelay
	setProcessGroup(cmd)

	stderr := newLineWriter(func(line string) { log.Debug("agent stderr", "line", line) }, tailLines, 0)
	cmd.Stderr = stderr
	var (
		out    *countingWriter
		outLog *lineWriter
		in2    *recordingReader
	)
	if stdout != nil {
		out = &countingWriter{w: stdout}
		cmd.Stdout = out
	} else {
		outLog = newLineWriter(func(line string) { log.Debug("agent stdout", "line", line) }, 0, maxStdoutLines)
		cmd.Stdout = outLog
	}
	if stdin != nil {
		in2 = &recordingReader{r: stdin}
		cmd.Stdin = in2
	}

	begin := time.Now()
	if err := cmd.Start(); err != nil {
		err = fmt.Errorf("agent: service %q: %s: cannot run agent.command %q: %w: check that it is the path of an executable", in.Service, act, a.command, err)
		log.Warn("agent action failed", "err", err)
		return err
	}
	dog := watch(actx, cmd.Process, grace(budget))
	waitErr := cmd.Wait()
	killed := dog.stop()
	elapsed := time.Since(begin)

	stderr.flush()
	if outLog != nil {
		if n := outLog.flush(); n > 0 {
			log.Debug("agent stdout: more lines not logged", "lines", n)
		}
	}

	err := a.outcome(ctx, actx, act, in, waitErr, killed, timeout, budget, stderr.lines(), out, in2)
	if err != nil {
		log.Warn("agent action failed", "err", err, "elapsed", elapsed)
		return err
	}
	if errors.Is(waitErr, exec.ErrWaitDelay) {
		log.Warn("agent action: a process the agent started kept its stdout or stderr open after it exited; redirect a daemon's output so that actions do not wait for it",
			"wait", waitDelay)
	}
	if out != nil {
		log.Debug("agent action done", "elapsed", elapsed, "bytes", out.n)
	} else {
		log.Debug("agent action done", "elapsed", elapsed)
	}
	return nil
}

// outcome turns how the agent ended into the action's error.
func (a *Agent) outcome(ctx, actx context.Context, act action, in replica.Info, waitErr error, killed bool,
	timeout, budget time.Duration, tail []string, out *countingWriter, stdin *recordingReader) error {
	if killed {
		suffix := stderrSuffix(tail)
		switch {
		case errors.Is(context.Cause(actx), errTimeout):
			return fmt.Errorf("agent: service %q: %s timed out after %v and was killed: raise agent.timeouts.%s if it needs longer%s: %w",
				in.Service, act, timeout, act, suffix, context.DeadlineExceeded)
		case errors.Is(ctx.Err(), context.DeadlineExceeded):
			return fmt.Errorf("agent: service %q: %s ran into its caller's deadline after %v and was killed (agent.timeouts.%s is %v)%s: %w",
				in.Service, act, budget.Round(time.Millisecond), act, timeout, suffix, context.DeadlineExceeded)
		default:
			return fmt.Errorf("agent: service %q: %s was canceled and killed%s: %w", in.Service, act, suffix, context.Cause(actx))
		}
	}
	if out != nil && out.err != nil {
		return fmt.Errorf("agent: service %q: %s: writing the agent's output failed after %d bytes: %w", in.Service, act, out.n, out.err)
	}
	if stdin != nil && stdin.err != nil {
		return fmt.Errorf("agent: service %q: %s: reading the input failed, so the agent saw it end early: %w", in.Service, act, stdin.err)
	}

	var ee *exec.ExitError
	switch {
	case waitErr == nil:
	case errors.As(waitErr, &ee):
		code := ee.ExitCode()
		if code == ocfSuccess ||
			act == actMonitor && code == ocfRunningMaster ||
			act == actStop && code == ocfNotRunning {
			return nil
		}
		return &ExitError{Service: in.Service, Action: act.String(), Code: code, Stderr: tail, status: ee.ProcessState.String()}
	case errors.Is(waitErr, exec.ErrWaitDelay):
		// The agent exited 0; a process it left holds stdout or stderr.
		if act == actCheckpoint {
			return fmt.Errorf("agent: service %q: %s: the agent exited, but a process it started kept stdout open %v longer, so the state may be incomplete: redirect that process's output: %w",
				in.Service, act, waitDelay, waitErr)
		}
	default:
		return fmt.Errorf("agent: service %q: %s: %w%s", in.Service, act, waitErr, stderrSuffix(tail))
	}
	return nil
}

// environ is the agent's environment for one action; budget is the time
// it has.
func (a *Agent) environ(act action, in replica.Info, budget time.Duration) []string {
	ms := strconv.FormatInt(budget.Milliseconds(), 10)
	env := os.Environ()
	env = append(env, a.env...)
	env = append(env,
		"CONCORD_ACTION="+act.String(),
		"CONCORD_SERVICE="+in.Service,
		"CONCORD_NODE="+in.Node,
		"CONCORD_ROLE="+in.Role.String(),
		"CONCORD_PRIMARY="+in.Primary,
		"CONCORD_EPOCH="+strconv.FormatInt(in.Epoch, 10),
		"CONCORD_TOKEN="+strconv.FormatInt(in.Token, 10),
		"CONCORD_SEQ="+strconv.FormatInt(in.Seq, 10),
		"CONCORD_TIMEOUT_MS="+ms,
	)
	env = append(env, a.params...)
	return append(env,
		"OCF_RESOURCE_INSTANCE="+in.Service,
		"OCF_RESKEY_CRM_meta_timeout="+ms,
	)
}

// grace is the time between SIGTERM and SIGKILL for an action that had
// budget: half of it, within [10ms, maxGrace].
func grace(budget time.Duration) time.Duration {
	return min(max(budget/2, 10*time.Millisecond), maxGrace)
}

// watchdog kills an agent's process group once the action's context is
// done: SIGTERM, then SIGKILL after a grace if any of the group is left.
type watchdog struct {
	exited chan struct{} // closed by stop
	done   chan struct{} // closed when the goroutine has ended

	mu        sync.Mutex
	stopped   bool
	signalled bool
}

// watch starts the watchdog of process p.
func watch(ctx context.Context, p *os.Process, grace time.Duration) *watchdog {
	w := &watchdog{exited: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		select {
		case <-w.exited:
			return
		case <-ctx.Done():
		}
		// Never signal once Wait has returned for an action that ended in
		// time: its group may hold a daemon that start left running.
		w.mu.Lock()
		if w.stopped {
			w.mu.Unlock()
			return
		}
		w.signalled = true
		terminate(p)
		w.mu.Unlock()

		deadline := time.Now().Add(grace)
		tick := time.NewTicker(min(max(grace/10, 5*time.Millisecond), 50*time.Millisecond))
		defer tick.Stop()
		for groupAlive(p) {
			if !time.Now().Before(deadline) {
				kill(p)
				return
			}
			<-tick.C
		}
	}()
	return w
}

// stop tells the watchdog that Wait has returned, waits until it has
// ended (after its SIGKILL, if it had signalled), and reports whether it
// signalled.
func (w *watchdog) stop() (signalled bool) {
	w.mu.Lock()
	w.stopped = true
	close(w.exited)
	w.mu.Unlock()
	<-w.done
	return w.signalled
}
