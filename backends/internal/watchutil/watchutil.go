// Package watchutil holds the small pieces every backend's watcher uses:
// telling whether a re-read changed anything, and waiting between
// retries.
package watchutil

import (
	"context"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/concordha/concord/core"
)

// SameKVs reports whether a and b hold the same records: keys, values,
// versions and revisions, in the same order.
func SameKVs(a, b []core.KV) bool {
	return slices.EqualFunc(a, b, func(x, y core.KV) bool {
		return x.Key == y.Key && x.Revision == y.Revision && x.Version == y.Version && string(x.Value) == string(y.Value)
	})
}

// Sleep waits d, or less if ctx ends first; it reports whether d passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Jitter spreads retries of many watches over [d/2, d].
func Jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d/2+1)
}
