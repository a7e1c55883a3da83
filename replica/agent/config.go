package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/concordha/concord/core"
)

// Config describes a resource agent. Only Command is required.
type Config struct {
	// Command is the agent's executable: a path, or a bare name looked up
	// in PATH. A relative path is taken relative to Dir.
	Command string
	// Args go before the action name: Command Args... ACTION.
	Args []string
	// Dir is the working directory of every action; "" is concord's.
	Dir string
	// Params are the user's parameters of the agent, passed in the
	// environment as CONCORD_PARAM_<NAME> and OCF_RESKEY_<name>. Names
	// hold letters, digits and '_' only, and must stay distinct when
	// upper-cased.
	Params map[string]string
	// Env holds extra "KEY=value" entries for the agent's environment,
	// such as CONCORD_API and CONCORD_API_TOKEN.
	Env []string
	// Timeouts bound each action; zero fields take DefaultTimeouts.
	Timeouts Timeouts
	// Logger receives the agent's output and failures; nil is
	// slog.Default().
	Logger *slog.Logger
}

// Timeouts bound each action's run. An action that overruns is killed
// and fails.
type Timeouts struct {
	Start      time.Duration
	Stop       time.Duration
	Promote    time.Duration
	Demote     time.Duration
	Monitor    time.Duration
	Checkpoint time.Duration
	Restore    time.Duration
}

// DefaultTimeouts returns the timeouts that zero fields of
// Config.Timeouts take.
func DefaultTimeouts() Timeouts {
	return Timeouts{
		Start:      60 * time.Second,
		Stop:       60 * time.Second,
		Promote:    30 * time.Second,
		Demote:     30 * time.Second,
		Monitor:    10 * time.Second,
		Checkpoint: 120 * time.Second,
		Restore:    120 * time.Second,
	}
}

// timeoutField is one action's field of a Timeouts.
type timeoutField struct {
	act action
	d   *time.Duration
}

// fields lists the timeouts by action, for validation and defaulting.
func (t *Timeouts) fields() []timeoutField {
	return []timeoutField{
		{actStart, &t.Start}, {actStop, &t.Stop}, {actPromote, &t.Promote},
		{actDemote, &t.Demote}, {actMonitor, &t.Monitor},
		{actCheckpoint, &t.Checkpoint}, {actRestore, &t.Restore},
	}
}

// withDefaults fills the zero fields from DefaultTimeouts.
func (t Timeouts) withDefaults() Timeouts {
	def := DefaultTimeouts()
	df := def.fields()
	for i, f := range t.fields() {
		if *f.d == 0 {
			*f.d = *df[i].d
		}
	}
	return t
}

// of returns the timeout of act.
func (t Timeouts) of(act action) time.Duration {
	for _, f := range t.fields() {
		if f.act == act {
			return *f.d
		}
	}
	return 0
}

// Validate checks the configuration and names every bad field, as the
// agent.* settings of the configuration file. It checks that Command is
// an executable file now; New calls it.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("agent: "+format+": %w", append(a, core.ErrInvalidArgument)...))
	}

	if c.Dir != "" {
		if fi, err := os.Stat(c.Dir); err != nil {
			bad("agent.dir %q: %v: set it to an existing directory, or leave it empty", c.Dir, err)
		} else if !fi.IsDir() {
			bad("agent.dir %q is not a directory: set it to an existing directory, or leave it empty", c.Dir)
		}
	}
	if err := checkCommand(c.Command, c.Dir); err != nil {
		errs = append(errs, fmt.Errorf("%w: %w", err, core.ErrInvalidArgument))
	}
	for i, a := range c.Args {
		if strings.IndexByte(a, 0) >= 0 {
			bad("agent.args[%d] holds a NUL byte: remove it", i)
		}
	}

	names := make([]string, 0, len(c.Params))
	for name := range c.Params {
		names = append(names, name)
	}
	sort.Strings(names)
	upper := make(map[string]string, len(names))
	for _, name := range names {
		if !validParamName(name) {
			bad("agent.params: name %q: use letters, digits and '_' only, as it becomes an environment variable", name)
			continue
		}
		if other, ok := upper[strings.ToUpper(name)]; ok {
			bad("agent.params: names %q and %q are both CONCORD_PARAM_%s: rename one", other, name, strings.ToUpper(name))
		}
		upper[strings.ToUpper(name)] = name
		if strings.IndexByte(c.Params[name], 0) >= 0 {
			bad("agent.params.%s: value holds a NUL byte: remove it", name)
		}
	}

	for i, kv := range c.Env {
		k, _, ok := strings.Cut(kv, "=")
		switch {
		case !ok || k == "":
			bad("agent.env[%d] %q: want KEY=value", i, kv)
		case strings.IndexByte(kv, 0) >= 0:
			bad("agent.env[%d] (%s) holds a NUL byte: remove it", i, k)
		}
	}

	for _, f := range c.Timeouts.fields() {
		if *f.d < 0 {
			bad("agent.timeouts.%s is %v: want a positive duration, or 0 for the default %v", f.act, *f.d, DefaultTimeouts().of(f.act))
		}
	}
	return errors.Join(errs...)
}

// checkCommand checks that command names an executable file, resolving
// it as exec.Cmd will.
func checkCommand(command, dir string) error {
	if command == "" {
		return errors.New("agent: agent.command is empty: set it to the path of the resource agent's executable")
	}
	path := command
	if !strings.ContainsRune(command, filepath.Separator) && !strings.ContainsRune(command, '/') {
		p, err := exec.LookPath(command)
		if err != nil {
			return fmt.Errorf("agent: agent.command %q: %v: give the executable's path", command, err)
		}
		path = p
	} else if !filepath.IsAbs(command) && dir != "" {
		path = filepath.Join(dir, command)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("agent: agent.command %q: %v: set it to the path of the resource agent's executable", command, err)
	}
	if fi.IsDir() {
		return fmt.Errorf("agent: agent.command %q is a directory: set it to the path of the resource agent's executable", command)
	}
	if _, err := exec.LookPath(path); err != nil {
		return fmt.Errorf("agent: agent.command %q is not executable (mode %v): make it executable (chmod +x)", command, fi.Mode().Perm())
	}
	return nil
}

// validParamName reports whether name is a non-empty run of ASCII
// letters, digits and '_'.
func validParamName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		b := name[i]
		if !('a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' || b == '_') {
			return false
		}
	}
	return true
}
