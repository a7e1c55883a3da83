//go:build integration && !linux

package integration

import "syscall"

// nodeProcAttr: only Linux can tie a child's life to its parent's.
func nodeProcAttr() *syscall.SysProcAttr { return nil }
