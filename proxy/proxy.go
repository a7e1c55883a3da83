// Package proxy forwards TCP connections for one service to the
// service's current primary.
//
// The proxy promises:
//
//   - With a valid endpoint, every accepted connection is dialed to it and
//     bytes are copied both ways, half-close aware, until both sides are
//     done or either fails.
//   - While there is no valid endpoint (an election runs, or the source
//     cannot tell who the primary is), new connections are held: accepted,
//     not refused, and nothing forwarded, for at most HoldTimeout each. A
//     valid endpoint forwards them; HoldTimeout closes them, with a log
//     line that says why. A failed dial to a valid endpoint holds the
//     connection too, and is retried with backoff within the same bound.
//   - When the endpoint names another primary (another fencing token) or
//     another address for the same primary, every connection forwarded to
//     the old one is closed at once: its client must reconnect, and
//     reaches the new one. A client never keeps talking to an endpoint the
//     proxy no longer forwards new connections to.
//   - An endpoint whose token is lower than the highest the proxy has seen
//     is ignored (and logged): the proxy never goes back to an older
//     primary.
//   - While the primary hands the service over (a switchover: an update
//     with Draining), new connections are held as above, and those
//     forwarded to that primary drain: each is closed as soon as it is at
//     rest (the last bytes came from the primary, then none either way
//     for 10ms: a request/response client is between requests), and the
//     rest when the drain's window ends, a margin before the primary
//     resigns. A client that retries a request on a connection closed
//     while idle (as HTTP clients do for idempotent requests) then loses
//     none. The next primary's endpoint releases the held connections; the
//     same primary's, if the handover failed, ends the drain.
//   - A state that is not valid does not close forwarded connections: the
//     old primary may still serve (a store blip, an election that keeps
//     it), and a deposed one is fenced by its token; they are closed when
//     a valid endpoint for another primary arrives, or when the proxy
//     stops.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for Config fields left zero.
const (
	DefaultHoldTimeout = 10 * time.Second
	DefaultDialTimeout = 2 * time.Second
)

// ErrAlreadyRun is returned by a second call to Run: a Proxy serves once.
var ErrAlreadyRun = errors.New("proxy: Run was already called")

// Config configures a Proxy.
type Config struct {
	// Service is the service's name, for logs.
	Service string
	// Listen is the address clients connect to, host:port (port 0 picks
	// a free one; see Proxy.Addr).
	Listen string
	// Source reports the service's endpoint.
	Source Source
	// HoldTimeout bounds how long a connection is held waiting for a
	// valid, reachable endpoint, counted from its accept. Default
	// DefaultHoldTimeout.
	HoldTimeout time.Duration
	// DialTimeout bounds one dial to the primary. Default
	// DefaultDialTimeout.
	DialTimeout time.Duration
	// Logger receives the proxy's logs. Default slog.Default().
	Logger *slog.Logger
}

// Stats counts what the proxy did with connections since New.
type Stats struct {
	// Accepted connections from clients.
	Accepted uint64 `json:"accepted"`
	// Forwarded connections: dialed to a primary and copying.
	Forwarded uint64 `json:"forwarded"`
	// Held connections: ones that had to wait at least once, for a valid
	// endpoint or after a failed dial.
	Held uint64 `json:"held"`
	// Expired connections: closed because HoldTimeout passed before they
	// could be forwarded.
	Expired uint64 `json:"expired"`
	// ClosedOnChange counts forwarded connections closed because the
	// endpoint changed to another primary or another address.
	ClosedOnChange uint64 `json:"closed_on_change"`
	// Refused connections: closed unforwarded for a reason other than
	// HoldTimeout (the proxy stopped while they were held).
	Refused uint64 `json:"refused"`
	// StaleUpdates counts updates ignored because their token was lower
	// than the highest seen, or their endpoint had no address or token.
	StaleUpdates uint64 `json:"stale_updates"`
	// Drained counts forwarded connections closed because their primary
	// handed over (a switchover): at rest, or at the end of the drain.
	Drained uint64 `json:"drained"`
}

// Proxy forwards one service's client connections to its primary. Create
// it with New, then call Run once.
type Proxy struct {
	cfg Config
	log *slog.Logger

	ran  atomic.Bool
	addr atomic.Pointer[net.Addr]

	mu sync.Mutex
	// state is the update the proxy acts on.
	state Update
	// maxToken is the highest token of any valid endpoint accepted.
	maxToken int64
	// changed is closed, and replaced, whenever state changes, to wake
	// held connections.
	changed chan struct{}
	// fwds are the forwarded connections, to close on a change.
	fwds map[*fwd]struct{}
	// stopping is set when Run is ending: no new forwarding.
	stopping bool
	// drainEnd is when the connections still forwarded to a primary that
	// hands over are closed; zero while no drain runs.
	drainEnd time.Time

	accepted, forwarded, held, expired, closedOnChange, refused, stale, drained atomic.Uint64
}

