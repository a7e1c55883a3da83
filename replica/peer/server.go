package peer

import (
	"bytes"
	"context"
	"crypto/hmac"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/concordha/concord/core"
)

// Defaults of ServerConfig.
const (
	DefaultClockSkew = 2 * time.Minute
	DefaultMaxNonces = 1 << 16
)

// ServerConfig configures a Server.
type ServerConfig struct {
	// Node is this node's ID (see core.ValidateName), used in logs and
	// reasons.
	Node string
	// Secret is the cluster secret, the same on every node, at least
	// MinSecretLen bytes.
	Secret []byte
	// SpoolDir is the directory where incoming checkpoints are spooled
	// until applied. It must exist; it needs room for the largest
	// checkpoints received at once. Empty means os.TempDir().
	SpoolDir string
	// MaxBytes refuses checkpoint bodies larger than this many bytes,
	// with HTTP 413. Zero means no limit.
	MaxBytes int64
	// ClockSkew is how far a request's timestamp may lie from this node's
	// clock, either way; nodes whose clocks differ by more cannot talk.
	// Zero means DefaultClockSkew.
	ClockSkew time.Duration
	// MaxNonces bounds the nonces remembered to refuse replays. If more
	// requests than this arrive within ClockSkew, the oldest are
	// forgotten and requests stamped before them refused. Zero means
	// DefaultMaxNonces.
	MaxNonces int
	// Clock is where the server reads the time it checks timestamps
	// against. Nil means core.SystemClock().
	Clock core.Clock
	// Logger receives structured logs. Nil means slog.Default().
	Logger *slog.Logger
	// Admit, if set, is called with an authenticated checkpoint's header
	// before its body is read; an error refuses the checkpoint at once,
	// without the body being sent. An error wrapping
	// core.ErrStaleCheckpoint is answered with HTTP 409, one wrapping
	// core.ErrInvalidArgument with 400 (see the package documentation for
	// the other core errors), any other with 403; the error's text is the
	// reason the sender gets. Admit may be called
	// concurrently, also while Apply runs for the same service, so Apply
	// must check again.
	Admit func(Header) error
	// Apply is called with a checkpoint whose body has been received
	// whole and authenticated: body is the spooled file (an *os.File at
	// offset 0) and size its length. ctx ends if the sender goes away.
	// Calls for one service never overlap. The sender's SendCheckpoint
	// returns when Apply does, with Apply's error: one wrapping
	// core.ErrStaleCheckpoint is answered with HTTP 409, other errors
	// with 500 (see the package documentation for the core errors that
	// travel), the error's text as reason. Apply must not keep body: the
	// file is removed when Apply returns. Required.
	Apply func(ctx context.Context, h Header, body io.Reader, size int64) error
}

// Validate checks the configuration and says which field is wrong and how
// to fix it.
func (c ServerConfig) Validate() error {
	var errs []error
	if err := core.ValidateName("ServerConfig.Node", c.Node); err != nil {
		errs = append(errs, err)
	}
	if err := validateSecret("ServerConfig.Secret", c.Secret); err != nil {
		errs = append(errs, err)
	}
	if c.SpoolDir != "" {
		if fi, err := os.Stat(c.SpoolDir); err != nil {
			errs = append(errs, fmt.Errorf("ServerConfig.SpoolDir: %w: create the directory or name another", err))
		} else if !fi.IsDir() {
			errs = append(errs, fmt.Errorf("ServerConfig.SpoolDir %q is not a directory: name a directory", c.SpoolDir))
		}
	}
	if c.MaxBytes < 0 {
		errs = append(errs, fmt.Errorf("ServerConfig.MaxBytes is %d: give a positive size, or 0 for no limit", c.MaxBytes))
	}
	if c.ClockSkew < 0 {
		errs = append(errs, fmt.Errorf("ServerConfig.ClockSkew is %v: give a positive duration, or 0 for the default %v", c.ClockSkew, DefaultClockSkew))
	}
	if c.MaxNonces < 0 {
		errs = append(errs, fmt.Errorf("ServerConfig.MaxNonces is %d: give a positive number, or 0 for the default %d", c.MaxNonces, DefaultMaxNonces))
	}
	if c.Apply == nil {
		errs = append(errs, errors.New("ServerConfig.Apply is nil: give the function that applies checkpoints"))
	}
	return errors.Join(errs...)
}

// CallFunc handles a call: from is the authenticated sender, req the
// call's JSON. Its result is sent back as JSON; its error's text is the
// reason the caller gets (see the package documentation for the core
// errors that travel).
type CallFunc func(ctx context.Context, from string, req json.RawMessage) (any, error)

