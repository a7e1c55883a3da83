//go:build linux

package agent

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
)

// setProcessGroup makes the agent lead a process group of its own, so
// that a timeout can kill whatever it started too.
func setProcessGroup(c *exec.Cmd) {
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}

// terminate sends SIGTERM to the agent's process group.
func terminate(p *os.Process) { _ = syscall.Kill(-p.Pid, syscall.SIGTERM) }

// kill sends SIGKILL to the agent's process group.
func kill(p *os.Process) { _ = syscall.Kill(-p.Pid, syscall.SIGKILL) }

// groupAlive reports whether a process of the agent's group is left
// (zombies included).
func groupAlive(p *os.Process) bool {
	return !errors.Is(syscall.Kill(-p.Pid, 0), syscall.ESRCH)
}