// New checks cfg, fills in defaults, and returns a Proxy that has not
// started yet.
func New(cfg Config) (*Proxy, error) {
	switch {
	case cfg.Service == "":
		return nil, errors.New("proxy: Config.Service is empty; set the service's name")
	case cfg.Listen == "":
		return nil, fmt.Errorf("proxy %q: Config.Listen is empty; set host:port to listen on (port 0 picks one)", cfg.Service)
	case cfg.Source == nil:
		return nil, fmt.Errorf("proxy %q: Config.Source is nil; give the source of the service's endpoint", cfg.Service)
	case cfg.HoldTimeout < 0:
		return nil, fmt.Errorf("proxy %q: Config.HoldTimeout is %v; set it positive, or 0 for the default %v", cfg.Service, cfg.HoldTimeout, DefaultHoldTimeout)
	case cfg.DialTimeout < 0:
		return nil, fmt.Errorf("proxy %q: Config.DialTimeout is %v; set it positive, or 0 for the default %v", cfg.Service, cfg.DialTimeout, DefaultDialTimeout)
	}
	if cfg.HoldTimeout == 0 {
		cfg.HoldTimeout = DefaultHoldTimeout
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Proxy{
		cfg:     cfg,
		log:     log.With("service", cfg.Service),
		state:   Update{Why: "no endpoint reported yet"},
		changed: make(chan struct{}),
		fwds:    make(map[*fwd]struct{}),
	}, nil
}

// Addr returns the address the proxy listens on, or nil before Run has
// started listening.
func (p *Proxy) Addr() net.Addr {
	if a := p.addr.Load(); a != nil {
		return *a
	}
	return nil
}

// Service returns the name of the service the proxy forwards to.
func (p *Proxy) Service() string { return p.cfg.Service }

// Current returns the state the proxy acts on: the last update it
// accepted.
func (p *Proxy) Current() Update {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state
}

// Stats returns the proxy's counters.
func (p *Proxy) Stats() Stats {
	return Stats{
		Accepted:       p.accepted.Load(),
		Forwarded:      p.forwarded.Load(),
		Held:           p.held.Load(),
		Expired:        p.expired.Load(),
		ClosedOnChange: p.closedOnChange.Load(),
		Refused:        p.refused.Load(),
		StaleUpdates:   p.stale.Load(),
		Drained:        p.drained.Load(),
	}
}

// Run listens on Config.Listen and serves until ctx ends; then it closes
// every connection, waits for all its goroutines, and returns nil. It
// returns an error if it cannot listen, or if the listener fails.
func (p *Proxy) Run(ctx context.Context) error {
	if !p.ran.CompareAndSwap(false, true) {
		return ErrAlreadyRun
	}
	ln, err := net.Listen("tcp", p.cfg.Listen)
	if err != nil {
		return fmt.Errorf("proxy %q: listen on %q (Config.Listen): %w", p.cfg.Service, p.cfg.Listen, err)
	}
	a := ln.Addr()
	p.addr.Store(&a)
	p.log.Info("proxy listening", "addr", a.String())

	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { p.watch(ctx) })
	wg.Go(func() {
		<-ctx.Done()
		ln.Close()
	})
	err = p.accept(ctx, ln, &wg)

	cancel()
	p.stop()
	wg.Wait()
	p.log.Info("proxy stopped")
	return err
}

// accept serves ln until it is closed. Errors other than a closed
// listener (running out of file descriptors, say) are retried with
// backoff, as they may pass.
func (p *Proxy) accept(ctx context.Context, ln net.Listener, wg *sync.WaitGroup) error {
	backoff := 5 * time.Millisecond
	for {
		c, err := ln.Accept()
		if err == nil {
			backoff = 5 * time.Millisecond
			p.accepted.Add(1)
			wg.Go(func() { p.serve(ctx, c) })
			continue
		}
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, net.ErrClosed) {
			return fmt.Errorf("proxy %q: listener on %v closed: %w", p.cfg.Service, ln.Addr(), err)
		}
		p.log.Warn("proxy accept failed; retrying", "err", err, "backoff", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil
		}
		backoff = min(2*backoff, time.Second)
	}
}