// Server receives checkpoints and calls from other nodes. It is an
// http.Handler to mount at PathPrefix, without stripping the prefix (the
// request MAC covers the whole path). It is safe for concurrent use.
type Server struct {
	cfg    ServerConfig
	secret []byte
	spool  string
	skew   time.Duration
	clock  core.Clock
	log    *slog.Logger
	replay *replayCache

	mu    sync.Mutex
	calls map[string]CallFunc
	locks map[string]*serviceLock
}

// serviceLock serializes the Apply calls of one service. refs counts its
// holder and waiters, so that it can be dropped when nobody needs it.
type serviceLock struct {
	ch   chan struct{}
	refs int
}

// NewServer returns a Server for c, or an error if c is invalid.
func NewServer(c ServerConfig) (*Server, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("peer: %w", err)
	}
	s := &Server{
		cfg:    c,
		secret: bytes.Clone(c.Secret),
		spool:  c.SpoolDir,
		skew:   c.ClockSkew,
		clock:  c.Clock,
		log:    c.Logger,
		calls:  make(map[string]CallFunc),
		locks:  make(map[string]*serviceLock),
	}
	if s.spool == "" {
		s.spool = os.TempDir()
	}
	if s.skew == 0 {
		s.skew = DefaultClockSkew
	}
	if s.clock == nil {
		s.clock = core.SystemClock()
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.log = s.log.With("component", "peer", "node", c.Node)
	maxNonces := c.MaxNonces
	if maxNonces == 0 {
		maxNonces = DefaultMaxNonces
	}
	s.replay = newReplayCache(int64(s.skew), maxNonces)
	return s, nil
}

// Handle registers fn as the handler of the call name. It fails if name
// is not a valid name (core.ValidateName), fn is nil, or name already has
// a handler.
func (s *Server) Handle(name string, fn CallFunc) error {
	if err := core.ValidateName("call name", name); err != nil {
		return fmt.Errorf("peer: %w", err)
	}
	if fn == nil {
		return fmt.Errorf("peer: call %q: the handler is nil: give a function", name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.calls[name]; ok {
		return fmt.Errorf("peer: call %q already has a handler: register each call once", name)
	}
	s.calls[name] = fn
	return nil
}

// ServeHTTP serves POST /v1/peer/checkpoint/{service} and POST
// /v1/peer/call/{name}.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rest, ok := strings.CutPrefix(r.URL.Path, PathPrefix)
	kind, name, ok2 := strings.Cut(rest, "/")
	if !ok || !ok2 || (kind != "checkpoint" && kind != "call") {
		s.answer(w, http.StatusNotFound, "", fmt.Sprintf("no such path on node %s: use POST %scheckpoint/{service} or %scall/{name}", s.cfg.Node, PathPrefix, PathPrefix))
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		s.answer(w, http.StatusMethodNotAllowed, "", "use POST")
		return
	}
	if err := core.ValidateName(kind+" name in the path", name); err != nil {
		s.answer(w, http.StatusBadRequest, "", err.Error())
		return
	}
	reqMAC, from, ok := s.authenticate(w, r)
	if !ok {
		return
	}
	if kind == "checkpoint" {
		s.serveCheckpoint(w, r, name, from, reqMAC)
	} else {
		s.serveCall(w, r, name, from, reqMAC)
	}
}

// authenticate checks the request MAC, the timestamp and the nonce. It
// answers the request and returns ok false if they do not pass.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request) (reqMAC []byte, from string, ok bool) {
	refuse := func(reason string) ([]byte, string, bool) {
		s.log.Warn("peer request not authenticated", "remote", r.RemoteAddr, "path", r.URL.Path, "from", r.Header.Get(hFrom), "reason", reason)
		s.answer(w, http.StatusUnauthorized, "", reason)
		return nil, "", false
	}
	for _, k := range append(signedHeaders[:], hAuth, hBodyMAC) {
		if len(r.Header.Values(k)) > 1 {
			return refuse(fmt.Sprintf("header %s appears more than once", k))
		}
	}
	for _, k := range []string{hFrom, hTime, hNonce, hAuth} {
		if r.Header.Get(k) == "" {
			return refuse(fmt.Sprintf("request lacks the %s header: send it with a peer.Client configured with the cluster secret", k))
		}
	}
	got, err := hex.DecodeString(r.Header.Get(hAuth))
	if err != nil || !hmac.Equal(got, requestMAC(s.secret, r.Method, r.URL.Path, r.Header)) {
		return refuse("request MAC does not verify: the sender does not use this node's cluster secret, or the request was altered on the way")
	}
	// From here on, the headers are the sender's.
	from = r.Header.Get(hFrom)
	if err := core.ValidateName(hFrom, from); err != nil {
		return refuse(err.Error())
	}
	at, err := strconv.ParseInt(r.Header.Get(hTime), 10, 64)
	if err != nil {
		return refuse(fmt.Sprintf("%s %q is not Unix nanoseconds", hTime, r.Header.Get(hTime)))
	}
	now := s.clock.Now()
	if d := now.Sub(time.Unix(0, at)); d > s.skew || d < -s.skew {
		return refuse(fmt.Sprintf("%s is %v away from the clock of node %s, more than the %v allowed: synchronise the nodes' clocks (NTP)", hTime, d.Round(time.Millisecond), s.cfg.Node, s.skew))
	}
	var nonce [nonceLen]byte
	if v := r.Header.Get(hNonce); len(v) != hex.EncodedLen(nonceLen) {
		return refuse(fmt.Sprintf("%s is not %d hex-encoded bytes", hNonce, nonceLen))
	} else if _, err := hex.Decode(nonce[:], []byte(v)); err != nil {
		return refuse(fmt.Sprintf("%s is not %d hex-encoded bytes", hNonce, nonceLen))
	}
	if !s.replay.admit(nonce, at, now.UnixNano()) {
		return refuse("request replayed: its nonce was seen before (or it is older than requests this node has forgotten)")
	}
	return got, from, true
}

