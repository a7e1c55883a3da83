package latest

import "testing"

func TestOfferKeepsTheNewest(t *testing.T) {
	ch := make(chan int, 1)
	Offer(ch, 1)
	Offer(ch, 2)
	Offer(ch, 3)
	if got := <-ch; got != 3 {
		t.Fatalf("received %d, want the newest, 3", got)
	}
	select {
	case v := <-ch:
		t.Fatalf("a second value %d was queued", v)
	default:
	}
	Offer(ch, 4)
	if got := <-ch; got != 4 {
		t.Fatalf("received %d after draining, want 4", got)
	}
}
