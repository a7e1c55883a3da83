package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const testAdminToken = "secret-admin-token"

// newTestServer returns a spare server over an empty directory.
func newTestServer(t *testing.T, rep *replicator) (*server, http.Handler) {
	t.Helper()
	s := newServer(serverConfig{
		Dir: t.TempDir(), Node: "n1", AdminToken: testAdminToken, Replicator: rep,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, state{})
	return s, s.handler()
}

// call sends one request to h from a loopback client; admin requests
// carry the admin token.
func call(h http.Handler, method, path, body string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	req.RemoteAddr = "127.0.0.1:40000"
	if strings.HasPrefix(path, "/admin/") {
		req.Header.Set("Authorization", "Bearer "+testAdminToken)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func mustCall(t *testing.T, h http.Handler, want int, method, path, body string) string {
	t.Helper()
	rec := call(h, method, path, body)
	if rec.Code != want {
		t.Fatalf("%s %s %q: %d %s, want %d", method, path, body, rec.Code, rec.Body, want)
	}
	return rec.Body.String()
}

func TestAdminAuth(t *testing.T) {
	_, h := newTestServer(t, nil)
	for _, tc := range []struct {
		name, remote, auth string
		want               int
	}{
		{"loopback with the token", "127.0.0.1:5000", "Bearer " + testAdminToken, http.StatusOK},
		{"ipv6 loopback with the token", "[::1]:5000", "Bearer " + testAdminToken, http.StatusOK},
		{"remote with the token", "192.0.2.7:5000", "Bearer " + testAdminToken, http.StatusForbidden},
		{"no token", "127.0.0.1:5000", "", http.StatusUnauthorized},
		{"wrong token", "127.0.0.1:5000", "Bearer nope", http.StatusUnauthorized},
		{"token without Bearer", "127.0.0.1:5000", testAdminToken, http.StatusUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "/admin/state", nil)
			req.RemoteAddr = tc.remote
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tc.want {
				t.Fatalf("status %d %s, want %d", rec.Code, rec.Body, tc.want)
			}
		})
	}
	// Reads and health need no token.
	mustCall(t, h, http.StatusOK, "GET", "/healthz", "")
	mustCall(t, h, http.StatusOK, "GET", "/kv", "")
}

func TestWritesAndPersistence(t *testing.T) {
	s, h := newTestServer(t, nil)
	code := call(h, "PUT", "/kv/a", "1")
	var refusal map[string]string
	json.Unmarshal(code.Body.Bytes(), &refusal)
	if code.Code != http.StatusServiceUnavailable || refusal["error"] == "" {
		t.Fatalf("write on a spare: %d %s, want 503 with an error", code.Code, code.Body)
	}
	if _, ok := refusal["primary"]; !ok {
		t.Fatalf("write refusal %s lacks the primary field", code.Body)
	}
	mustCall(t, h, http.StatusOK, "POST", "/admin/promote", `{"token":3,"epoch":1}`)
	mustCall(t, h, http.StatusOK, "PUT", "/kv/a", "1")
	mustCall(t, h, http.StatusOK, "PUT", "/kv/b", "two")
	mustCall(t, h, http.StatusOK, "PUT", "/kv/a", "one")
	mustCall(t, h, http.StatusOK, "DELETE", "/kv/b", "")
	mustCall(t, h, http.StatusNotFound, "DELETE", "/kv/b", "")
	mustCall(t, h, http.StatusNotFound, "GET", "/kv/b", "")
	mustCall(t, h, http.StatusBadRequest, "PUT", "/kv/", "x")
	mustCall(t, h, http.StatusRequestEntityTooLarge, "PUT", "/kv/big", strings.Repeat("x", maxValueBytes+1))
	if got := mustCall(t, h, http.StatusOK, "GET", "/kv/a", ""); got != "one" {
		t.Fatalf("a = %q, want one", got)
	}

	st, err := loadState(s.cfg.Dir)
	if err != nil {
		t.Fatal(err)
	}
	want := state{Version: 4, Token: 3, Epoch: 1, Data: map[string]string{"a": "one"}}
	if st.Version != want.Version || st.Token != want.Token || st.Epoch != want.Epoch || !maps.Equal(st.Data, want.Data) {
		t.Fatalf("saved state %+v, want %+v", st, want)
	}

	// A write whose save fails is undone.
	if err := os.RemoveAll(s.cfg.Dir); err != nil {
		t.Fatal(err)
	}
	mustCall(t, h, http.StatusInternalServerError, "PUT", "/kv/c", "3")
	mustCall(t, h, http.StatusNotFound, "GET", "/kv/c", "")
	var hl health
	json.Unmarshal([]byte(mustCall(t, h, http.StatusOK, "GET", "/healthz", "")), &hl)
	if hl.Version != 4 {
		t.Fatalf("version %d after a failed save, want 4", hl.Version)
	}
}

func TestRolesAndFencing(t *testing.T) {
	s, h := newTestServer(t, nil)
	mustCall(t, h, http.StatusBadRequest, "POST", "/admin/promote", `{"token":-1}`)
	mustCall(t, h, http.StatusBadRequest, "POST", "/admin/promote", `{"token":1,"term":2}`)
	mustCall(t, h, http.StatusBadRequest, "POST", "/admin/promote", `not json`)
	mustCall(t, h, http.StatusOK, "POST", "/admin/promote", `{"token":4,"epoch":2}`)
	mustCall(t, h, http.StatusOK, "POST", "/admin/promote", `{"token":4,"epoch":2}`)
	mustCall(t, h, http.StatusConflict, "POST", "/admin/promote", `{"token":3,"epoch":2}`)
	mustCall(t, h, http.StatusOK, "PUT", "/kv/k", "v")

	// On the primary, a state of its own token would erase its writes.
	mustCall(t, h, http.StatusConflict, "PUT", "/admin/state", `{"version":1,"token":4,"epoch":2,"data":{}}`)
	mustCall(t, h, http.StatusOK, "GET", "/kv/k", "")

	for _, bad := range []string{
		`{"version":1,"token":9,"data":{}} {}`,
		`{"version":1,"token":9,"data":{},"extra":1}`,
		`{"version":-1,"token":9,"data":{}}`,
		`{"version":1,"token":9,"data":{"":"x"}}`,
		`{"version":1,"token":9,"data":`,
	} {
		mustCall(t, h, http.StatusBadRequest, "PUT", "/admin/state", bad)
	}

	// A state of a newer token proves a newer primary: step down, take it.
	mustCall(t, h, http.StatusOK, "PUT", "/admin/state", `{"version":7,"token":5,"epoch":3,"data":{"n":"new"}}`)
	var hl health
	json.Unmarshal([]byte(mustCall(t, h, http.StatusOK, "GET", "/healthz", "")), &hl)
	if hl.Role != roleSecondary || hl.Token != 5 || hl.Version != 7 || hl.Keys != 1 {
		t.Fatalf("after a newer state: %+v, want secondary, token 5, version 7, 1 key", hl)
	}
	mustCall(t, h, http.StatusServiceUnavailable, "PUT", "/kv/k", "v")
	mustCall(t, h, http.StatusConflict, "PUT", "/admin/state", `{"version":8,"token":4,"data":{}}`)

	mustCall(t, h, http.StatusBadRequest, "POST", "/admin/demote", `{"role":"primary"}`)
	mustCall(t, h, http.StatusOK, "POST", "/admin/demote", `{"role":"spare","primary":"n3"}`)
	body := mustCall(t, h, http.StatusServiceUnavailable, "PUT", "/kv/k", "v")
	if !strings.Contains(body, `"primary":"n3"`) {
		t.Fatalf("write refusal %s does not name the primary n3", body)
	}

	// The fault switch.
	if err := os.WriteFile(filepath.Join(s.cfg.Dir, failFile), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	mustCall(t, h, http.StatusInternalServerError, "GET", "/healthz", "")

	// A corrupt state file is refused with its name.
	if err := os.WriteFile(filepath.Join(s.cfg.Dir, stateFile), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadState(s.cfg.Dir); err == nil || !strings.Contains(err.Error(), stateFile) {
		t.Fatalf("loading a corrupt state: %v, want an error naming %s", err, stateFile)
	}
}

// fakeConcord is concord's checkpoint API for one service, recording the
// server's version when each call arrives.
type fakeConcord struct {
	s      *server
	block  chan struct{} // while open and not nil, the first call waits on it
	in     chan struct{} // gets a value when the first call arrives
	mu     sync.Mutex
	seen   []int64 // version at each call
	status int     // answer status; 0 means 200
	hook   func()  // if not nil, runs in each call before it answers
}

func (f *fakeConcord) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v1/services/kv/checkpoint" || r.Header.Get("Authorization") != "Bearer api" {
		http.Error(w, "wrong path or token", http.StatusUnauthorized)
		return
	}
	f.s.mu.Lock()
	v := f.s.st.Version
	f.s.mu.Unlock()
	f.mu.Lock()
	f.seen = append(f.seen, v)
	seq, status, hook := len(f.seen), f.status, f.hook
	f.mu.Unlock()
	if hook != nil {
		hook()
	}
	if seq == 1 && f.block != nil {
		f.in <- struct{}{}
		select {
		case <-f.block:
		case <-r.Context().Done():
			return
		}
	}
	if status != 0 {
		http.Error(w, `{"error":"injected"}`, status)
		return
	}
	w.Write([]byte(`{"seq":` + strconv.Itoa(seq) + `,"acks":2}`))
}

// TestSyncCoalesces: writes that arrive while a checkpoint call runs
// share the next one, and every write's call started after the write.
func TestSyncCoalesces(t *testing.T) {
	f := &fakeConcord{block: make(chan struct{}), in: make(chan struct{}, 1)}
	api := httptest.NewServer(f)
	defer api.Close()
	rep := newReplicator(api.URL, "api", "kv", 5*time.Second)
	defer rep.close()
	s, h := newTestServer(t, rep)
	f.s = s
	mustCall(t, h, http.StatusOK, "POST", "/admin/promote", `{"token":1}`)

	const writes = 8
	type answer struct {
		code         int
		version, seq int64
	}
	answers := make(chan answer, writes)
	put := func(i int) {
		rec := call(h, "PUT", "/kv/k"+strconv.Itoa(i), "v")
		var a struct{ Version, Seq int64 }
		json.Unmarshal(rec.Body.Bytes(), &a)
		answers <- answer{rec.Code, a.Version, a.Seq}
	}
	var wg sync.WaitGroup
	wg.Go(func() { put(0) })
	<-f.in // the first call runs and blocks
	for i := 1; i < writes; i++ {
		wg.Go(func() { put(i) })
	}
	deadline := time.Now().Add(5 * time.Second)
	for rep.pending() != writes-1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d writes wait for the next call, want %d", rep.pending(), writes-1)
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(f.block)
	wg.Wait()
	close(answers)

	f.mu.Lock()
	seen := f.seen
	f.mu.Unlock()
	if len(seen) != 2 {
		t.Fatalf("%d checkpoint calls for %d writes, want 2 (one running, one shared)", len(seen), writes)
	}
	for a := range answers {
		if a.code != http.StatusOK || a.seq < 1 || a.seq > int64(len(seen)) {
			t.Fatalf("write answered %+v", a)
		}
		if seen[a.seq-1] < a.version {
			t.Fatalf("write of version %d was answered by call %d, which began at version %d", a.version, a.seq, seen[a.seq-1])
		}
	}

	// A failing concord fails the write with 503, and keeps it applied.
	f.mu.Lock()
	f.status = http.StatusServiceUnavailable
	f.mu.Unlock()
	body := mustCall(t, h, http.StatusServiceUnavailable, "PUT", "/kv/late", "v")
	if !strings.Contains(body, "not replicated") || !strings.Contains(body, "not the service's primary") {
		t.Fatalf("write refused by concord: %s, want 'not replicated' and the 503's meaning", body)
	}
	mustCall(t, h, http.StatusOK, "GET", "/kv/late", "")
}

// TestSyncCloseEndsWaits: shutting down fails a write that waits for a
// hung concord, and later writes fail at once.
func TestSyncCloseEndsWaits(t *testing.T) {
	f := &fakeConcord{block: make(chan struct{}), in: make(chan struct{}, 1)}
	api := httptest.NewServer(f)
	defer api.Close()
	defer close(f.block)
	rep := newReplicator(api.URL, "api", "kv", time.Minute)
	s, h := newTestServer(t, rep)
	f.s = s
	mustCall(t, h, http.StatusOK, "POST", "/admin/promote", `{"token":1}`)
	done := make(chan *httptest.ResponseRecorder, 1)
	go func() { done <- call(h, "PUT", "/kv/a", "1") }()
	<-f.in
	rep.close()
	select {
	case rec := <-done:
		if rec.Code != http.StatusServiceUnavailable {
			t.Fatalf("write during shutdown: %d %s, want 503", rec.Code, rec.Body)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a write still waits 5s after the replicator closed")
	}
	body := mustCall(t, h, http.StatusServiceUnavailable, "PUT", "/kv/b", "2")
	if !strings.Contains(body, "shutting down") {
		t.Fatalf("write after close: %s, want 'shutting down'", body)
	}
}

func TestServeOptions(t *testing.T) {
	for _, tc := range []struct {
		o    serveOptions
		want string
	}{
		{serveOptions{Dir: "d"}, "--listen"},
		{serveOptions{Listen: "nohostport", Dir: "d"}, "--listen"},
		{serveOptions{Listen: "127.0.0.1:1"}, "--dir"},
		{serveOptions{Listen: "127.0.0.1:1", Dir: "d", Sync: true, Service: "kv", SyncTimeout: time.Second}, "CONCORD_API"},
		{serveOptions{Listen: "127.0.0.1:1", Dir: "d", Sync: true, API: "http://x", SyncTimeout: time.Second}, "CONCORD_SERVICE"},
		{serveOptions{Listen: "127.0.0.1:1", Dir: "d", Sync: true, API: "http://x", Service: "kv"}, "--sync-timeout"},
		{serveOptions{Listen: "127.0.0.1:1", Dir: "d", Lease: -time.Second}, "--lease"},
		{serveOptions{Listen: "127.0.0.1:1", Dir: "d", Lease: time.Microsecond}, "--lease"},
		{serveOptions{Listen: "127.0.0.1:1", Dir: "d", Lease: 5 * time.Second}, ""},
		{serveOptions{Listen: "127.0.0.1:1", Dir: "d"}, ""},
	} {
		err := tc.o.validate()
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("validate(%+v) = %v, want an error naming %q", tc.o, err, tc.want)
		}
	}
}
