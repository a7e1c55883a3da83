package peer

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/concordha/concord/core"
)

// Errors of the sender. Each error a Client returns for an answer of the
// receiver wraps one of them, and, when the receiver named its cause, the
// core error it named (core.ErrStaleCheckpoint, core.ErrNotPrimary,
// core.ErrUnknownService, ...). Errors of the transport itself (the
// receiver cannot be reached, the connection broke, ctx ended) wrap none
// of them.
var (
	// ErrUnauthorized: the receiver did not authenticate the request
	// (HTTP 401): the nodes do not share the secret, their clocks differ
	// by more than the receiver's clock-skew window, the request was a
	// replay, or its body was altered on the way. It also wraps
	// ErrRefused.
	ErrUnauthorized = errors.New("request not authenticated by the receiving node")
	// ErrRefused: the receiver refused the request (any HTTP 4xx): a
	// stale checkpoint (HTTP 409, also wrapping core.ErrStaleCheckpoint),
	// a body over its size limit (413), an unknown call (404), a request
	// it could not parse (400). Sending the same request again does not
	// help.
	ErrRefused = errors.New("refused by the receiving node")
	// ErrRemote: the receiver accepted the request but failed to carry it
	// out (HTTP 5xx): ServerConfig.Apply or a call's handler returned an
	// error, or the receiver could not spool the checkpoint.
	ErrRemote = errors.New("failed on the receiving node")
)

// remoteError is the receiver's answer to a request it refused or failed.
type remoteError struct {
	status int
	reason string
	errs   []error // ErrRefused, ErrUnauthorized or ErrRemote first, then causes
}

func (e *remoteError) Error() string {
	return fmt.Sprintf("%v (HTTP %d %s): %s", e.errs[0], e.status, http.StatusText(e.status), e.reason)
}

func (e *remoteError) Unwrap() []error { return e.errs }

// codes lists the core errors that travel between nodes: the receiver
// names them in the Concord-Error header, and the sender's error wraps
// them again. status is the HTTP status the receiver answers with.
var codes = []struct {
	code   string
	err    error
	status int
}{
	{"stale-checkpoint", core.ErrStaleCheckpoint, http.StatusConflict},
	{"not-primary", core.ErrNotPrimary, http.StatusConflict},
	{"conflict", core.ErrConflict, http.StatusConflict},
	{"unknown-service", core.ErrUnknownService, http.StatusNotFound},
	{"not-found", core.ErrNotFound, http.StatusNotFound},
	{"invalid-argument", core.ErrInvalidArgument, http.StatusBadRequest},
	{"closed", core.ErrClosed, http.StatusServiceUnavailable},
	{"unavailable", core.ErrUnavailable, http.StatusServiceUnavailable},
}

// classify returns the HTTP status and Concord-Error code for an error of
// the application (Admit, Apply or a call's handler): the first of codes
// that err wraps, or otherwise fallback and no code.
func classify(err error, fallback int) (status int, code string) {
	for _, c := range codes {
		if errors.Is(err, c.err) {
			return c.status, c.code
		}
	}
	return fallback, ""
}

// answerError turns the receiver's answer (status, Concord-Error code and
// reason) into the sender's error. A 409 without a code is taken for a
// stale checkpoint when staleOn409 is set.
func answerError(status int, code, reason string, staleOn409 bool) error {
	e := &remoteError{status: status, reason: reason}
	switch {
	case status == http.StatusUnauthorized:
		e.errs = []error{ErrUnauthorized, ErrRefused}
	case status >= 400 && status < 500:
		e.errs = []error{ErrRefused}
	default:
		e.errs = []error{ErrRemote}
	}
	named := false
	for _, c := range codes {
		if c.code == code {
			e.errs = append(e.errs, c.err)
			named = true
			break
		}
	}
	if !named && staleOn409 && status == http.StatusConflict {
		e.errs = append(e.errs, core.ErrStaleCheckpoint)
	}
	if e.reason == "" {
		e.reason = "no reason given"
	}
	return e
}
