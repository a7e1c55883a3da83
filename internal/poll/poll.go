// Package poll is the bounded wait that tests use instead of sleeps.
package poll

import (
	"testing"
	"time"
)

// Eventually polls cond until it returns nil, and fails t with what and
// cond's last error if timeout passes first.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(min(max(timeout/500, time.Millisecond), 10*time.Millisecond))
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not true after %v: %v", what, timeout, err)
		}
		<-tick.C
	}
}
