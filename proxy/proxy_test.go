package proxy

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestNewChecksConfig(t *testing.T) {
	src := newFakeSource()
	for _, tc := range []struct {
		name  string
		cfg   Config
		field string
	}{
		{"no service", Config{Listen: ":0", Source: src}, "Service"},
		{"no listen", Config{Service: "s", Source: src}, "Listen"},
		{"no source", Config{Service: "s", Listen: ":0"}, "Source"},
		{"negative hold", Config{Service: "s", Listen: ":0", Source: src, HoldTimeout: -1}, "HoldTimeout"},
		{"negative dial", Config{Service: "s", Listen: ":0", Source: src, DialTimeout: -1}, "DialTimeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), "Config."+tc.field) {
				t.Fatalf("New: got %v, want an error naming Config.%s", err, tc.field)
			}
		})
	}
	p, err := New(Config{Service: "s", Listen: ":0", Source: src})
	if err != nil {
		t.Fatal(err)
	}
	if p.cfg.HoldTimeout != DefaultHoldTimeout || p.cfg.DialTimeout != DefaultDialTimeout {
		t.Errorf("defaults: hold %v dial %v", p.cfg.HoldTimeout, p.cfg.DialTimeout)
	}
	if p.Addr() != nil {
		t.Errorf("Addr before Run = %v, want nil", p.Addr())
	}
}

func TestRunListenErrorAndOnce(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	p, err := New(Config{Service: "s", Listen: busy.Addr().String(), Source: newFakeSource()})
	if err != nil {
		t.Fatal(err)
	}
	err = p.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "Config.Listen") {
		t.Fatalf("Run on a busy address: got %v, want an error naming Config.Listen", err)
	}
	if err := p.Run(context.Background()); !errors.Is(err, ErrAlreadyRun) {
		t.Fatalf("second Run: got %v, want ErrAlreadyRun", err)
	}
}

func TestForwardsAndHalfCloses(t *testing.T) {
	a := startEcho(t, "")
	r := startProxy(t, time.Second)
	r.use(t, a.endpoint("n1", 1))

	c := r.dial(t)
	roundTrip(t, c, "hello")
	roundTrip(t, c, strings.Repeat("x", 100_000))

	// The client ends its side: the proxy must pass the half-close on, so
	// the echo server sees EOF, sends what it still has, and closes.
	if _, err := c.Write([]byte("last words")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(waitFor))
	rest, err := io.ReadAll(c)
	if err != nil || string(rest) != "last words" {
		t.Fatalf("after CloseWrite: read %q, %v; want the echo then EOF", rest, err)
	}
	r.waitStats(t, "one forwarded", func(s Stats) bool {
		return s.Accepted == 1 && s.Forwarded == 1 && s.Held == 0
	})
}

func TestHeldWhileInvalidThenForwarded(t *testing.T) {
	a := startEcho(t, "")
	r := startProxy(t, waitFor)
	r.use(t, Update{Why: "election running"})

	c := r.dial(t)
	if _, err := c.Write([]byte("early")); err != nil {
		t.Fatal(err)
	}
	r.waitStats(t, "connection held", func(s Stats) bool { return s.Accepted == 1 && s.Held == 1 })
	if n := a.accepted.Load(); n != 0 {
		t.Fatalf("primary got %d connections while the state was invalid", n)
	}

	r.src.push(t, a.endpoint("n1", 1))
	c.SetReadDeadline(time.Now().Add(waitFor))
	got := make([]byte, 5)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "early" {
		t.Fatalf("held bytes: read %q, %v; want them forwarded once valid", got, err)
	}
	roundTrip(t, c, "later")
	if s := r.p.Stats(); s.Forwarded != 1 || s.Expired != 0 {
		t.Fatalf("stats %+v: want 1 forwarded, 0 expired", s)
	}
}