// watch applies the source's updates until ctx ends or the source stops,
// and closes drained connections while a drain runs.
func (p *Proxy) watch(ctx context.Context) {
	updates := p.cfg.Source.Updates(ctx)
	var tick *time.Ticker
	var tickC <-chan time.Time
	defer func() {
		if tick != nil {
			tick.Stop()
		}
	}()
	draining := false
	for {
		select {
		case <-ctx.Done():
			return
		case u, ok := <-updates:
			if !ok {
				if ctx.Err() == nil {
					p.log.Error("proxy endpoint source stopped; holding new connections until the proxy stops")
					p.apply(Update{Why: "endpoint source stopped"})
				}
				return
			}
			draining = p.apply(u)
		case now := <-tickC:
			draining = p.drainTick(now)
		}
		switch {
		case draining && tick == nil:
			tick = time.NewTicker(drainTick)
			tickC = tick.C
		case !draining && tick != nil:
			tick.Stop()
			tick, tickC = nil, nil
		}
	}
}

// drainTick is how often a drain looks for connections at rest.
const drainTick = 5 * time.Millisecond

// drainWindow is how long after it learns of a drain of d the proxy
// closes the connections still forwarded to the primary handing over: a
// margin before the primary resigns, for the time the news took to come.
func drainWindow(d time.Duration) time.Duration {
	return d - min(d/4, 500*time.Millisecond)
}

// apply makes u the state, unless it names an older primary, and closes
// the connections forwarded to an endpoint u replaces. It reports
// whether a drain runs.
func (p *Proxy) apply(u Update) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	ep := u.Endpoint
	if (u.Valid || u.Draining) && ep.Token < p.maxToken {
		p.stale.Add(1)
		p.log.Warn("proxy ignores an endpoint from an older primary", "endpoint", ep.String(), "highest_token", p.maxToken)
		return p.drainingLocked()
	}
	switch {
	case u.Valid:
		if ep.Addr == "" || ep.Token <= 0 {
			p.stale.Add(1)
			p.log.Warn("proxy ignores an endpoint without address or token", "endpoint", ep.String())
			return p.drainingLocked()
		}
		p.maxToken = ep.Token
		var closed int
		for f := range p.fwds {
			f.draining = false
			if !f.ep.samePrimaryAt(ep) {
				delete(p.fwds, f)
				f.close()
				closed++
			}
		}
		p.closedOnChange.Add(uint64(closed))
		if !p.drainEnd.IsZero() && closed == 0 && p.state.Draining && p.state.Endpoint.samePrimaryAt(ep) {
			p.log.Info("proxy: the primary stays after all; the drain ends", "endpoint", ep.String())
		}
		p.drainEnd = time.Time{}
		if !p.state.Valid || !p.state.Endpoint.samePrimaryAt(ep) {
			p.log.Info("proxy forwards to endpoint", "endpoint", ep.String(), "closed_connections", closed)
		}
	case u.Draining:
		p.maxToken = max(p.maxToken, ep.Token)
		if p.drainEnd.IsZero() {
			p.drainEnd = time.Now().Add(drainWindow(u.Drain))
			n := 0
			for f := range p.fwds {
				if f.ep.samePrimaryAt(ep) {
					f.draining = true
					n++
				}
			}
			p.log.Info("proxy holds new connections and drains those it has: the primary hands over",
				"endpoint", ep.String(), "drain", u.Drain, "connections", n)
		}
	default:
		if p.state.Valid {
			p.log.Warn("proxy holds new connections: no usable primary", "why", u.Why)
		}
	}
	p.state = u
	close(p.changed)
	p.changed = make(chan struct{})
	return p.drainingLocked()
}

// drainTick closes the draining connections that are at rest, and all of
// them once the drain's window has passed. It reports whether the drain
// goes on: some remain, and the state still drains.
func (p *Proxy) drainTick(now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drainEnd.IsZero() {
		return false
	}
	over := !now.Before(p.drainEnd)
	left := 0
	for f := range p.fwds {
		if !f.draining {
			continue
		}
		if over || f.atRest(now) {
			delete(p.fwds, f)
			f.close()
			p.drained.Add(1)
			continue
		}
		left++
	}
	// With none left the ticks stop; the state stays draining (new
	// connections held) until the source reports the next primary.
	return left > 0
}

// drainingLocked reports whether forwarded connections are draining.
func (p *Proxy) drainingLocked() bool {
	if p.drainEnd.IsZero() {
		return false
	}
	for f := range p.fwds {
		if f.draining {
			return true
		}
	}
	return false
}

// snapshot returns the state and the channel closed when it next changes.
func (p *Proxy) snapshot() (Update, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state, p.changed
}

// stop closes every forwarded connection and lets no new one start.
func (p *Proxy) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopping = true
	for f := range p.fwds {
		delete(p.fwds, f)
		f.close()
	}
}
