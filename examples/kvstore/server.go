package main

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// The daemon's roles, named as concord names them (CONCORD_ROLE).
const (
	rolePrimary   = "primary"
	roleSecondary = "secondary"
	roleSpare     = "spare"
)

// rolePrimaryFenced is the role /healthz reports for a primary whose
// lease has expired: it refuses writes until concord renews the lease.
// It is reported only; the daemon's role is still rolePrimary, so a
// renewal with the same token makes it writable again.
const rolePrimaryFenced = "primary-fenced"

// failFile is the fault switch: while DIR/fail exists, /healthz answers
// 500, so the agent's monitor reports a failure.
const failFile = "fail"

// maxValueBytes bounds one value written through PUT /kv/{key}.
const maxValueBytes = 1 << 20

// maxAdminBodyBytes bounds the JSON body of promote and demote.
const maxAdminBodyBytes = 64 << 10

// Errors of the write and admin paths, mapped onto HTTP statuses by
// writeError.
var (
	// errNoKey: the key to read or delete does not exist (404).
	errNoKey = errors.New("no such key")
	// errStaleToken: a promotion or state carries a fencing token lower
	// than the highest this daemon has seen (409).
	errStaleToken = errors.New("stale fencing token")
	// errConflict: the request contradicts the daemon's role (409).
	errConflict = errors.New("conflict")
)

// notPrimaryError refuses a write on a daemon that is not the primary.
type notPrimaryError struct {
	role, primary string
}

func (e *notPrimaryError) Error() string {
	if e.primary == "" {
		return fmt.Sprintf("this node is a %s, not the primary, and no primary is known: retry later", e.role)
	}
	return fmt.Sprintf("this node is a %s, not the primary: send writes to the primary (%s)", e.role, e.primary)
}

// leaseExpiredError refuses a write on a primary whose lease concord has
// not renewed in time (503).
type leaseExpiredError struct {
	// since is the time since the last renewal.
	since time.Duration
}

func (e *leaseExpiredError) Error() string {
	return fmt.Sprintf("primary lease expired: concord has not renewed it for %v; refusing writes until it does", e.since.Round(time.Millisecond))
}

// serverConfig is what a server needs besides its state.
type serverConfig struct {
	// Dir is the data directory: state.json and the fail switch live here.
	Dir string
	// Node is this node's name, reported as the primary once promoted.
	Node string
	// Primary is the primary's name as known at start ("" if none).
	Primary string
	// AdminToken guards /admin/; required.
	AdminToken string
	// Replicator, if not nil, makes every write wait for a concord
	// checkpoint (sync mode).
	Replicator *replicator
	// Lease, if positive, is how long the primary role lasts after a
	// promotion or a renewal (POST /admin/renew): once it has passed
	// without a renewal, the primary refuses writes. 0 turns it off.
	Lease time.Duration
	// Now reads the clock; nil means time.Now. Lease expiry compares two
	// of its readings, which time.Now keeps monotonic.
	Now func() time.Time
	// Logger receives role changes and failures.
	Logger *slog.Logger
}

// server is the daemon's HTTP face over its state. One mutex guards the
// state and the role; it is never held across a network call, so a
// checkpoint (GET /admin/state) can run while writes wait for one.
type server struct {
	cfg serverConfig
	log *slog.Logger

	mu      sync.Mutex
	st      state
	role    string
	primary string
	// renewed is when the primary's lease last started: its promotion or
	// its last renewal.
	renewed time.Time
	// fenceLogged is set once an expired lease was logged, until the
	// next renewal, so a stream of refused writes logs it once.
	fenceLogged bool
}

// newServer returns a server over st; it starts as a spare.
func newServer(cfg serverConfig, st state) *server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if st.Data == nil {
		st.Data = map[string]string{}
	}
	return &server{cfg: cfg, log: cfg.Logger, st: st, role: roleSpare, primary: cfg.Primary}
}

// handler routes the HTTP API (see README.md).
func (s *server) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /kv", s.handleList)
	mux.HandleFunc("GET /kv/{key...}", s.handleGet)
	mux.HandleFunc("PUT /kv/{key...}", s.handlePut)
	mux.HandleFunc("DELETE /kv/{key...}", s.handleDelete)
	mux.HandleFunc("GET /healthz", s.handleHealth)
	mux.Handle("POST /admin/promote", s.admin(s.handlePromote))
	mux.Handle("POST /admin/demote", s.admin(s.handleDemote))
	mux.Handle("POST /admin/renew", s.admin(s.handleRenew))
	mux.Handle("GET /admin/state", s.admin(s.handleGetState))
	mux.Handle("PUT /admin/state", s.admin(s.handlePutState))
	return mux
}