func TestHoldTimeoutCloses(t *testing.T) {
	r := startProxy(t, 200*time.Millisecond)
	r.use(t, Update{Why: "election running"})

	start := time.Now()
	c := r.dial(t)
	expectClosed(t, c, waitFor)
	if held := time.Since(start); held < 200*time.Millisecond {
		t.Fatalf("closed after %v, before HoldTimeout", held)
	}
	r.waitStats(t, "expired", func(s Stats) bool { return s.Expired == 1 && s.Held == 1 && s.Forwarded == 0 })
	if _, ok := r.log.find("held too long", "service=svc", "held=", "why=election running"); !ok {
		t.Fatalf("no log line with service, time held and why; logs:\n%s", r.log.all())
	}
}

func TestPrimaryReplacedClosesOldConnections(t *testing.T) {
	a, b := startEcho(t, ""), startEcho(t, "")
	r := startProxy(t, waitFor)
	r.use(t, a.endpoint("n1", 1))
	old1, old2 := r.dial(t), r.dial(t)
	roundTrip(t, old1, "one")
	roundTrip(t, old2, "two")

	r.src.push(t, b.endpoint("n2", 2))
	// "At once": far sooner than any timeout of the proxy.
	expectClosed(t, old1, time.Second)
	expectClosed(t, old2, time.Second)
	r.waitStats(t, "two closed on change", func(s Stats) bool { return s.ClosedOnChange == 2 })

	c := r.dial(t)
	roundTrip(t, c, "new")
	if na, nb := a.accepted.Load(), b.accepted.Load(); na != 2 || nb != 1 {
		t.Fatalf("connections: a %d, b %d; want the new one on b", na, nb)
	}
	if _, ok := r.log.find("forwards to endpoint", "token 2", "closed_connections=2"); !ok {
		t.Fatalf("no log of the change; logs:\n%s", r.log.all())
	}
}

func TestLowerTokenIgnored(t *testing.T) {
	a, b := startEcho(t, ""), startEcho(t, "")
	r := startProxy(t, waitFor)
	r.use(t, b.endpoint("n2", 5))
	c := r.dial(t)
	roundTrip(t, c, "before")

	r.src.push(t, a.endpoint("n1", 4))
	r.waitStats(t, "stale update counted", func(s Stats) bool { return s.StaleUpdates == 1 })
	if u := r.p.Current(); u.Endpoint.Addr != b.addr() || u.Endpoint.Token != 5 {
		t.Fatalf("current %+v; want b, token 5, kept", u)
	}
	roundTrip(t, c, "still on b")
	c2 := r.dial(t)
	roundTrip(t, c2, "new on b")
	if a.accepted.Load() != 0 {
		t.Fatal("the stale primary got a connection")
	}
	if _, ok := r.log.find("older primary", "token 4", "highest_token=5"); !ok {
		t.Fatalf("no log of the ignored update; logs:\n%s", r.log.all())
	}

	// The highest token is remembered across a period without a primary.
	r.src.push(t, Update{Why: "store lost"})
	r.src.push(t, a.endpoint("n1", 3))
	r.waitStats(t, "second stale update counted", func(s Stats) bool { return s.StaleUpdates == 2 })
	if u := r.p.Current(); u.Valid {
		t.Fatalf("current %+v; want the invalid state kept", u)
	}
	// And a malformed endpoint is ignored too.
	r.src.push(t, Update{Valid: true, Endpoint: Endpoint{Token: 9}})
	r.waitStats(t, "malformed update counted", func(s Stats) bool { return s.StaleUpdates == 3 })
}

func TestSameTokenNewAddress(t *testing.T) {
	a, b := startEcho(t, ""), startEcho(t, "")
	r := startProxy(t, waitFor)
	r.use(t, a.endpoint("n1", 7))
	old := r.dial(t)
	roundTrip(t, old, "on a")

	// A repeat of the same endpoint changes nothing.
	r.src.push(t, a.endpoint("n1", 7))
	r.src.push(t, b.endpoint("n1", 7))
	expectClosed(t, old, time.Second)
	r.waitStats(t, "closed on the move", func(s Stats) bool { return s.ClosedOnChange == 1 })
	c := r.dial(t)
	roundTrip(t, c, "on b")
	if nb := b.accepted.Load(); nb != 1 {
		t.Fatalf("b got %d connections, want 1", nb)
	}
}

