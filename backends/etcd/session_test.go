package etcd

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/concordha/concord/core"
	"github.com/concordha/concord/internal/netfault"
)

func waitDone(t *testing.T, s core.Session, timeout time.Duration) time.Time {
	t.Helper()
	select {
	case <-s.Done():
		return time.Now()
	case <-time.After(timeout):
		t.Fatalf("session %s: Done not closed after %v", s.ID(), timeout)
		return time.Time{}
	}
}

// TestSessionLostWhenServerStops: with the member gone, no renewal can
// succeed, and Done fires within the TTL of the last one, long before
// etcd, which is down, could expire anything; the lease is still there
// when the member comes back.
func TestSessionLostWhenServerStops(t *testing.T) {
	srv := startServer(t)
	cfg := srv.Config()
	st := openStore(t, srv.Endpoints())
	ctx := ctxFor(t, time.Minute)
	const ttl = time.Second
	s, err := st.NewSession(ctx, core.SessionOptions{TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	kv, err := s.Register(ctx, "/lost/member", []byte("me"))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(ttl) // a few renewals
	if s.Err() != nil {
		t.Fatalf("session lost while the member ran: %v", s.Err())
	}
	stopped := time.Now()
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	lost := waitDone(t, s, 2*ttl)
	if d := lost.Sub(stopped); d > ttl+300*time.Millisecond {
		t.Errorf("Done fired %v after the member stopped, want within the TTL %v", d, ttl)
	}
	if !errors.Is(s.Err(), core.ErrSessionLost) {
		t.Errorf("Err = %v, want ErrSessionLost", s.Err())
	}
	if _, err := s.Register(ctx, "/lost/late", nil); !errors.Is(err, core.ErrSessionLost) {
		t.Errorf("Register on a lost session: %v, want ErrSessionLost", err)
	}
	t.Logf("session lost %v after the member stopped (TTL %v): %v", lost.Sub(stopped).Round(time.Millisecond), ttl, s.Err())

	// etcd had not expired it: the key is back with the member, until
	// the lease runs out on the server.
	startMember(t, cfg)
	got, err := st.Get(ctx, kv.Key)
	if err != nil {
		t.Fatalf("Get(%q) right after the restart: %v; want the key, still held by a lease etcd has not expired", kv.Key, err)
	}
	if got.Revision != kv.Revision {
		t.Errorf("Get(%q) = %+v, want %+v", kv.Key, got, kv)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatalf("Close of a lost session: %v", err)
	}
	if _, err := st.Get(ctx, kv.Key); !errors.Is(err, core.ErrNotFound) {
		t.Errorf("Get(%q) after Close revoked the lease: %v, want ErrNotFound", kv.Key, err)
	}
}

// TestSessionLostBeforeServerExpires cuts a holder off a running member:
// the holder's Done must fire before the member deletes its key. The TTL
// is not a whole number of seconds, so etcd grants more (2s) and the
// order is deterministic; with a whole-second TTL the client's lead is
// only the one-way latency of its last renewal, which the timers of a
// loaded machine could eat.
func TestSessionLostBeforeServerExpires(t *testing.T) {
	srv := startServer(t)
	link, err := netfault.New(hostPort(t, srv.Endpoints()[0]))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = link.Close() })
	holder := openStore(t, []string{"http://" + link.Addr()})
	observer := openStore(t, srv.Endpoints())
	ctx := ctxFor(t, time.Minute)
	const ttl = 1500 * time.Millisecond
	s, err := holder.NewSession(ctx, core.SessionOptions{TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	kv, err := s.Register(ctx, "/cut/member", []byte("me"))
	if err != nil {
		t.Fatal(err)
	}
	w := startWatch(t, observer, "/cut/")
	w.until(5*time.Second, "the registered key", holds(map[string]string{kv.Key: "me"}))
	time.Sleep(ttl / 2)
	fired := make(chan time.Time, 1)
	go func() {
		<-s.Done()
		fired <- time.Now()
	}()
	cut := time.Now()
	link.Cut()
	w.until(4*ttl+5*time.Second, "the key expired by etcd", holds(map[string]string{}))
	deleted := time.Now()
	var done time.Time
	select {
	case done = <-fired:
	default:
		t.Fatalf("etcd deleted %q %v after the cut, before the holder's session fired Done", kv.Key, deleted.Sub(cut))
	}
	if !errors.Is(s.Err(), core.ErrSessionLost) {
		t.Errorf("Err = %v, want ErrSessionLost", s.Err())
	}
	t.Logf("after the cut: the holder gave up at %v, etcd deleted the key at %v (TTL %v)",
		done.Sub(cut).Round(time.Millisecond), deleted.Sub(cut).Round(time.Millisecond), ttl)
}

// TestSessionSurvivesCancelledCaller: the keep-alive runs on the
// session's own context, not NewSession's.
func TestSessionSurvivesCancelledCaller(t *testing.T) {
	srv := startServer(t)
	st := openStore(t, srv.Endpoints())
	ctx, cancel := context.WithCancel(context.Background())
	s, err := st.NewSession(ctx, core.SessionOptions{TTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	time.Sleep(2 * time.Second)
	if s.Err() != nil {
		t.Fatalf("session ended after its creator's context did: %v", s.Err())
	}
	if _, err := strconv.ParseInt(s.ID(), 10, 64); err != nil {
		t.Errorf("ID %q is not a decimal lease ID", s.ID())
	}
	if err := s.Close(ctxFor(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
}

func TestSessionOptionsOutOfRange(t *testing.T) {
	srv := startServer(t)
	st, err := New(Config{Endpoints: srv.Endpoints(), KeepAliveInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := ctxFor(t, 10*time.Second)
	for _, ttl := range []time.Duration{time.Second, 2 * time.Second, 1<<63 - 1} {
		s, err := st.NewSession(ctx, core.SessionOptions{TTL: ttl})
		if !errors.Is(err, core.ErrInvalidArgument) {
			if s != nil {
				_ = s.Close(ctx)
			}
			t.Errorf("NewSession(TTL %v) with KeepAliveInterval 1s: %v, want ErrInvalidArgument", ttl, err)
		}
	}
	s, err := st.NewSession(ctx, core.SessionOptions{TTL: 3 * time.Second})
	if err != nil {
		t.Fatalf("NewSession(TTL 3s) with KeepAliveInterval 1s: %v", err)
	}
	_ = s.Close(ctx)
}

// TestCASKeepsRegisteredKeyInSession: a registered key updated by
// compare-and-swap, from any client, still goes with its session.
func TestCASKeepsRegisteredKeyInSession(t *testing.T) {
	srv := startServer(t)
	holder, other := openStore(t, srv.Endpoints()), openStore(t, srv.Endpoints())
	ctx := ctxFor(t, 30*time.Second)
	s, err := holder.NewSession(ctx, core.SessionOptions{TTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	kv, err := s.Register(ctx, "/bound/member", []byte("1"))
	if err != nil {
		t.Fatal(err)
	}
	kv, err = other.CompareAndSwap(ctx, kv.Key, []byte("2"), kv.Version)
	if err != nil {
		t.Fatal(err)
	}
	res, err := other.Txn(ctx, []core.Op{{Kind: core.OpCAS, Key: kv.Key, Value: []byte("3"), Version: kv.Version}})
	if err != nil || res[0].Err != nil {
		t.Fatalf("Txn CAS of a registered key: %v, %v", err, res)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := other.Get(ctx, kv.Key); !errors.Is(err, core.ErrNotFound) {
		t.Fatalf("Get(%q) after its session closed: %+v, %v; want ErrNotFound", kv.Key, got, err)
	}
}

// TestRegisterOnExpiredLease: a Register that etcd refuses because the
// lease is gone reports ErrSessionLost and ends the session.
func TestRegisterOnExpiredLease(t *testing.T) {
	srv := startServer(t)
	holder, operator := openStore(t, srv.Endpoints()), openStore(t, srv.Endpoints())
	ctx := ctxFor(t, 30*time.Second)
	s, err := holder.NewSession(ctx, core.SessionOptions{TTL: 6 * time.Second}) // renews every 2s
	if err != nil {
		t.Fatal(err)
	}
	if err := operator.ExpireSession(ctx, s.ID()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Register(ctx, "/expired/k", []byte("v")); !errors.Is(err, core.ErrSessionLost) {
		t.Fatalf("Register on a lease etcd revoked: %v, want ErrSessionLost", err)
	}
	waitDone(t, s, time.Second)
	if !errors.Is(s.Err(), core.ErrSessionLost) {
		t.Errorf("Err = %v, want ErrSessionLost", s.Err())
	}
	if _, err := operator.Get(ctx, "/expired/k"); !errors.Is(err, core.ErrNotFound) {
		t.Errorf("Get of a key refused to an expired session: %v, want ErrNotFound", err)
	}
}
