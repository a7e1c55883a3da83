package consul

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/concordha/concord/core"
)

// convertError maps an error of the Consul client onto the errors of
// core, for the operation op on key (which may be empty). It is the one
// place where Consul's errors are interpreted:
//
//   - if ctx has ended, the error wraps ctx.Err(): the caller gave up, and
//     the operation may or may not have taken effect;
//   - if the Store is closed, core.ErrClosed;
//   - Consul refusing the client (HTTP 403: "Permission denied", "ACL not
//     found") wraps core.ErrDenied: retrying it cannot help;
//   - an agent that cannot be reached (a transport error) or cannot serve
//     now (no cluster leader, a failed RPC to the servers, 429, 502-504)
//     wraps core.ErrUnavailable;
//   - a request Consul refuses as malformed or too large (400, 413, a
//     session TTL out of its range) wraps core.ErrInvalidArgument;
//   - anything else is returned wrapped as it is.
//
// The Consul client reports some failures only as text (a transaction's
// HTTP errors, the per-operation errors of a rolled-back transaction),
// so classify reads the text as well as the status code.
func (s *Store) convertError(ctx context.Context, op, key string, err error) error {
	if err == nil {
		return nil
	}
	what := "consul: " + op
	if key != "" {
		what = fmt.Sprintf("consul: %s %q", op, key)
	}
	if ctx != nil && ctx.Err() != nil {
		if !errors.Is(err, ctx.Err()) {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	if s.isClosed() {
		return fmt.Errorf("%s: %w (%w)", what, core.ErrClosed, err)
	}
	if kind := classify(err); kind != nil {
		if errors.Is(err, kind) {
			return fmt.Errorf("%s: %w", what, err)
		}
		return fmt.Errorf("%s: %w (%w)", what, kind, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// classify returns the core error that err is a case of, or nil.
func classify(err error) error {
	for _, kind := range []error{core.ErrDenied, core.ErrUnavailable, core.ErrInvalidArgument} {
		if errors.Is(err, kind) {
			return kind
		}
	}
	if isTransport(err) {
		return core.ErrUnavailable
	}
	var se api.StatusError
	if errors.As(err, &se) {
		switch se.Code {
		case http.StatusForbidden, http.StatusUnauthorized:
			return core.ErrDenied
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
			return core.ErrInvalidArgument
		case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return core.ErrUnavailable
		}
	}
	return classifyText(err.Error())
}

// Texts of Consul's errors, lower-cased, by the core error they mean.
var (
	deniedTexts  = []string{"permission denied", "acl not found"}
	invalidTexts = []string{
		"invalid session ttl", "too many operations", "too large",
		"invalid key", "request decode failed", "failed to parse body",
	}
	unavailableTexts = []string{
		"no cluster leader", "leadership lost", "no path to datacenter",
		"rpc error", "no known consul servers", "timed out", "rate limit",
		"unexpected response code: 502", "unexpected response code: 503", "unexpected response code: 504",
	}
)

// classifyText classifies an error by its text alone.
func classifyText(msg string) error {
	msg = strings.ToLower(msg)
	has := func(texts []string) bool {
		for _, t := range texts {
			if strings.Contains(msg, t) {
				return true
			}
		}
		return false
	}
	switch {
	case has(deniedTexts):
		return core.ErrDenied
	case has(invalidTexts):
		return core.ErrInvalidArgument
	case has(unavailableTexts):
		return core.ErrUnavailable
	}
	return nil
}

// isDenied tells whether a text from Consul (such as a transaction
// operation's error) says the client is refused.
func isDenied(msg string) bool { return classifyText(msg) == core.ErrDenied }

// isTransport tells whether err comes from the HTTP transport: the agent
// was not reached, or the connection failed before an answer.
func isTransport(err error) bool {
	var ue *url.Error
	if errors.As(err, &ue) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne)
}

// notSent tells whether a transport error shows that the request never
// reached the agent: the connection or its TLS handshake failed.
func notSent(err error) bool {
	var (
		op  *net.OpError
		cve *tls.CertificateVerificationError
		uae x509.UnknownAuthorityError
		hne x509.HostnameError
		rhe tls.RecordHeaderError
	)
	return errors.As(err, &op) && op.Op == "dial" ||
		errors.As(err, &cve) || errors.As(err, &uae) || errors.As(err, &hne) || errors.As(err, &rhe)
}

// isPermanent tells whether retrying err cannot help: the Store is closed,
// or Consul refuses this client.
func isPermanent(err error) bool {
	return errors.Is(err, core.ErrClosed) || errors.Is(err, core.ErrDenied)
}
