// Package leakcheck is the goroutine-leak check of test binaries that
// start etcd members.
//
// A stopped member of a multi-member embedded etcd keeps its peer HTTP
// connections (raft traffic between members) up to twice etcd's
// rafthttp.ConnReadTimeout (5s) after Close: etcd's listener sets a fresh
// read deadline on every Read, which can undo the one net/http sets to
// abort a pending read, so such a connection ends only when that read
// times out, then the next. goleak.VerifyTestMain waits far less than
// that, so these packages wait longer, and still ignore nothing.
package leakcheck

import (
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// LingerBound is how long goroutines may outlive the tests.
const LingerBound = 15 * time.Second

// Main runs the tests, then, if they passed, fails the binary unless
// every goroutine they started ends within LingerBound.
func Main(m *testing.M) {
	code := m.Run()
	if code == 0 {
		code = Verify(LingerBound)
	}
	os.Exit(code)
}

// Verify waits up to bound for every goroutine but the caller's to end.
// It returns 0 when they did, and otherwise prints them and returns 1:
// an exit code, for a TestMain that has work of its own to do after
// m.Run and so cannot use Main.
func Verify(bound time.Duration) int {
	deadline := time.Now().Add(bound)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		err := goleak.Find()
		if err == nil {
			return 0
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(os.Stderr, "goleak: goroutines still running %v after the tests: %v\n", bound, err)
			return 1
		}
		<-tick.C
	}
}
