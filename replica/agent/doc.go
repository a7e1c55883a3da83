// Package agent is a replica.Provider that drives a service through an
// executable "resource agent", in the spirit of OCF resource agents: one
// run of the executable per action, the action named on the command line,
// the service's situation in the environment, the outcome in the exit
// code.
//
// # What an agent sees
//
// Each action runs
//
//	Command Args... ACTION
//
// where ACTION is one of start, stop, promote, demote, monitor, checkpoint
// and restore, in Config.Dir, in its own process group. Its environment is
// concord's own, then Config.Env, then:
//
//	CONCORD_ACTION         the action
//	CONCORD_SERVICE        the service's name
//	CONCORD_NODE           this node's ID
//	CONCORD_ROLE           primary, secondary, spare or none (replica.Info.Role)
//	CONCORD_PRIMARY        the node the primary record names ("" if none)
//	CONCORD_EPOCH          the primary's election epoch (0 if none)
//	CONCORD_TOKEN          the primary's fencing token (0 if none)
//	CONCORD_SEQ            the checkpoint's sequence number
//	CONCORD_TIMEOUT_MS     the time the action has, in milliseconds
//	CONCORD_PARAM_<NAME>   each of Config.Params, its name upper-cased
//
// and, for agents written for OCF, OCF_RESOURCE_INSTANCE (the service),
// OCF_RESKEY_CRM_meta_timeout (as CONCORD_TIMEOUT_MS) and OCF_RESKEY_<name>
// for each parameter, its name as given. Later entries win, so Config.Env
// cannot override the CONCORD_ variables of the action.
//
// # Exit codes
//
// The OCF codes: 0 is success. Monitor also takes 8 (OCF_RUNNING_MASTER)
// as healthy and 7 (OCF_NOT_RUNNING) as cleanly stopped: its error then
// wraps replica.ErrNotRunning. Stop takes 7 as success (already stopped).
// Every other code fails the action with an *ExitError that names the
// service, the action, the code with its OCF meaning, and the last lines
// the agent wrote to stderr.
//
// # Checkpoint and restore
//
// Checkpoint streams the agent's stdout into the io.Writer it is given,
// as the agent writes it: the state is never held in memory whole. A
// non-zero exit fails Checkpoint even if bytes were written, and the
// caller must discard them. Restore streams its io.Reader into the
// agent's stdin; a non-zero exit fails it. An agent may exit 0 without
// reading all of stdin: the rest is not read. If reading the io.Reader
// fails, the agent sees its stdin end early, and Restore fails whatever
// the agent's exit code. Neither method uses the writer or the reader
// after it returns, so a Write or Read that blocks holds the method up;
// give them ones that end with the action's context.
//
// # Timeouts
//
// An action may run until the earlier of its context's deadline and its
// timeout (Config.Timeouts). Then its whole process group gets SIGTERM,
// and SIGKILL after a grace of up to 2s; the error says which timeout
// setting to raise.
//
// # Daemons
//
// A start action that launches a daemon must redirect the daemon's
// stdin, stdout and stderr (for example to /dev/null or a log file), and
// should detach it (setsid). An action ends when the agent has exited
// and its stdout and stderr are closed; if a daemon still holds them, the
// action waits a further 2s, then closes them and logs a warning. That
// wait makes a checkpoint fail, since its state may be incomplete. A
// daemon left in the process group of an action that times out is killed
// with it.
//
// stderr lines are logged at Debug as they come, and the last lines of a
// failed action at Warn with its error; stdout of actions other than
// checkpoint is logged at Debug, up to a bound.
package agent
