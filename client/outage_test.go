package client_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/concordha/concord/backends/memory"
	"github.com/concordha/concord/client"
	"github.com/concordha/concord/core"
	"github.com/concordha/concord/internal/poll"
	"github.com/concordha/concord/internal/recordfix"
)

// fakeCheck plays the primary's node API.
type fakeCheck struct {
	mu       sync.Mutex
	token    int64
	validFor time.Duration
	err      error
	calls    int
	lastOK   time.Time // when the last proof was given
	asked    string
}

func (f *fakeCheck) check(_ context.Context, api, service string) (int64, time.Duration, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	f.asked = api + " " + service
	if f.err == nil {
		f.lastOK = time.Now()
	}
	return f.token, f.validFor, f.err
}

func (f *fakeCheck) set(token int64, validFor time.Duration, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.token, f.validFor, f.err = token, validFor, err
}

func (f *fakeCheck) state() (int, time.Time, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls, f.lastOK, f.asked
}

// primaryCluster writes a primary "a" of "db" with its endpoint, and
// returns the store's server and the primary's token.
func primaryCluster(t *testing.T) (*memory.Server, int64) {
	t.Helper()
	srv := memory.New(memory.Options{})
	t.Cleanup(func() { srv.Close() })
	st := srv.Client("writer")
	sess := recordfix.Join(t, st, "concord/", "a", "db")
	prim := recordfix.Put(t, st, "concord/primary/db", core.PrimaryRecord{Node: "a", Session: sess.ID(), Epoch: 1})
	recordfix.Put(t, st, "concord/endpoints/db", core.EndpointRecord{Node: "a", Session: sess.ID(), Address: "10.0.0.1:5432", Epoch: 1, Token: prim.Revision})
	return srv, prim.Revision
}

// watchPrimary watches db through the client "watcher" until the test
// ends, and returns once the primary is valid.
func watchPrimary(t *testing.T, srv *memory.Server, opts client.Options) <-chan client.Update {
	t.Helper()
	r, err := client.NewWithOptions(srv.Client("watcher"), "concord/", opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	updates, err := r.Watch(ctx, "db")
	if err != nil {
		t.Fatal(err)
	}
	await(t, updates, 5*time.Second, "the primary", func(u client.Update) bool { return u.Valid })
	return updates
}

// await reads updates until want accepts one, and returns it and when
// it came.
func await(t *testing.T, updates <-chan client.Update, within time.Duration, what string, want func(client.Update) bool) (client.Update, time.Time) {
	t.Helper()
	return poll.Receive(t, updates, within, what, want)
}

// TestOutageKeepsTheProvenPrimary: while the store cannot be watched, the
// last primary stays valid exactly as long as its node proves its session
// valid; a node that stops answering leaves the last proof to run out; a
// node that says it is no longer the primary ends it at once.
func TestOutageKeepsTheProvenPrimary(t *testing.T) {
	srv, token := primaryCluster(t)
	f := &fakeCheck{}
	f.set(token, 400*time.Millisecond, nil)
	updates := watchPrimary(t, srv, client.Options{Check: f.check})
	if calls, _, _ := f.state(); calls != 0 {
		t.Fatalf("the node was asked %d times while the store answered", calls)
	}

	srv.Isolate("watcher", true)
	valid := func(u client.Update) bool { return u.Valid && u.Endpoint.Token == token }
	await(t, updates, 5*time.Second, "the primary proven by its node", valid)
	if _, _, asked := f.state(); asked != recordfix.APIAddress("a")+" db" {
		t.Fatalf("asked %q, want the primary's node API about db", asked)
	}

	// The node stops answering: the last proof stands until it runs out.
	f.set(0, 0, errors.New("connection refused"))
	u, at := await(t, updates, 5*time.Second, "the proof runs out", func(u client.Update) bool { return !u.Valid })
	_, lastOK, _ := f.state()
	if early := lastOK.Add(400 * time.Millisecond).Sub(at); early > 50*time.Millisecond {
		t.Fatalf("the primary was dropped %v before its proof ran out", early)
	}
	if !strings.Contains(u.Why, "cannot be asked") || !strings.Contains(u.Why, "connection refused") {
		t.Fatalf("why: %q", u.Why)
	}

	// It answers again with a long proof, then says it is not the primary.
	f.set(token, time.Minute, nil)
	await(t, updates, 5*time.Second, "proven again", valid)
	f.set(0, 0, fmt.Errorf("503: %w", core.ErrNotPrimary))
	began := time.Now()
	u, at = await(t, updates, 5*time.Second, "not the primary", func(u client.Update) bool { return !u.Valid })
	if d := at.Sub(began); d > 2*time.Second || !strings.Contains(u.Why, "no longer the primary") {
		t.Fatalf("after the node said it is not the primary: %q after %v, want at once", u.Why, d)
	}

	// A proof for another token is none.
	f.set(token+1, time.Minute, nil)
	if u, _ := await(t, updates, 5*time.Second, "another token", func(u client.Update) bool { return strings.Contains(u.Why, "token") }); u.Valid {
		t.Fatalf("valid with another token's proof: %+v", u)
	}

	// The store comes back: the records decide again.
	f.set(0, 0, errors.New("unreachable"))
	srv.Isolate("watcher", false)
	await(t, updates, 10*time.Second, "the store's primary", valid)
}

// TestOutageWithoutCheck: with no Check, a store outage makes the state
// not valid at once.
func TestOutageWithoutCheck(t *testing.T) {
	srv, _ := primaryCluster(t)
	updates := watchPrimary(t, srv, client.Options{})
	srv.Isolate("watcher", true)
	u, _ := await(t, updates, 5*time.Second, "not valid", func(u client.Update) bool { return !u.Valid })
	if !strings.Contains(u.Why, "cannot be watched") {
		t.Fatalf("why: %q", u.Why)
	}
}

// TestHTTPCheck: the check reads the node API's primary check.
func TestHTTPCheck(t *testing.T) {
	var status int
	var body string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/services/db/primary" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(status)
		fmt.Fprint(w, body)
	}))
	defer srv.Close()
	check := client.HTTPCheck(srv.Client(), "http")
	api := strings.TrimPrefix(srv.URL, "http://")
	ctx := context.Background()

	status, body = 200, `{"token": 42, "valid_for_ms": 1500, "role": "primary"}`
	if tok, vf, err := check(ctx, api, "db"); err != nil || tok != 42 || vf != 1500*time.Millisecond {
		t.Fatalf("200: %d %v %v", tok, vf, err)
	}
	status, body = 503, `{"role": "secondary"}`
	if _, _, err := check(ctx, api, "db"); !errors.Is(err, core.ErrNotPrimary) {
		t.Fatalf("503: %v, want ErrNotPrimary", err)
	}
	status, body = 500, `oops`
	if _, _, err := check(ctx, api, "db"); err == nil || errors.Is(err, core.ErrNotPrimary) || !strings.Contains(err.Error(), "500") {
		t.Fatalf("500: %v", err)
	}
	status, body = 200, `not json`
	if _, _, err := check(ctx, api, "db"); err == nil || !strings.Contains(err.Error(), "JSON") {
		t.Fatalf("garbage: %v", err)
	}
	srv.CloseClientConnections()
	srv.Close()
	if _, _, err := check(ctx, api, "db"); err == nil || errors.Is(err, core.ErrNotPrimary) {
		t.Fatalf("a closed server: %v", err)
	}
}