// admin lets through only loopback clients that present the admin token.
func (s *server) admin(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		ip, perr := netip.ParseAddr(host)
		if err != nil || perr != nil || !ip.Unmap().IsLoopback() {
			writeJSON(w, http.StatusForbidden, errBody("admin API: only loopback clients may call it"))
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(s.cfg.AdminToken)) != 1 {
			writeJSON(w, http.StatusUnauthorized, errBody("admin API: send the token of DIR/admin.token as 'Authorization: Bearer TOKEN'"))
			return
		}
		h(w, r)
	})
}

func (s *server) handleList(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	data := maps.Clone(s.st.Data)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, data)
}

func (s *server) handleGet(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("key")
	s.mu.Lock()
	v, ok := s.st.Data[key]
	s.mu.Unlock()
	if !ok {
		writeError(w, fmt.Errorf("key %q: %w", key, errNoKey))
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Write([]byte(v))
}

func (s *server) handlePut(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("key")
	if key == "" {
		writeJSON(w, http.StatusBadRequest, errBody("the key is empty: PUT /kv/{key}"))
		return
	}
	body, err := readAll(w, r, maxValueBytes)
	if err != nil {
		writeError(w, fmt.Errorf("value of key %q: %w", key, err))
		return
	}
	v := string(body)
	s.finishWrite(w, r, key, &v)
}

func (s *server) handleDelete(w http.ResponseWriter, r *http.Request) {
	s.finishWrite(w, r, r.PathValue("key"), nil)
}

// finishWrite applies a write (value nil: delete) and, in sync mode,
// answers only once a concord checkpoint taken after it is acknowledged.
// A write is never acknowledged once the primary's lease has expired,
// so a client cannot be told "stored" by a primary another node may
// already have replaced.
func (s *server) finishWrite(w http.ResponseWriter, r *http.Request, key string, value *string) {
	version, err := s.write(key, value)
	if err != nil {
		writeError(w, err)
		return
	}
	resp := map[string]any{"version": version}
	if s.cfg.Replicator != nil {
		res, err := s.cfg.Replicator.wait(r.Context())
		if err != nil {
			// The write stays applied here: a later checkpoint carries it,
			// or a failover to a secondary that never got it drops it.
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{
				"error":   "not replicated: " + err.Error() + " (the write is applied on this node, not yet on the secondaries)",
				"version": version,
			})
			return
		}
		resp["seq"], resp["acks"] = res.Seq, res.Acks
	}
	// The lease may have run out while the write was saved or waited for
	// its checkpoint.
	s.mu.Lock()
	err = s.checkLease()
	s.mu.Unlock()
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{
			"error":   "not acknowledged: " + err.Error() + " (the lease expired while the write was in flight; the write is applied on this node, and is lost if another node has become the primary)",
			"version": version,
		})
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// checkLease returns a *leaseExpiredError if the daemon is the primary
// and its lease has run out; s.mu must be held. It reads the clock on
// each call, so every write checks the lease itself rather than trusting
// a timer.
func (s *server) checkLease() error {
	if s.cfg.Lease <= 0 || s.role != rolePrimary {
		return nil
	}
	since := s.cfg.Now().Sub(s.renewed)
	if since <= s.cfg.Lease {
		return nil
	}
	if !s.fenceLogged {
		s.fenceLogged = true
		s.log.Warn("primary lease expired: refusing writes until concord renews it", "lease", s.cfg.Lease, "since_renewal", since)
	}
	return &leaseExpiredError{since: since}
}

// write applies one write on the primary and saves the state; if the
// save fails, the write is undone.
func (s *server) write(key string, value *string) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.role != rolePrimary {
		return 0, &notPrimaryError{role: s.role, primary: s.primary}
	}
	if err := s.checkLease(); err != nil {
		return 0, err
	}
	old, had := s.st.Data[key]
	if value == nil {
		if !had {
			return 0, fmt.Errorf("key %q: %w", key, errNoKey)
		}
		delete(s.st.Data, key)
	} else {
		s.st.Data[key] = *value
	}
	s.st.Version++
	if err := saveState(s.cfg.Dir, &s.st); err != nil {
		s.st.Version--
		if had {
			s.st.Data[key] = old
		} else {
			delete(s.st.Data, key)
		}
		return 0, fmt.Errorf("save state: %w", err)
	}
	return s.st.Version, nil
}

