// Package poll is the bounded wait that tests use instead of sleeps.
package poll

import (
	"testing"
	"time"
)

// Eventually polls cond until it returns nil, and fails t with what and
// cond's last error if timeout passes first. It polls every timeout/500,
// between 1ms and 10ms.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	Every(t, min(max(timeout/500, time.Millisecond), 10*time.Millisecond), timeout, what, cond)
}

// Every is Eventually polling every tick: a slower tick keeps a loaded
// machine from spending its time on the polls.
func Every(t testing.TB, tick, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tk := time.NewTicker(tick)
	defer tk.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not true after %v: %v", what, timeout, err)
		}
		<-tk.C
	}
}
