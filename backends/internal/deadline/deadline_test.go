package deadline

import (
	"testing"
	"time"
)

func TestDeadline(t *testing.T) {
	var d Deadline
	base := time.Unix(1000, 0)
	d.Advance(base.Add(3 * time.Second))
	d.Advance(base.Add(time.Second)) // earlier: ignored
	if got := d.Get(); !got.Equal(base.Add(3 * time.Second)) {
		t.Fatalf("Get = %v, want the later deadline", got)
	}
	ran := false
	d.End(base.Add(2*time.Second), func() { ran = true })
	if !ran || !d.Get().Equal(base.Add(2*time.Second)) {
		t.Fatalf("End: ran %v, deadline %v; want it frozen at the end", ran, d.Get())
	}
	d.Advance(base.Add(time.Hour))
	if !d.Get().Equal(base.Add(2 * time.Second)) {
		t.Fatalf("advanced after the end: %v", d.Get())
	}

	var late Deadline
	late.Advance(base)
	late.End(base.Add(time.Second), func() {})
	if !late.Get().Equal(base) {
		t.Fatalf("an end after the deadline moved it: %v", late.Get())
	}
}
