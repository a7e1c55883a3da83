package client

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/concordha/concord/core"
)

// HTTPCheck returns a Check that asks a node's API,
// GET <scheme>://<api>/v1/services/<service>/primary, with hc (give it the
// TLS settings of the node API, if it has them; scheme is "http" or
// "https"). The node answers 200 with its token and valid_for_ms only
// while it is the primary with a session the store cannot expire for
// that long; 503 when it is not the primary.
func HTTPCheck(hc *http.Client, scheme string) Check {
	return func(ctx context.Context, api, service string) (int64, time.Duration, error) {
		u := url.URL{Scheme: scheme, Host: api, Path: "/v1/services/" + url.PathEscape(service) + "/primary"}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return 0, 0, err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return 0, 0, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		if err != nil {
			return 0, 0, fmt.Errorf("GET %s: reading the answer: %w", u.String(), err)
		}
		switch resp.StatusCode {
		case http.StatusOK:
		case http.StatusServiceUnavailable:
			return 0, 0, fmt.Errorf("GET %s: %d: %w", u.String(), resp.StatusCode, core.ErrNotPrimary)
		default:
			return 0, 0, fmt.Errorf("GET %s: unexpected status %d", u.String(), resp.StatusCode)
		}
		var a struct {
			Token      int64 `json:"token"`
			ValidForMS int64 `json:"valid_for_ms"`
		}
		if err := json.Unmarshal(body, &a); err != nil {
			return 0, 0, fmt.Errorf("GET %s: the answer is not the primary check's JSON: %w", u.String(), err)
		}
		return a.Token, time.Duration(a.ValidForMS) * time.Millisecond, nil
	}
}
