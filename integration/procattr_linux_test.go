//go:build integration && linux

package integration

import "syscall"

// nodeProcAttr makes the kernel kill a node if the test process dies
// without its cleanup (killed, or a -timeout panic), so that no orphaned
// node keeps running.
func nodeProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