// parseHeader reads the checkpoint header of an authenticated request
// for service (from the path).
func parseHeader(r *http.Request, service, from string) (Header, error) {
	h := Header{Service: service, From: from}
	if got := r.Header.Get(hService); got != service {
		return h, fmt.Errorf("%s %q differs from the service %q in the path", hService, got, service)
	}
	for _, f := range []struct {
		name string
		dst  *int64
	}{{hEpoch, &h.Stamp.Epoch}, {hToken, &h.Stamp.Token}, {hSeq, &h.Stamp.Seq}} {
		v, err := strconv.ParseInt(r.Header.Get(f.name), 10, 64)
		if err != nil {
			return h, fmt.Errorf("%s %q is not a decimal integer", f.name, r.Header.Get(f.name))
		}
		*f.dst = v
	}
	return h, nil
}

func (s *Server) serveCheckpoint(w http.ResponseWriter, r *http.Request, service, from string, reqMAC []byte) {
	h, err := parseHeader(r, service, from)
	if err != nil {
		s.answer(w, http.StatusBadRequest, "", err.Error())
		return
	}
	log := s.log.With("service", service, "from", from, "stamp", h.Stamp.String())
	if s.cfg.Admit != nil {
		if err := s.cfg.Admit(h); err != nil {
			status, code := classify(err, http.StatusForbidden)
			log.Info("checkpoint refused", "err", err)
			s.answer(w, status, code, err.Error())
			return
		}
	}
	if s.cfg.MaxBytes > 0 && r.ContentLength > s.cfg.MaxBytes {
		s.answer(w, http.StatusRequestEntityTooLarge, "", s.tooLarge())
		return
	}
	body := r.Body
	if s.cfg.MaxBytes > 0 {
		body = http.MaxBytesReader(w, r.Body, s.cfg.MaxBytes)
	}
	f, err := os.CreateTemp(s.spool, "concord-checkpoint-"+service+"-*")
	if err != nil {
		log.Error("cannot spool checkpoint", "err", err)
		s.answer(w, http.StatusInternalServerError, "", fmt.Sprintf("node %s cannot spool the checkpoint: %v", s.cfg.Node, err))
		return
	}
	defer func() {
		_ = f.Close()
		if err := os.Remove(f.Name()); err != nil {
			log.Error("cannot remove spooled checkpoint", "file", f.Name(), "err", err)
		}
	}()

	mac := newBodyMAC(s.secret, reqMAC)
	size, err := io.Copy(io.MultiWriter(f, mac), body)
	if err != nil {
		if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
			log.Warn("checkpoint too large", "max_bytes", s.cfg.MaxBytes)
			s.answer(w, http.StatusRequestEntityTooLarge, "", s.tooLarge())
			return
		}
		log.Warn("checkpoint not received whole", "bytes", size, "err", err)
		// The sender is probably gone; answer in case it is not.
		s.answer(w, http.StatusBadRequest, "", fmt.Sprintf("node %s could not read the checkpoint body after %d bytes: %v", s.cfg.Node, size, err))
		return
	}
	got := r.Trailer.Get(hBodyMAC)
	if got == "" {
		got = r.Header.Get(hBodyMAC)
	}
	if got == "" {
		log.Warn("checkpoint refused: no body MAC", "remote", r.RemoteAddr)
		s.answer(w, http.StatusUnauthorized, "", fmt.Sprintf("checkpoint lacks the %s trailer: send it with a peer.Client", hBodyMAC))
		return
	}
	if want, err := hex.DecodeString(got); err != nil || !hmac.Equal(want, mac.Sum(nil)) {
		log.Warn("checkpoint refused: body MAC does not verify", "remote", r.RemoteAddr, "bytes", size)
		s.answer(w, http.StatusUnauthorized, "", "checkpoint body MAC does not verify: the body was altered or cut on the way")
		return
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		log.Error("cannot rewind spooled checkpoint", "err", err)
		s.answer(w, http.StatusInternalServerError, "", fmt.Sprintf("node %s cannot read the spooled checkpoint: %v", s.cfg.Node, err))
		return
	}
	unlock, err := s.lockService(r.Context(), service)
	if err != nil {
		log.Warn("checkpoint dropped: the sender went away while it waited for an earlier one to apply", "err", err)
		s.answer(w, http.StatusServiceUnavailable, "", err.Error())
		return
	}
	err = s.cfg.Apply(r.Context(), h, f, size)
	unlock()
	if err != nil {
		status, code := classify(err, http.StatusInternalServerError)
		log.Warn("checkpoint not applied", "bytes", size, "err", err)
		s.answer(w, status, code, err.Error())
		return
	}
	log.Debug("checkpoint applied", "bytes", size)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) tooLarge() string {
	return fmt.Sprintf("checkpoint exceeds the %d bytes node %s accepts: raise its MaxBytes, or shrink the state", s.cfg.MaxBytes, s.cfg.Node)
}

