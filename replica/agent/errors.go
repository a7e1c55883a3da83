package agent

import (
	"fmt"
	"strings"

	"github.com/concordha/concord/replica"
)

// OCF exit codes that the agent gives meaning to.
const (
	ocfSuccess       = 0
	ocfNotRunning    = 7
	ocfRunningMaster = 8
)

// ocfMeaning explains an OCF exit code, with what to do where it helps.
func ocfMeaning(code int) string {
	switch code {
	case 1:
		return "OCF_ERR_GENERIC: generic error"
	case 2:
		return "OCF_ERR_ARGS: invalid arguments; check agent.args and agent.params"
	case 3:
		return "OCF_ERR_UNIMPLEMENTED: the agent does not implement this action"
	case 4:
		return "OCF_ERR_PERM: insufficient permissions"
	case 5:
		return "OCF_ERR_INSTALLED: something the agent needs is not installed on this node"
	case 6:
		return "OCF_ERR_CONFIGURED: the agent's configuration is wrong; check agent.params"
	case 7:
		return "OCF_NOT_RUNNING: the service is not running"
	case 8:
		return "OCF_RUNNING_MASTER: the service runs as the primary"
	case 9:
		return "OCF_FAILED_MASTER: the service failed as the primary"
	}
	return "not an OCF code"
}

// ExitError is the error of an action whose agent exited with a code
// that means failure, or was killed by a signal it was not sent by
// concord. For monitor, code 7 (OCF_NOT_RUNNING) makes it wrap
// replica.ErrNotRunning.
type ExitError struct {
	// Service and Action (start, stop, ...) say what failed.
	Service string
	Action  string
	// Code is the exit code: 1 generic error, 2 invalid arguments, 3
	// unimplemented, 4 insufficient permissions, 5 not installed, 6 not
	// configured, 7 not running, 9 failed as primary. It is -1 if the
	// agent was killed by a signal.
	Code int
	// Stderr holds the last lines the agent wrote to stderr, each cut to
	// a bounded length.
	Stderr []string

	status string // the process state, for a signal
}

// Error says what failed, how, and what the agent wrote to stderr last.
func (e *ExitError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "agent: service %q: %s failed: ", e.Service, e.Action)
	if e.Code < 0 {
		b.WriteString(e.status)
	} else {
		fmt.Fprintf(&b, "exit code %d (%s)", e.Code, ocfMeaning(e.Code))
	}
	b.WriteString(stderrSuffix(e.Stderr))
	return b.String()
}

// Unwrap returns replica.ErrNotRunning for a monitor that exited with
// OCF_NOT_RUNNING, and nil otherwise.
func (e *ExitError) Unwrap() error {
	if e.Action == actMonitor.String() && e.Code == ocfNotRunning {
		return replica.ErrNotRunning
	}
	return nil
}

// stderrSuffix renders stderr lines for the end of an error message.
func stderrSuffix(lines []string) string {
	if len(lines) == 0 {
		return ""
	}
	return fmt.Sprintf("; stderr (last %d lines): %s", len(lines), strings.Join(lines, " | "))
}
