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

// Receive reads ch until want accepts a value, and returns it and when it
// came. It fails t, with what and the last value refused, if within
// passes first or ch closes.
func Receive[T any](t testing.TB, ch <-chan T, within time.Duration, what string, want func(T) bool) (T, time.Time) {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	var last any = "nothing"
	for {
		select {
		case v, ok := <-ch:
			if !ok {
				t.Fatalf("%s: the channel closed (last refused: %+v)", what, last)
			}
			if want(v) {
				return v, time.Now()
			}
			last = v
		case <-deadline.C:
			t.Fatalf("%s: nothing within %v (last refused: %+v)", what, within, last)
		}
	}
}