// health is the body of GET /healthz.
type health struct {
	// Role is primary, primary-fenced (a primary whose lease expired),
	// secondary or spare.
	Role    string `json:"role"`
	Primary string `json:"primary"`
	Version int64  `json:"version"`
	Token   int64  `json:"token"`
	Epoch   int64  `json:"epoch"`
	Keys    int    `json:"keys"`
	// PID lets the agent tell its own daemon from another process on the
	// same address.
	PID int `json:"pid"`
	// LeaseMS is the configured lease in milliseconds; absent if off.
	LeaseMS int64 `json:"lease_ms,omitempty"`
	// LeaseLeftMS is, on a primary with a lease, the time until the
	// lease expires (0 once it has); absent otherwise.
	LeaseLeftMS *int64 `json:"lease_left_ms,omitempty"`
	Error       string `json:"error,omitempty"`
}

func (s *server) handleHealth(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	h := health{Role: s.role, Primary: s.primary, Version: s.st.Version, Token: s.st.Token,
		Epoch: s.st.Epoch, Keys: len(s.st.Data), PID: os.Getpid(), LeaseMS: s.cfg.Lease.Milliseconds()}
	if s.cfg.Lease > 0 && s.role == rolePrimary {
		left := max(s.cfg.Lease-s.cfg.Now().Sub(s.renewed), 0)
		ms := left.Milliseconds()
		h.LeaseLeftMS = &ms
		if left == 0 {
			h.Role = rolePrimaryFenced
		}
	}
	s.mu.Unlock()
	code := http.StatusOK
	if _, err := os.Stat(filepath.Join(s.cfg.Dir, failFile)); err == nil {
		h.Error = "the fault switch " + failFile + " exists in the data directory: remove it to be healthy again"
		code = http.StatusInternalServerError
	}
	writeJSON(w, code, h)
}

// promoteRequest is the body of POST /admin/promote.
type promoteRequest struct {
	Token int64 `json:"token"`
	Epoch int64 `json:"epoch"`
}

