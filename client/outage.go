package client

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/concordha/concord/core"
)

// During a store outage, a Watch with a Check keeps the last primary
// valid while its own node proves it: the node answers that it is the
// primary with that token, and that its session cannot expire for
// validFor. As validFor counts from the node's answer, which came after
// the question was sent, the proof lasts until send time + validFor on
// the watcher's clock. A primary loses its role before its session ends
// only by resigning, after which its node answers "not the primary" and
// the proof ends at once; a node that does not answer leaves the last
// proof standing until it runs out.

// checkTimeout bounds one check; between checks the watcher waits a
// third of the proven time (so that a new proof comes well before the
// old one ends), within these bounds, or errorRecheck after a failure.
const (
	checkTimeout  = time.Second
	minRecheck    = 20 * time.Millisecond
	maxRecheck    = time.Second
	errorRecheck  = 100 * time.Millisecond
	noProofReason = "its primary's node has not proven yet that it still holds the role"
)

type checkResult struct {
	gen      int
	sent     time.Time
	token    int64
	validFor time.Duration
	err      error
}

// outage is a Watch's state during a store outage. Only follow's
// goroutine uses it, apart from the checker, which only sends results.
type outage struct {
	results chan checkResult
	gen     int
	cancel  context.CancelFunc // nil while no outage runs
	until   time.Time          // the proof's end; zero: none
	why     string             // why there is no proof now
	t       *time.Timer        // fires at until
}

func newOutage() *outage { return &outage{results: make(chan checkResult)} }

func (o *outage) running() bool { return o.cancel != nil }

// start checks the primary at api, in a goroutine of wg, until stop.
func (o *outage) start(ctx context.Context, check Check, api, service string, wg *sync.WaitGroup) {
	o.stop()
	o.gen++
	o.why = noProofReason
	if api == "" {
		o.why = "its primary's node publishes no API address to ask"
		o.cancel = func() {}
		return
	}
	cctx, cancel := context.WithCancel(ctx)
	o.cancel = cancel
	gen, results := o.gen, o.results
	wg.Go(func() { runChecks(cctx, check, api, service, gen, results) })
}

func runChecks(ctx context.Context, check Check, api, service string, gen int, results chan<- checkResult) {
	for {
		sent := time.Now()
		cctx, cancel := context.WithTimeout(ctx, checkTimeout)
		token, validFor, err := check(cctx, api, service)
		cancel()
		select {
		case results <- checkResult{gen: gen, sent: sent, token: token, validFor: validFor, err: err}:
		case <-ctx.Done():
			return
		}
		next := errorRecheck
		if err == nil {
			next = min(max(validFor/3, minRecheck), maxRecheck)
		}
		t := time.NewTimer(next)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
}

// take applies a check's result for the primary with token.
func (o *outage) take(res checkResult, token int64) {
	if !o.running() || res.gen != o.gen {
		return // a result of an outage that ended
	}
	switch {
	case errors.Is(res.err, core.ErrNotPrimary):
		o.end(fmt.Sprintf("its primary's node says it is no longer the primary: %v", res.err))
	case res.err != nil:
		// The last proof, if any, stands until it runs out.
		o.why = fmt.Sprintf("its primary's node cannot be asked: %v", res.err)
	case res.token != token:
		o.end(fmt.Sprintf("its primary's node answers with token %d, not %d", res.token, token))
	case res.validFor <= 0:
		o.end("its primary's node cannot prove how long its session lasts")
	default:
		if until := res.sent.Add(res.validFor); until.After(o.until) {
			o.until = until
			if o.t == nil {
				o.t = time.NewTimer(time.Until(until))
			} else {
				o.t.Reset(time.Until(until))
			}
		}
		o.why = "the proof that its primary's session is valid ran out"
	}
}

// end drops the proof.
func (o *outage) end(why string) {
	o.until, o.why = time.Time{}, why
	if o.t != nil {
		o.t.Stop()
	}
}

// proven reports whether the primary is proven valid at now.
func (o *outage) proven(now time.Time) bool { return o.running() && now.Before(o.until) }

// timer fires when the proof runs out; nil without one.
func (o *outage) timer() <-chan time.Time {
	if o.t == nil || o.until.IsZero() {
		return nil
	}
	return o.t.C
}

// reason says why the primary is not proven valid.
func (o *outage) reason() string { return o.why }

// stop ends the outage's checks and drops its proof.
func (o *outage) stop() {
	if o.cancel != nil {
		o.cancel()
		o.cancel = nil
	}
	o.end("")
}