// lockService waits, until ctx ends, for the service's turn to apply.
func (s *Server) lockService(ctx context.Context, service string) (unlock func(), err error) {
	s.mu.Lock()
	l := s.locks[service]
	if l == nil {
		l = &serviceLock{ch: make(chan struct{}, 1)}
		s.locks[service] = l
	}
	l.refs++
	s.mu.Unlock()
	release := func() {
		s.mu.Lock()
		l.refs--
		if l.refs == 0 {
			delete(s.locks, service)
		}
		s.mu.Unlock()
	}
	select {
	case l.ch <- struct{}{}:
		return func() { <-l.ch; release() }, nil
	case <-ctx.Done():
		release()
		return nil, ctx.Err()
	}
}

func (s *Server) serveCall(w http.ResponseWriter, r *http.Request, name, from string, reqMAC []byte) {
	s.mu.Lock()
	fn := s.calls[name]
	s.mu.Unlock()
	if fn == nil {
		s.answer(w, http.StatusNotFound, "", fmt.Sprintf("node %s has no call %q", s.cfg.Node, name))
		return
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxCallBytes))
	if err != nil {
		if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
			s.answer(w, http.StatusRequestEntityTooLarge, "", fmt.Sprintf("call body exceeds %d bytes", maxCallBytes))
			return
		}
		s.answer(w, http.StatusBadRequest, "", fmt.Sprintf("reading the call body: %v", err))
		return
	}
	mac := newBodyMAC(s.secret, reqMAC)
	mac.Write(data)
	got := r.Header.Get(hBodyMAC)
	if got == "" {
		got = r.Trailer.Get(hBodyMAC)
	}
	if want, err := hex.DecodeString(got); err != nil || !hmac.Equal(want, mac.Sum(nil)) {
		s.log.Warn("call refused: body MAC does not verify", "call", name, "from", from, "remote", r.RemoteAddr)
		s.answer(w, http.StatusUnauthorized, "", "call body MAC is missing or does not verify: the body was altered on the way")
		return
	}
	if !json.Valid(data) {
		s.answer(w, http.StatusBadRequest, "", "call body is not JSON")
		return
	}
	result, err := fn(r.Context(), from, json.RawMessage(data))
	if err != nil {
		status, code := classify(err, http.StatusInternalServerError)
		s.log.Info("call failed", "call", name, "from", from, "err", err)
		s.answer(w, status, code, err.Error())
		return
	}
	out, err := json.Marshal(result)
	if err != nil {
		s.log.Error("call result cannot be encoded", "call", name, "err", err)
		s.answer(w, http.StatusInternalServerError, "", fmt.Sprintf("node %s cannot encode the result of call %q as JSON: %v", s.cfg.Node, name, err))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(out)))
	_, _ = w.Write(out)
}

// answer sends a refusal or failure: status, the Concord-Error code if
// any, and reason as plain text.
func (s *Server) answer(w http.ResponseWriter, status int, code, reason string) {
	if code != "" {
		w.Header().Set(hError, code)
	}
	http.Error(w, reason, status)
}
