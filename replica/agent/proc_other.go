//go:build !linux

package agent

import (
	"os"
	"os/exec"
)

// setProcessGroup does nothing here: only the agent's own process is
// killed on a timeout, not what it started.
func setProcessGroup(*exec.Cmd) {}

// terminate kills the agent's process.
func terminate(p *os.Process) { _ = p.Kill() }

// kill kills the agent's process.
func kill(p *os.Process) { _ = p.Kill() }

// groupAlive reports false: there is no group to wait for.
func groupAlive(*os.Process) bool { return false }
