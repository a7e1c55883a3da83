package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"

	"github.com/concordha/concord/core"
	"github.com/concordha/concord/replica"
)

// action is one of the agent's actions; its String is the name the agent
// gets on its command line.
type action int8

const (
	actStart action = iota
	actStop
	actPromote
	actDemote
	actMonitor
	actCheckpoint
	actRestore
)

func (a action) String() string {
	switch a {
	case actStart:
		return "start"
	case actStop:
		return "stop"
	case actPromote:
		return "promote"
	case actDemote:
		return "demote"
	case actMonitor:
		return "monitor"
	case actCheckpoint:
		return "checkpoint"
	case actRestore:
		return "restore"
	}
	return fmt.Sprintf("action(%d)", int8(a))
}

// Agent is a replica.Provider that runs a resource agent once per action.
// It holds no state between actions and is safe for concurrent use.
type Agent struct {
	command  string
	args     []string
	dir      string
	env      []string // Config.Env
	params   []string // CONCORD_PARAM_ and OCF_RESKEY_ entries, by name
	timeouts Timeouts
	log      *slog.Logger // nil: slog.Default() at each action
}

var _ replica.Provider = (*Agent)(nil)

// New validates c and returns the agent it describes. The Agent keeps
// copies of c's slices and map.
func New(c Config) (*Agent, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	names := slices.Sorted(maps.Keys(c.Params))
	params := make([]string, 0, 2*len(names))
	for _, name := range names {
		params = append(params, "CONCORD_PARAM_"+strings.ToUpper(name)+"="+c.Params[name])
	}
	for _, name := range names {
		params = append(params, "OCF_RESKEY_"+name+"="+c.Params[name])
	}
	return &Agent{
		command:  c.Command,
		args:     slices.Clone(c.Args),
		dir:      c.Dir,
		env:      slices.Clone(c.Env),
		params:   params,
		timeouts: c.Timeouts.withDefaults(),
		log:      c.Logger,
	}, nil
}

// Start runs the agent's start action: the service runs as a spare.
func (a *Agent) Start(ctx context.Context, in replica.Info) error {
	return a.run(ctx, actStart, in, nil, nil)
}

// Stop runs the agent's stop action. Exit code 7 (OCF_NOT_RUNNING)
// counts as success.
func (a *Agent) Stop(ctx context.Context, in replica.Info) error {
	return a.run(ctx, actStop, in, nil, nil)
}

// Promote runs the agent's promote action.
func (a *Agent) Promote(ctx context.Context, in replica.Info) error {
	return a.run(ctx, actPromote, in, nil, nil)
}

// Demote runs the agent's demote action; CONCORD_ROLE is the role the
// service goes to.
func (a *Agent) Demote(ctx context.Context, in replica.Info) error {
	return a.run(ctx, actDemote, in, nil, nil)
}

// Monitor runs the agent's monitor action. Exit codes 0 and 8
// (OCF_RUNNING_MASTER) are healthy; 7 (OCF_NOT_RUNNING) gives an error
// wrapping replica.ErrNotRunning; any other fails.
func (a *Agent) Monitor(ctx context.Context, in replica.Info) error {
	return a.run(ctx, actMonitor, in, nil, nil)
}

// Checkpoint runs the agent's checkpoint action and streams what it
// writes to stdout into w. If it fails, w may have received part of a
// state, which the caller must discard. It does not use w after it
// returns.
func (a *Agent) Checkpoint(ctx context.Context, in replica.Info, w io.Writer) error {
	if w == nil {
		return a.invalid(in, actCheckpoint, "nil writer")
	}
	return a.run(ctx, actCheckpoint, in, nil, w)
}

// Restore runs the agent's restore action with r streamed into its
// stdin. The agent may exit 0 without reading all of r; the rest is left
// unread. It does not use r after it returns.
func (a *Agent) Restore(ctx context.Context, in replica.Info, r io.Reader) error {
	if r == nil {
		return a.invalid(in, actRestore, "nil reader")
	}
	return a.run(ctx, actRestore, in, r, nil)
}

// invalid is the error of a call with a bad argument.
func (a *Agent) invalid(in replica.Info, act action, what string) error {
	return fmt.Errorf("agent: service %q: %s: %s: %w", in.Service, act, what, core.ErrInvalidArgument)
}

// logger is the logger of one action.
func (a *Agent) logger(in replica.Info, act action) *slog.Logger {
	l := a.log
	if l == nil {
		l = slog.Default()
	}
	return l.With("service", in.Service, "action", act.String())
}
