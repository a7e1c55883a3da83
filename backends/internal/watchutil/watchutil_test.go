package watchutil

import (
	"context"
	"testing"
	"time"

	"github.com/concordha/concord/core"
)

func TestSameKVs(t *testing.T) {
	a := []core.KV{{Key: "k", Value: []byte("v"), Version: 1, Revision: 2}}
	if !SameKVs(a, []core.KV{{Key: "k", Value: []byte("v"), Version: 1, Revision: 2}}) {
		t.Error("equal records reported different")
	}
	for _, b := range [][]core.KV{
		nil,
		{{Key: "k", Value: []byte("w"), Version: 1, Revision: 2}},
		{{Key: "k", Value: []byte("v"), Version: 3, Revision: 2}},
		{{Key: "k", Value: []byte("v"), Version: 1, Revision: 4}},
		{{Key: "j", Value: []byte("v"), Version: 1, Revision: 2}},
	} {
		if SameKVs(a, b) {
			t.Errorf("SameKVs(%v, %v) = true", a, b)
		}
	}
}

func TestSleepAndJitter(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if Sleep(ctx, time.Hour) {
		t.Error("Sleep on an ended context reported that the hour passed")
	}
	if !Sleep(context.Background(), time.Millisecond) {
		t.Error("Sleep of 1ms did not report that it passed")
	}
	for range 100 {
		if j := Jitter(time.Second); j < time.Second/2 || j > time.Second {
			t.Fatalf("Jitter(1s) = %v, outside [500ms, 1s]", j)
		}
	}
}
