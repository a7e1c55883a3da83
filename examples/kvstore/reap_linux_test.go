package main

import "syscall"

// becomeSubreaper makes the test process adopt the daemons once the
// start action that launched them exits, so cleanup can reap them
// instead of leaving zombies behind an init that does not reap.
func becomeSubreaper() error {
	const prSetChildSubreaper = 36
	_, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0)
	if errno != 0 {
		return errno
	}
	return nil
}
