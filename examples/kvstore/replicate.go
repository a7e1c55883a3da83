package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// errReplicatorClosed is returned by wait once the daemon shuts down.
var errReplicatorClosed = errors.New("the daemon is shutting down")

// checkpointResult is concord's answer to an on-demand checkpoint.
type checkpointResult struct {
	Seq  int64 `json:"seq"`
	Acks int   `json:"acks"`
}

// replicator asks concord for on-demand checkpoints, for sync mode.
//
// A write waits for a call that started after it was applied, so the
// checkpoint that call asks for contains it. Writes that arrive while a
// call runs share the next one: at most one call runs and at most one
// waits to start, however many writers there are.
type replicator struct {
	url     string
	token   string
	timeout time.Duration
	client  *http.Client

	// ctx ends the running call when the daemon shuts down.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	running bool   // a call runs (in the goroutine run)
	next    *round // the round the next call will settle, nil if none waits
	closed  bool
}

// round is one call to concord and the writers waiting for it.
type round struct {
	done    chan struct{}
	waiters int // writes that share it
	res     checkpointResult
	err     error
}

// newReplicator calls POST {api}/v1/services/{service}/checkpoint with
// token as bearer, each call bounded by timeout.
func newReplicator(api, token, service string, timeout time.Duration) *replicator {
	ctx, cancel := context.WithCancel(context.Background())
	return &replicator{
		url:     strings.TrimRight(api, "/") + "/v1/services/" + url.PathEscape(service) + "/checkpoint",
		token:   token,
		timeout: timeout,
		client:  &http.Client{},
		ctx:     ctx,
		cancel:  cancel,
	}
}

// wait returns once a checkpoint call that started after wait was called
// has answered, with its result; or when ctx ends.
func (r *replicator) wait(ctx context.Context) (checkpointResult, error) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return checkpointResult{}, errReplicatorClosed
	}
	if r.next == nil {
		r.next = &round{done: make(chan struct{})}
	}
	rd := r.next
	rd.waiters++
	if !r.running {
		r.running, r.next = true, nil
		r.wg.Add(1)
		go r.run(rd)
	}
	r.mu.Unlock()
	select {
	case <-rd.done:
		return rd.res, rd.err
	case <-ctx.Done():
		return checkpointResult{}, ctx.Err()
	}
}

// run settles rd, then every round that filled up meanwhile.
func (r *replicator) run(rd *round) {
	defer r.wg.Done()
	for rd != nil {
		rd.res, rd.err = r.call()
		close(rd.done)
		r.mu.Lock()
		rd, r.next = r.next, nil
		r.running = rd != nil
		r.mu.Unlock()
	}
}

// call asks concord for one checkpoint and waits for its answer.
func (r *replicator) call() (checkpointResult, error) {
	ctx, cancel := context.WithTimeout(r.ctx, r.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.url, nil)
	if err != nil {
		return checkpointResult{}, fmt.Errorf("concord checkpoint API: %w (check CONCORD_API)", err)
	}
	req.Header.Set("Authorization", "Bearer "+r.token)
	resp, err := r.client.Do(req)
	if err != nil {
		return checkpointResult{}, fmt.Errorf("concord checkpoint API: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode == http.StatusServiceUnavailable:
		return checkpointResult{}, fmt.Errorf("concord says this node is not the service's primary (503): %s", snippet(body))
	case resp.StatusCode != http.StatusOK:
		return checkpointResult{}, fmt.Errorf("concord checkpoint API answered %s: %s", resp.Status, snippet(body))
	}
	var res checkpointResult
	if err := json.Unmarshal(body, &res); err != nil {
		return checkpointResult{}, fmt.Errorf("concord checkpoint API: answer %q: %w", snippet(body), err)
	}
	return res, nil
}

// pending returns how many writes wait for the call that has not started
// yet.
func (r *replicator) pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.next == nil {
		return 0
	}
	return r.next.waiters
}

// close ends the running call, fails later waits and returns once the
// call's goroutine has ended.
func (r *replicator) close() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.cancel()
	r.wg.Wait()
	r.client.CloseIdleConnections()
}

// snippet shortens a response body for an error message.
func snippet(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}