func TestInvalidKeepsForwardedConnections(t *testing.T) {
	a := startEcho(t, "")
	r := startProxy(t, waitFor)
	r.use(t, a.endpoint("n1", 1))
	c := r.dial(t)
	roundTrip(t, c, "before")

	r.use(t, Update{Why: "store lost"})
	roundTrip(t, c, "during")
	r.use(t, a.endpoint("n1", 1))
	roundTrip(t, c, "after")
	if s := r.p.Stats(); s.ClosedOnChange != 0 {
		t.Fatalf("stats %+v: want nothing closed", s)
	}
}

func TestDialFailureRetriedWithinHold(t *testing.T) {
	addr := freeAddr(t)
	r := startProxy(t, waitFor)
	r.use(t, Update{Valid: true, Endpoint: Endpoint{Node: "n1", Addr: addr, Token: 1}})

	c := r.dial(t)
	if _, err := c.Write([]byte("waiting")); err != nil {
		t.Fatal(err)
	}
	r.waitStats(t, "held after a failed dial", func(s Stats) bool { return s.Held == 1 })
	startEcho(t, addr) // the primary comes up
	c.SetReadDeadline(time.Now().Add(waitFor))
	got := make([]byte, 7)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "waiting" {
		t.Fatalf("read %q, %v; want the echo once the primary is up", got, err)
	}
	if s := r.p.Stats(); s.Forwarded != 1 || s.Expired != 0 {
		t.Fatalf("stats %+v: want 1 forwarded, 0 expired", s)
	}
}

func TestDialFailureExpires(t *testing.T) {
	addr := freeAddr(t)
	r := startProxy(t, 200*time.Millisecond)
	r.use(t, Update{Valid: true, Endpoint: Endpoint{Node: "n1", Addr: addr, Token: 1}})
	c := r.dial(t)
	expectClosed(t, c, waitFor)
	r.waitStats(t, "expired", func(s Stats) bool { return s.Expired == 1 && s.Forwarded == 0 })
	if _, ok := r.log.find("held too long", "why=dial primary", addr); !ok {
		t.Fatalf("no log naming the failed dial; logs:\n%s", r.log.all())
	}
}

func TestCancelClosesEverything(t *testing.T) {
	a := startEcho(t, "")
	r := startProxy(t, waitFor)
	r.use(t, a.endpoint("n1", 1))
	fwd := r.dial(t)
	roundTrip(t, fwd, "hi")
	r.use(t, Update{Why: "election running"})
	held := r.dial(t)
	r.waitStats(t, "held", func(s Stats) bool { return s.Held == 1 })

	if err := r.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	expectClosed(t, fwd, time.Second)
	expectClosed(t, held, time.Second)
	if s := r.p.Stats(); s.Refused != 1 || s.Expired != 0 {
		t.Fatalf("stats %+v: want the held connection refused", s)
	}
	if _, err := net.DialTimeout("tcp", r.p.Addr().String(), time.Second); err == nil {
		t.Fatal("the proxy still accepts connections after Run returned")
	}
}

func TestSourceStopsMeansInvalid(t *testing.T) {
	a := startEcho(t, "")
	r := startProxy(t, 200*time.Millisecond)
	r.use(t, a.endpoint("n1", 1))
	close(r.src.stop)
	r.waitCurrent(t, "invalid", func(u Update) bool { return !u.Valid && u.Why == "endpoint source stopped" })
	c := r.dial(t)
	expectClosed(t, c, waitFor)
	r.waitStats(t, "expired", func(s Stats) bool { return s.Expired == 1 })
}

