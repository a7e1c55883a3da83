package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock the test moves by hand, so lease expiry is exact
// and costs no waiting.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// newLeaseServer returns a spare server with the given lease, reading
// time from clock.
func newLeaseServer(t *testing.T, lease time.Duration, clock *fakeClock, rep *replicator) (*server, http.Handler) {
	t.Helper()
	s := newServer(serverConfig{
		Dir: t.TempDir(), Node: "n1", AdminToken: testAdminToken, Replicator: rep,
		Lease: lease, Now: clock.Now,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, state{})
	return s, s.handler()
}

// healthOf decodes h's /healthz answer.
func healthOf(t *testing.T, h http.Handler) health {
	t.Helper()
	var hl health
	if err := json.Unmarshal([]byte(mustCall(t, h, http.StatusOK, "GET", "/healthz", "")), &hl); err != nil {
		t.Fatal(err)
	}
	return hl
}

// TestLease: a primary's lease expires without renewals, which blocks
// writes but not reads; a renewal with the token, or a promotion,
// restores writes; a lower token is refused; a demotion ends the lease.
func TestLease(t *testing.T) {
	const lease = 200 * time.Millisecond
	clock := newFakeClock()
	_, h := newLeaseServer(t, lease, clock, nil)
	if hl := healthOf(t, h); hl.LeaseMS != 200 || hl.LeaseLeftMS != nil {
		t.Fatalf("spare's health %+v, want lease_ms 200 and no lease_left_ms", hl)
	}
	mustCall(t, h, http.StatusOK, "POST", "/admin/promote", `{"token":3,"epoch":1}`)
	mustCall(t, h, http.StatusOK, "PUT", "/kv/a", "1")
	if hl := healthOf(t, h); hl.Role != rolePrimary || hl.LeaseLeftMS == nil || *hl.LeaseLeftMS != 200 {
		t.Fatalf("fresh primary's health %+v, want primary with 200ms left", hl)
	}

	clock.Advance(lease) // the lease's last instant
	mustCall(t, h, http.StatusOK, "PUT", "/kv/a", "2")
	clock.Advance(time.Millisecond)
	body := mustCall(t, h, http.StatusServiceUnavailable, "PUT", "/kv/b", "x")
	if !strings.Contains(body, "primary lease expired") || !strings.Contains(body, "201ms") {
		t.Fatalf("write after expiry: %s, want 'primary lease expired' and the 201ms since renewal", body)
	}
	mustCall(t, h, http.StatusServiceUnavailable, "DELETE", "/kv/a", "")
	mustCall(t, h, http.StatusNotFound, "GET", "/kv/b", "") // the refused write is not applied
	if got := mustCall(t, h, http.StatusOK, "GET", "/kv/a", ""); got != "2" {
		t.Fatalf("read on a fenced primary: a = %q, want 2", got)
	}
	if hl := healthOf(t, h); hl.Role != rolePrimaryFenced || hl.LeaseLeftMS == nil || *hl.LeaseLeftMS != 0 {
		t.Fatalf("fenced primary's health %+v, want primary-fenced with 0ms left", hl)
	}
	mustCall(t, h, http.StatusOK, "GET", "/admin/state", "") // checkpoints still work

	// A deposed primary's token does not renew.
	body = mustCall(t, h, http.StatusConflict, "POST", "/admin/renew", `{"token":2}`)
	if !strings.Contains(body, "token 2") {
		t.Fatalf("renew with a lower token: %s, want it named", body)
	}
	mustCall(t, h, http.StatusServiceUnavailable, "PUT", "/kv/b", "x")
	mustCall(t, h, http.StatusBadRequest, "POST", "/admin/renew", `{"token":-1}`)
	mustCall(t, h, http.StatusBadRequest, "POST", "/admin/renew", `{"tokn":3}`)

	// The same token restores writes, for a whole new lease.
	var hl health
	json.Unmarshal([]byte(mustCall(t, h, http.StatusOK, "POST", "/admin/renew", `{"token":3}`)), &hl)
	if hl.Role != rolePrimary || *hl.LeaseLeftMS != 200 {
		t.Fatalf("renew answered %+v, want primary with 200ms left", hl)
	}
	mustCall(t, h, http.StatusOK, "PUT", "/kv/b", "x")
	clock.Advance(150 * time.Millisecond)
	mustCall(t, h, http.StatusOK, "POST", "/admin/renew", `{"token":3}`)
	clock.Advance(150 * time.Millisecond) // 300ms after the promotion, 150ms after the renewal
	mustCall(t, h, http.StatusOK, "PUT", "/kv/c", "y")

	// A promotion starts a fresh lease too.
	clock.Advance(time.Second)
	mustCall(t, h, http.StatusServiceUnavailable, "PUT", "/kv/c", "z")
	mustCall(t, h, http.StatusOK, "POST", "/admin/promote", `{"token":3,"epoch":1}`)
	mustCall(t, h, http.StatusOK, "PUT", "/kv/c", "z")

	// A higher token renews, and is not stored: the promote brings it.
	mustCall(t, h, http.StatusOK, "POST", "/admin/renew", `{"token":5}`)
	if hl := healthOf(t, h); hl.Token != 3 || hl.Role != rolePrimary {
		t.Fatalf("after a renewal with a higher token: %+v, want primary, token 3", hl)
	}

	// A demotion ends the lease: the refusal names the new primary, and
	// there is nothing left to renew.
	clock.Advance(time.Second)
	mustCall(t, h, http.StatusOK, "POST", "/admin/demote", `{"role":"secondary","primary":"n2"}`)
	body = mustCall(t, h, http.StatusServiceUnavailable, "PUT", "/kv/d", "w")
	if !strings.Contains(body, "not the primary") || !strings.Contains(body, `"primary":"n2"`) {
		t.Fatalf("write on a demoted primary: %s, want the not-primary refusal naming n2", body)
	}
	if hl := healthOf(t, h); hl.Role != roleSecondary || hl.LeaseLeftMS != nil {
		t.Fatalf("demoted health %+v, want secondary without lease_left_ms", hl)
	}
	body = mustCall(t, h, http.StatusConflict, "POST", "/admin/renew", `{"token":3}`)
	if !strings.Contains(body, "not the primary") {
		t.Fatalf("renew on a secondary: %s, want a refusal saying it is not the primary", body)
	}
	mustCall(t, h, http.StatusServiceUnavailable, "PUT", "/kv/d", "w")
}

// TestLeaseOff: without a lease, a primary keeps taking writes however
// long concord is silent, and a renewal is checked but changes nothing.
func TestLeaseOff(t *testing.T) {
	clock := newFakeClock()
	_, h := newLeaseServer(t, 0, clock, nil)
	mustCall(t, h, http.StatusOK, "POST", "/admin/promote", `{"token":3}`)
	clock.Advance(24 * time.Hour)
	mustCall(t, h, http.StatusOK, "PUT", "/kv/a", "1")
	if hl := healthOf(t, h); hl.Role != rolePrimary || hl.LeaseMS != 0 || hl.LeaseLeftMS != nil {
		t.Fatalf("health without a lease %+v, want primary without lease fields", hl)
	}
	mustCall(t, h, http.StatusConflict, "POST", "/admin/renew", `{"token":2}`)
	mustCall(t, h, http.StatusOK, "POST", "/admin/renew", `{"token":3}`)
}

// TestLeaseSyncNotAcknowledged: a sync write whose lease expires while
// it waits for its checkpoint is answered 503 and stays applied.
func TestLeaseSyncNotAcknowledged(t *testing.T) {
	const lease = 200 * time.Millisecond
	clock := newFakeClock()
	f := &fakeConcord{}
	api := httptest.NewServer(f)
	defer api.Close()
	rep := newReplicator(api.URL, "api", "kv", 5*time.Second)
	defer rep.close()
	s, h := newLeaseServer(t, lease, clock, rep)
	f.s = s
	mustCall(t, h, http.StatusOK, "POST", "/admin/promote", `{"token":1}`)
	mustCall(t, h, http.StatusOK, "PUT", "/kv/a", "1")

	// concord takes its time: the lease runs out during the call.
	f.mu.Lock()
	f.hook = func() { clock.Advance(lease + time.Millisecond) }
	f.mu.Unlock()
	body := mustCall(t, h, http.StatusServiceUnavailable, "PUT", "/kv/b", "2")
	if !strings.Contains(body, "not acknowledged") || !strings.Contains(body, "lease expired") {
		t.Fatalf("sync write that outlived the lease: %s, want 'not acknowledged' and 'lease expired'", body)
	}
	var refusal struct{ Version int64 }
	if err := json.Unmarshal([]byte(body), &refusal); err != nil || refusal.Version != 2 {
		t.Fatalf("refusal %s, want the version 2 of the applied write", body)
	}
	if got := mustCall(t, h, http.StatusOK, "GET", "/kv/b", ""); got != "2" {
		t.Fatalf("the unacknowledged write is not applied locally: b = %q", got)
	}
	f.mu.Lock()
	f.hook = nil
	calls := len(f.seen)
	f.mu.Unlock()
	if calls != 2 {
		t.Fatalf("%d checkpoint calls, want 2", calls)
	}
	// Now fenced, a write is refused before it is applied or replicated.
	mustCall(t, h, http.StatusServiceUnavailable, "PUT", "/kv/c", "3")
	mustCall(t, h, http.StatusNotFound, "GET", "/kv/c", "")
	f.mu.Lock()
	calls = len(f.seen)
	f.mu.Unlock()
	if calls != 2 {
		t.Fatalf("a write refused for its lease called concord: %d calls, want 2", calls)
	}
	mustCall(t, h, http.StatusOK, "POST", "/admin/renew", `{"token":1}`)
	mustCall(t, h, http.StatusOK, "PUT", "/kv/c", "3")
}
