package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Dial retry backoff after a failed dial to a valid endpoint: the primary
// may be just starting, so retry soon, then less often.
const (
	minDialBackoff = 20 * time.Millisecond
	maxDialBackoff = 500 * time.Millisecond
)

// restQuiet is how long a forwarded connection must have moved no byte,
// after bytes from the primary, to count as at rest: between a response
// and the next request, or idle.
const restQuiet = 10 * time.Millisecond

// fwd is a connection forwarded to ep.
type fwd struct {
	ep         Endpoint
	client, up net.Conn
	once       sync.Once
	// fromClient and fromUp are when bytes last came from each side
	// (UnixNano); fromUp starts at the forwarding's start.
	fromClient, fromUp atomic.Int64
	// draining is set, under Proxy.mu, while its primary hands over.
	draining bool
}

// atRest reports whether nothing is in flight on f: the last bytes came
// from the primary (a response, or a greeting), and none moved either
// way for restQuiet. A request/response client is then between requests.
func (f *fwd) atRest(now time.Time) bool {
	c, u := f.fromClient.Load(), f.fromUp.Load()
	return u >= c && now.UnixNano()-u >= int64(restQuiet)
}

// close closes both sides; the copies then end.
func (f *fwd) close() {
	f.once.Do(func() {
		f.client.Close()
		f.up.Close()
	})
}

// serve holds client until it can be forwarded to a valid, reachable
// endpoint or HoldTimeout passes, then copies until the connection ends.
func (p *Proxy) serve(ctx context.Context, client net.Conn) {
	start := time.Now()
	deadline := start.Add(p.cfg.HoldTimeout)
	hold := time.NewTimer(p.cfg.HoldTimeout)
	defer hold.Stop()
	var (
		wasHeld bool
		why     string // the last reason the connection had to wait
		backoff = minDialBackoff
	)
	markHeld := func() {
		if !wasHeld {
			wasHeld = true
			p.held.Add(1)
		}
	}
	expire := func() {
		p.expired.Add(1)
		p.log.Warn("proxy closes a connection held too long",
			"client", client.RemoteAddr().String(), "held", time.Since(start).Round(time.Millisecond), "why", why)
		client.Close()
	}
	refuse := func() {
		p.refused.Add(1)
		client.Close()
	}
	for {
		if ctx.Err() != nil {
			refuse()
			return
		}
		st, changed := p.snapshot()
		if !st.Valid {
			why = st.Why
			markHeld()
			select {
			case <-changed:
			case <-hold.C:
				expire()
				return
			case <-ctx.Done():
				refuse()
				return
			}
			continue
		}
		up, err := p.dial(ctx, st.Endpoint, deadline)
		if err != nil {
			if ctx.Err() != nil {
				refuse()
				return
			}
			why = fmt.Sprintf("dial primary %v: %v", st.Endpoint, err)
			markHeld()
			retry := time.NewTimer(backoff)
			select {
			case <-retry.C:
				backoff = min(2*backoff, maxDialBackoff)
			case <-changed:
				retry.Stop()
				backoff = minDialBackoff
			case <-hold.C:
				retry.Stop()
				expire()
				return
			case <-ctx.Done():
				retry.Stop()
				refuse()
				return
			}
			continue
		}
		f := &fwd{ep: st.Endpoint, client: client, up: up}
		f.fromUp.Store(time.Now().UnixNano())
		if !p.register(f) {
			// The endpoint changed, or the proxy stops, while dialing.
			up.Close()
			continue
		}
		p.forwarded.Add(1)
		f.pipe()
		p.unregister(f)
		return
	}
}

// dial dials ep, for at most DialTimeout and not past deadline.
func (p *Proxy) dial(ctx context.Context, ep Endpoint, deadline time.Time) (net.Conn, error) {
	timeout := min(p.cfg.DialTimeout, time.Until(deadline))
	if timeout <= 0 {
		// The hold timer fires now; give it a reason to report.
		return nil, fmt.Errorf("no time left to dial within HoldTimeout %v", p.cfg.HoldTimeout)
	}
	d := net.Dialer{Timeout: timeout}
	return d.DialContext(ctx, "tcp", ep.Addr)
}

// register adds f to the forwarded connections if its endpoint is still
// the current one, so that a change made during the dial closes it.
func (p *Proxy) register(f *fwd) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopping || !p.state.Valid || !p.state.Endpoint.samePrimaryAt(f.ep) {
		return false
	}
	p.fwds[f] = struct{}{}
	return true
}

// unregister forgets f once its forwarding ended.
func (p *Proxy) unregister(f *fwd) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.fwds, f)
}

// pipe copies both ways until both directions ended, then closes both
// sides. A direction that ends cleanly (EOF) half-closes its destination,
// so the peer sees the end of input and the other direction can still
// finish; one that fails closes everything.
func (f *fwd) pipe() {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.copy(f.up, f.client, &f.fromClient)
	}()
	f.copy(f.client, f.up, &f.fromUp)
	<-done
	f.close()
}

// copy copies src to dst, noting in seen when bytes last came.
func (f *fwd) copy(dst, src net.Conn, seen *atomic.Int64) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			seen.Store(time.Now().UnixNano())
			if _, werr := dst.Write(buf[:n]); werr != nil {
				f.close()
				return
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			f.close()
			return
		}
	}
	cw, ok := dst.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		f.close()
	}
}
