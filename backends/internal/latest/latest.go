// Package latest holds the one-slot channel discipline of core.Store's
// Watch: a consumer that falls behind gets the newest value, never a
// backlog.
package latest

// Offer puts v into ch (capacity 1), replacing the value not yet
// received, if any. Only one goroutine may send on ch, so that after the
// drop there is room.
func Offer[T any](ch chan T, v T) {
	select {
	case ch <- v:
		return
	default:
	}
	select {
	case <-ch:
	default:
	}
	select {
	case ch <- v:
	default:
	}
}
