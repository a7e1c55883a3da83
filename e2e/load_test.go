package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// load is steady client traffic through the nodes' proxies: on each
// proxy, one worker opens a connection per request and another keeps its
// connection, marking its requests idempotent (an Idempotency-Key) so
// that its HTTP client may send one again on a connection the proxy
// closed while idle. Each worker writes its own keys in sequence.
type load struct {
	stop    chan struct{}
	wg      sync.WaitGroup
	keep    []*http.Transport
	started atomic.Int64 // requests begun

	mu      sync.Mutex
	acked   map[string]string
	failed  []string
	slowest time.Duration
}

func startLoad(nodes []*kvNode) *load {
	l := &load{stop: make(chan struct{}), acked: map[string]string{}}
	for i, n := range nodes {
		url := fmt.Sprintf("http://127.0.0.1:%d/kv/", n.proxy)
		tr := &http.Transport{MaxIdleConnsPerHost: 1}
		l.keep = append(l.keep, tr)
		for w, c := range []*http.Client{noReuse, {Timeout: 15 * time.Second, Transport: tr}} {
			l.wg.Go(func() { l.work(fmt.Sprintf("load-%d-%d-", i, w), url, c, w == 1) })
		}
	}
	return l
}

func (l *load) work(prefix, url string, c *http.Client, idempotent bool) {
	for i := 0; ; i++ {
		select {
		case <-l.stop:
			return
		default:
		}
		k, v := prefix+strconv.Itoa(i), strconv.Itoa(i)
		l.started.Add(1)
		begun := time.Now()
		req, _ := http.NewRequest(http.MethodPut, url+k, strings.NewReader(v))
		if idempotent {
			req.Header.Set("Idempotency-Key", k)
		}
		err := do(c, req)
		took := time.Since(begun)
		l.mu.Lock()
		l.slowest = max(l.slowest, took)
		if err != nil {
			l.failed = append(l.failed, fmt.Sprintf("%s after %v: %v", k, took.Round(time.Millisecond), err))
		} else {
			l.acked[k] = v
		}
		l.mu.Unlock()
	}
}

func do(c *http.Client, req *http.Request) error {
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	// Read to the end, so that a kept connection is reused.
	b, rerr := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d: %s", resp.StatusCode, bytes.TrimSpace(b))
	}
	if rerr != nil {
		return fmt.Errorf("reading the answer: %w", rerr)
	}
	return nil
}

// acks returns how many writes were acknowledged so far.
func (l *load) acks() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acked)
}

// end stops the workers and waits for them.
func (l *load) end() {
	close(l.stop)
	l.wg.Wait()
	for _, tr := range l.keep {
		tr.CloseIdleConnections()
	}
}

// proxyStats reads GET /v1/proxies of n's node API: its kv proxy's
// counters.
func proxyStats(n *kvNode) (map[string]uint64, error) {
	resp, err := httpc.Get(fmt.Sprintf("http://127.0.0.1:%d/v1/proxies", n.api))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var ps []struct {
		Service string            `json:"service"`
		Stats   map[string]uint64 `json:"stats"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&ps); err != nil {
		return nil, err
	}
	for _, p := range ps {
		if p.Service == "kv" {
			return p.Stats, nil
		}
	}
	return nil, fmt.Errorf("node %s runs no proxy for kv: %+v", n.id, ps)
}