func (s *server) handlePromote(w http.ResponseWriter, r *http.Request) {
	var req promoteRequest
	if err := decodeBody(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.Token < 0 || req.Epoch < 0 {
		writeJSON(w, http.StatusBadRequest, errBody("promote: token and epoch must not be negative"))
		return
	}
	if err := s.promote(req.Token, req.Epoch); err != nil {
		writeError(w, err)
		return
	}
	s.handleHealth(w, r)
}

// promote makes the daemon the primary under token. A token equal to the
// highest seen repeats the promotion (concord may retry); a lower one is
// a deposed primary's and is refused.
func (s *server) promote(token, epoch int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if token < s.st.Token {
		return fmt.Errorf("promote with token %d: %w: this node has seen token %d", token, errStaleToken, s.st.Token)
	}
	oldToken, oldEpoch := s.st.Token, s.st.Epoch
	s.st.Token, s.st.Epoch = token, epoch
	if err := saveState(s.cfg.Dir, &s.st); err != nil {
		s.st.Token, s.st.Epoch = oldToken, oldEpoch
		return fmt.Errorf("save state: %w", err)
	}
	if s.role != rolePrimary {
		s.log.Info("promoted", "token", token, "epoch", epoch, "from", s.role)
	}
	s.role, s.primary = rolePrimary, s.cfg.Node
	s.startLease()
	return nil
}

// startLease starts a fresh lease on the primary; s.mu must be held.
func (s *server) startLease() {
	if s.fenceLogged {
		s.log.Info("primary lease renewed: accepting writes again")
	}
	s.renewed, s.fenceLogged = s.cfg.Now(), false
}

// renewRequest is the body of POST /admin/renew.
type renewRequest struct {
	// Token is the fencing token concord holds the primary role with.
	Token int64 `json:"token"`
}

func (s *server) handleRenew(w http.ResponseWriter, r *http.Request) {
	var req renewRequest
	if err := decodeBody(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.Token < 0 {
		writeJSON(w, http.StatusBadRequest, errBody("renew: token must not be negative"))
		return
	}
	if err := s.renew(req.Token); err != nil {
		writeError(w, err)
		return
	}
	s.handleHealth(w, r)
}

// renew starts a fresh lease on the primary, also after the old one
// expired. A token lower than the highest seen is a deposed primary's
// and is refused. A higher one is accepted without being stored: concord
// holds the role on this node, and its promote action brings the token.
// Without a lease configured, a renewal is checked and has no effect.
func (s *server) renew(token int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if token < s.st.Token {
		return fmt.Errorf("renew with token %d: %w: this node has seen token %d", token, errStaleToken, s.st.Token)
	}
	if s.role != rolePrimary {
		return fmt.Errorf("renew: %w: this node is a %s, not the primary, so it holds no lease; promote it first", errConflict, s.role)
	}
	s.startLease()
	return nil
}

// demoteRequest is the body of POST /admin/demote.
type demoteRequest struct {
	// Role is the role to go to: secondary or spare.
	Role string `json:"role"`
	// Primary names the new primary, if known; write refusals report it.
	Primary string `json:"primary"`
}

func (s *server) handleDemote(w http.ResponseWriter, r *http.Request) {
	var req demoteRequest
	if err := decodeBody(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.Role != roleSecondary && req.Role != roleSpare {
		writeJSON(w, http.StatusBadRequest, errBody(fmt.Sprintf("demote: role %q: want %q or %q", req.Role, roleSecondary, roleSpare)))
		return
	}
	s.mu.Lock()
	if s.role != req.Role {
		s.log.Info("demoted", "to", req.Role, "from", s.role, "primary", req.Primary)
	}
	// A demotion ends the lease; a later promotion starts a new one.
	s.role, s.primary, s.fenceLogged = req.Role, req.Primary, false
	s.mu.Unlock()
	s.handleHealth(w, r)
}

func (s *server) handleGetState(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	snap := s.st
	snap.Data = maps.Clone(s.st.Data)
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	json.NewEncoder(w).Encode(&snap)
}

func (s *server) handlePutState(w http.ResponseWriter, r *http.Request) {
	st, err := decodeState(http.MaxBytesReader(w, r.Body, maxStateBytes))
	if err != nil {
		writeError(w, badRequest(err))
		return
	}
	if err := s.restore(st); err != nil {
		writeError(w, err)
		return
	}
	// The primary that sent the state, if the agent says: the daemon names
	// it when it refuses a write.
	if p := r.URL.Query().Get("primary"); p != "" {
		s.mu.Lock()
		if s.role != rolePrimary {
			s.primary = p
		}
		s.mu.Unlock()
	}
	s.handleHealth(w, r)
}

// restore replaces the state with st. A state from an older token is a
// deposed primary's and is refused. On the primary, a state with its own
// token would overwrite its own writes and is refused; one with a higher
// token proves a newer primary, so the daemon steps down to secondary and
// takes it.
func (s *server) restore(st state) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st.Token < s.st.Token {
		return fmt.Errorf("restore a state of token %d: %w: this node has seen token %d", st.Token, errStaleToken, s.st.Token)
	}
	if s.role == rolePrimary && st.Token == s.st.Token {
		return fmt.Errorf("restore: %w: this node is the primary of token %d and the state would replace its own writes; demote it first", errConflict, st.Token)
	}
	old := s.st
	s.st = st
	if err := saveState(s.cfg.Dir, &s.st); err != nil {
		s.st = old
		return fmt.Errorf("save state: %w", err)
	}
	if s.role == rolePrimary {
		s.log.Warn("restored a state of a newer primary: stepping down", "token", st.Token, "was", old.Token)
		s.role, s.primary, s.fenceLogged = roleSecondary, "", false
	}
	return nil
}

// badRequestError marks an error as the client's (400).
type badRequestError struct{ err error }

func (e *badRequestError) Error() string { return e.err.Error() }
func (e *badRequestError) Unwrap() error { return e.err }

func badRequest(err error) error { return &badRequestError{err} }

// decodeBody decodes a small, strict JSON body into v.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxAdminBodyBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest(fmt.Errorf("%s %s: body: %w", r.Method, r.URL.Path, err))
	}
	return nil
}

// readAll reads a body of at most limit bytes.
func readAll(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	return io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
}

// writeError answers err with the status its kind calls for.
func writeError(w http.ResponseWriter, err error) {
	var np *notPrimaryError
	var expired *leaseExpiredError
	var tooBig *http.MaxBytesError
	var bad *badRequestError
	code := http.StatusInternalServerError
	switch {
	case errors.As(err, &np):
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error(), "primary": np.primary})
		return
	case errors.As(err, &expired):
		code = http.StatusServiceUnavailable
	case errors.As(err, &tooBig):
		code = http.StatusRequestEntityTooLarge
		err = fmt.Errorf("%w: the limit is %d bytes", err, tooBig.Limit)
	case errors.Is(err, errNoKey):
		code = http.StatusNotFound
	case errors.Is(err, errStaleToken), errors.Is(err, errConflict):
		code = http.StatusConflict
	case errors.As(err, &bad):
		code = http.StatusBadRequest
	}
	writeJSON(w, code, errBody(err.Error()))
}

func errBody(msg string) map[string]string { return map[string]string{"error": msg} }

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}
