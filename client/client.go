// Package client finds the current primary of a concord service and
// follows it as it moves: the first of the three ways of reaching the
// primary (the others are the proxy and the node API's health checks).
//
// A service's primary publishes its client address in the store
// (core.EndpointRecord) once its service is promoted. A Resolver reads
// that record together with the service's primary record and the
// members, and trusts it only while it belongs to the current primary
// (its token is the primary record's revision) and that primary's
// session is live. So it never returns a former primary's address.
package client

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/concordha/concord/core"
)

// ErrNoPrimary means the service has no usable primary now: an election
// runs, the primary has not published its endpoint yet, its session
// ended, or it is handing the service over (a switchover). Retry, or
// Watch.
var ErrNoPrimary = errors.New("no usable primary")

// Endpoint is where a service's primary serves.
type Endpoint struct {
	Node    string
	Address string
	// Epoch and Token identify the primary's tenure; Token (the fencing
	// token) strictly increases from one primary to the next.
	Epoch int64
	Token int64
}

// Update is the state of a service as Watch reports it.
type Update struct {
	// Endpoint is the primary's, when Valid or Draining.
	Endpoint Endpoint
	// Valid is false while there is no usable primary; Why says why.
	Valid bool
	Why   string
	// Draining is set, with Valid false, while the primary in Endpoint
	// hands the service over (a switchover): open no new connection to
	// it; those already open may finish their work within Drain, after
	// which the primary resigns and stops taking writes.
	Draining bool
	Drain    time.Duration
}

// Resolver resolves services' primaries in one cluster.
type Resolver struct {
	st   core.Store
	keys core.Keys
	opts Options
}

// Options tune a Resolver.
type Options struct {
	// Check, if set, asks a primary's node whether it still holds the
	// role, and for how long its session is proven valid. Watch uses it
	// while the store cannot be watched, to keep the last primary valid
	// exactly as long as that proof lasts (HTTPCheck asks the node API).
	// Nil: a store outage makes the state not valid at once.
	Check Check
}

// Check asks the node API at api whether its node is service's primary,
// and returns the primary's fencing token and how long, counted from
// before the call, its session cannot expire. An error (including "not
// the primary") means no proof.
type Check func(ctx context.Context, api, service string) (token int64, validFor time.Duration, err error)

// New returns a Resolver for the cluster under prefix (core.Config.Prefix)
// in st.
func New(st core.Store, prefix string) (*Resolver, error) {
	return NewWithOptions(st, prefix, Options{})
}

// NewWithOptions is New with options.
func NewWithOptions(st core.Store, prefix string, opts Options) (*Resolver, error) {
	keys, err := core.NewKeys(prefix)
	if err != nil {
		return nil, err
	}
	return &Resolver{st: st, keys: keys, opts: opts}, nil
}

// Primary returns the service's current primary endpoint.
// Errors: one wrapping ErrNoPrimary that says why; the store's errors.
func (r *Resolver) Primary(ctx context.Context, service string) (Endpoint, error) {
	if err := core.ValidateName("service", service); err != nil {
		return Endpoint{}, fmt.Errorf("%w: %v", core.ErrInvalidArgument, err)
	}
	prim, err := r.st.Get(ctx, r.keys.Primary(service))
	if errors.Is(err, core.ErrNotFound) {
		return Endpoint{}, fmt.Errorf("%w: %q has never had a primary", ErrNoPrimary, service)
	}
	if err != nil {
		return Endpoint{}, err
	}
	ep, err := r.st.Get(ctx, r.keys.Endpoint(service))
	if err != nil && !errors.Is(err, core.ErrNotFound) {
		return Endpoint{}, err
	}
	var member *core.KV
	if rec, derr := core.DecodePrimary(prim); derr == nil && rec.Node != "" {
		kv, err := r.st.Get(ctx, r.keys.Member(rec.Node))
		switch {
		case err == nil:
			member = &kv
		case !errors.Is(err, core.ErrNotFound):
			return Endpoint{}, err
		}
	}
	u := judge(service, &prim, found(ep, err), member)
	if !u.Valid {
		return Endpoint{}, fmt.Errorf("%w: %s", ErrNoPrimary, u.Why)
	}
	return u.Endpoint, nil
}

func found(kv core.KV, err error) *core.KV {
	if err != nil {
		return nil
	}
	return &kv
}

// judge decides from the three records whether the endpoint is usable.
func judge(service string, prim, ep, member *core.KV) Update {
	if prim == nil {
		return Update{Why: fmt.Sprintf("%q has never had a primary", service)}
	}
	p, err := core.DecodePrimary(*prim)
	if err != nil {
		return Update{Why: err.Error()}
	}
	if p.Node == "" {
		return Update{Why: fmt.Sprintf("%q has no primary: an election is under way", service)}
	}
	if member == nil {
		return Update{Why: fmt.Sprintf("the primary %s of %q has left", p.Node, service)}
	}
	m, err := core.DecodeMember(*member)
	if err != nil || m.Session != p.Session {
		return Update{Why: fmt.Sprintf("the primary %s of %q lost its session", p.Node, service)}
	}
	if ep == nil {
		return Update{Why: fmt.Sprintf("the primary %s of %q has not published its endpoint yet", p.Node, service)}
	}
	e, err := core.DecodeEndpoint(*ep)
	if err != nil {
		return Update{Why: err.Error()}
	}
	if e.Token != prim.Revision || e.Session != p.Session {
		return Update{Why: fmt.Sprintf("the primary %s of %q (token %d) has not published its endpoint yet (the record is of token %d)", p.Node, service, prim.Revision, e.Token)}
	}
	at := Endpoint{Node: e.Node, Address: e.Address, Epoch: e.Epoch, Token: e.Token}
	if e.Draining {
		return Update{Endpoint: at, Draining: true, Drain: time.Duration(e.DrainMillis) * time.Millisecond,
			Why: fmt.Sprintf("the primary %s of %q (token %d) is handing the service over: wait for the next primary", e.Node, service, e.Token)}
	}
	return Update{Valid: true, Endpoint: at}
}