func TestManyConcurrentConnections(t *testing.T) {
	a := startEcho(t, "")
	r := startProxy(t, waitFor)
	const conns, rounds = 50, 10
	// Half the clients arrive while there is no primary and are held.
	r.src.push(t, Update{Why: "election running"})
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i := range conns {
		if i == conns/2 {
			r.waitStats(t, "first half held", func(s Stats) bool { return s.Held == conns/2 })
			r.src.push(t, a.endpoint("n1", 1))
		}
		c := r.dial(t)
		wg.Go(func() {
			msg := make([]byte, 4096)
			for range rounds {
				rand.Read(msg)
				if err := echo(c, msg); err != nil {
					errs <- err
					return
				}
			}
			c.Close()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	r.waitStats(t, "all forwarded and done", func(s Stats) bool {
		return s.Accepted == conns && s.Forwarded == conns && s.Expired == 0
	})
	// Closed clients end their forwarding; the proxy must forget them.
	r.waitStats(t, "forwarded set drained", func(Stats) bool {
		r.p.mu.Lock()
		defer r.p.mu.Unlock()
		return len(r.p.fwds) == 0
	})
}

// startSink starts a primary that reads and never answers: a request
// sent to it stays in flight. It stops when the test ends.
func startSink(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { io.Copy(io.Discard, c) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// TestDrainClosesAtRestThenTheRest: while the primary hands over, new
// connections are held; a forwarded connection with nothing in flight is
// closed at once, one with a request in flight at the end of the drain's
// window; the next primary gets the held connection.
func TestDrainClosesAtRestThenTheRest(t *testing.T) {
	next := startEcho(t, "")
	r := startProxy(t, waitFor)
	first := Endpoint{Node: "n1", Addr: startSink(t), Epoch: 1, Token: 1}
	r.use(t, Update{Valid: true, Endpoint: first})
	idle, busy := r.dial(t), r.dial(t)
	if _, err := busy.Write([]byte("a request the primary works on")); err != nil {
		t.Fatal(err)
	}
	r.waitStats(t, "both forwarded", func(s Stats) bool { return s.Forwarded == 2 })

	const drain = 2 * time.Second // a window of 1.5s
	began := time.Now()
	r.src.push(t, Update{Draining: true, Drain: drain, Endpoint: first, Why: "handing over"})
	expectClosed(t, idle, time.Second)
	held := r.dial(t)
	r.waitStats(t, "the new connection held", func(s Stats) bool { return s.Held == 1 })
	// The request in flight keeps its connection until the window ends.
	busy.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := busy.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the connection with a request in flight: read %v, want it still open", err)
	}
	expectClosed(t, busy, waitFor)
	if d := time.Since(began); d < drainWindow(drain) {
		t.Fatalf("the busy connection was closed %v into the drain, before its window %v", d, drainWindow(drain))
	}
	r.waitStats(t, "two drained", func(s Stats) bool { return s.Drained == 2 && s.Forwarded == 2 })

	r.src.push(t, next.endpoint("n2", 2))
	roundTrip(t, held, "to the next primary")
	if s := r.p.Stats(); s.Expired != 0 || s.Forwarded != 3 || next.accepted.Load() != 1 {
		t.Fatalf("stats %+v, next primary accepted %d", s, next.accepted.Load())
	}
	if _, ok := r.log.find("drains those it has", "drain=2s", "connections=2"); !ok {
		t.Fatalf("no log of the drain; logs:\n%s", r.log.all())
	}
}

// TestDrainEndsWhenThePrimaryStays: a handover that fails republishes the
// same endpoint: held connections go to it, and busy ones stay open.
func TestDrainEndsWhenThePrimaryStays(t *testing.T) {
	r := startProxy(t, waitFor)
	prim := Endpoint{Node: "n1", Addr: startSink(t), Epoch: 1, Token: 1}
	r.use(t, Update{Valid: true, Endpoint: prim})
	busy := r.dial(t)
	if _, err := busy.Write([]byte("in flight")); err != nil {
		t.Fatal(err)
	}
	r.waitStats(t, "forwarded", func(s Stats) bool { return s.Forwarded == 1 })
	r.src.push(t, Update{Draining: true, Drain: time.Minute, Endpoint: prim})
	r.dial(t)
	r.waitStats(t, "held", func(s Stats) bool { return s.Held == 1 })
	r.src.push(t, Update{Valid: true, Endpoint: prim})
	r.waitStats(t, "the held connection forwarded to the primary that stays", func(s Stats) bool { return s.Forwarded == 2 })
	busy.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := busy.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the busy connection: read %v, want it still open", err)
	}
	if s := r.p.Stats(); s.ClosedOnChange != 0 || s.Drained != 0 {
		t.Fatalf("stats %+v: nothing should have been closed", s)
	}
	if _, ok := r.log.find("the primary stays after all"); !ok {
		t.Fatalf("no log of the drain's end; logs:\n%s", r.log.all())
	}
}