// Watch follows the service's primary: the channel delivers the current
// state, then every change, the newest first if the reader falls behind
// (it holds one update at most). A valid endpoint's token never goes down
// along the channel. While the store cannot be watched, the state is not
// valid (nothing proves the last primary is still the primary), unless
// the Resolver has a Check (see Options): then the last primary stays
// valid for as long as its own node proves its session valid. The
// channel is closed when ctx ends.
func (r *Resolver) Watch(ctx context.Context, service string) (<-chan Update, error) {
	if err := core.ValidateName("service", service); err != nil {
		return nil, fmt.Errorf("%w: %v", core.ErrInvalidArgument, err)
	}
	out := make(chan Update, 1)
	go r.follow(ctx, service, out)
	return out, nil
}

type part struct {
	which int // 0 members, 1 primaries, 2 endpoints
	snap  core.Snapshot
}

func (r *Resolver) follow(ctx context.Context, service string, out chan Update) {
	defer close(out)
	ctx, cancel := context.WithCancel(ctx)
	parts := make(chan part)
	prefixes := []string{r.keys.Members(), r.keys.Primaries(), r.keys.Endpoints()}
	var wg sync.WaitGroup
	for i, p := range prefixes {
		wg.Go(func() { r.watchPrefix(ctx, i, p, parts) })
	}
	// On return: cancel, which stops the watchers and an outage's
	// checker, and wait for them (deferred calls run last first).
	defer wg.Wait()
	defer cancel()

	var snaps [3]*core.Snapshot
	var last Update
	sent := false
	highest := int64(0)
	// good is the last valid state read from the store, and api the
	// address of its primary's node API; o runs the checks of an outage.
	var good Update
	var api string
	o := newOutage()
	defer o.stop()
	for {
		select {
		case <-ctx.Done():
			return
		case p := <-parts:
			s := p.snap
			snaps[p.which] = &s
		case res := <-o.results:
			o.take(res, good.Endpoint.Token)
		case <-o.timer():
			// The proof ran out: the state is judged again below.
		}
		if snaps[0] == nil || snaps[1] == nil || snaps[2] == nil {
			continue // the first state is the one all three parts make
		}
		var u Update
		switch {
		case snaps[0].Err != nil || snaps[1].Err != nil || snaps[2].Err != nil:
			if !good.Valid || r.opts.Check == nil {
				u.Why = "the store cannot be watched now: nothing proves the last primary is still the primary"
				break
			}
			if !o.running() {
				o.start(ctx, r.opts.Check, api, service, &wg)
			}
			if o.proven(time.Now()) {
				u = good
			} else {
				u.Why = "the store cannot be watched now, and " + o.reason()
			}
		default:
			o.stop()
			prim := pick(snaps[1], r.keys.Primary(service))
			var member *core.KV
			if prim != nil {
				if rec, err := core.DecodePrimary(*prim); err == nil && rec.Node != "" {
					member = pick(snaps[0], r.keys.Member(rec.Node))
				}
			}
			u = judge(service, prim, pick(snaps[2], r.keys.Endpoint(service)), member)
			if (u.Valid || u.Draining) && u.Endpoint.Token < highest {
				u = Update{Why: fmt.Sprintf("the store shows token %d, older than %d already seen", u.Endpoint.Token, highest)}
			}
			good, api = Update{}, ""
			if u.Valid {
				good = u
				if m, err := core.DecodeMember(*member); err == nil {
					api = m.Address
				}
			}
		}
		if u.Valid {
			highest = u.Endpoint.Token
		}
		if sent && u == last {
			continue
		}
		last, sent = u, true
		select {
		case <-out: // the reader has not taken the previous one: replace it
		default:
		}
		out <- u
	}
}

// watchPrefix feeds the snapshots of prefix into parts until ctx ends,
// watching again after a failure (whose snapshot, with its Err, is fed
// too).
func (r *Resolver) watchPrefix(ctx context.Context, which int, prefix string, parts chan<- part) {
	delay := 50 * time.Millisecond
	for ctx.Err() == nil {
		ch, err := r.st.Watch(ctx, prefix)
		if err == nil {
			for s := range ch {
				select {
				case parts <- part{which, s}:
				case <-ctx.Done():
					return
				}
				if s.Err == nil {
					delay = 50 * time.Millisecond
				}
			}
		} else {
			select {
			case parts <- part{which, core.Snapshot{Err: err}}:
			case <-ctx.Done():
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, 2*time.Second)
	}
}

func pick(s *core.Snapshot, key string) *core.KV {
	for i := range s.KVs {
		if s.KVs[i].Key == key {
			return &s.KVs[i]
		}
	}
	return nil
}
