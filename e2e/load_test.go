package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// httpc is for requests to a node's service or API that should answer at
// once.
var httpc = &http.Client{Timeout: 2 * time.Second}

// noReuse makes a connection per request, as a proxy's clients must
// after the proxy closes their connections to a replaced primary.
var noReuse = &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

type health struct {
	Role    string `json:"role"`
	Version int64  `json:"version"`
	Token   int64  `json:"token"`
}

func healthOf(n *kvNode) (health, error) {
	var h health
	resp, err := httpc.Get(n.kvURL("/healthz"))
	if err != nil {
		return h, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return h, fmt.Errorf("healthz %d", resp.StatusCode)
	}
	return h, json.NewDecoder(resp.Body).Decode(&h)
}

// all reads every key of n's service.
func all(n *kvNode) (map[string]string, error) {
	resp, err := httpc.Get(n.kvURL("/kv"))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var m map[string]string
	return m, json.NewDecoder(resp.Body).Decode(&m)
}

// put writes k=v to n's service directly.
func put(n *kvNode, k, v string) error { return putURL(httpc, n.kvURL("/kv/"+k), k, v) }

// proxyURL is the URL of key k through n's proxy for kv.
func proxyURL(n *kvNode, k string) string {
	return fmt.Sprintf("http://127.0.0.1:%d/kv/%s", n.proxy, k)
}

// putViaProxy writes through n's proxy for kv, with a connection of its
// own.
func putViaProxy(n *kvNode, k, v string) error { return putURL(noReuse, proxyURL(n, k), k, v) }

// putURL writes k=v at url. A non-200 answer is an *httpError.
func putURL(c *http.Client, url, k, v string) error {
	req, err := http.NewRequest(http.MethodPut, url, strings.NewReader(v))
	if err != nil {
		return err
	}
	if err := do(c, req); err != nil {
		return fmt.Errorf("PUT %s: %w", k, err)
	}
	return nil
}

// do sends req and reads the whole answer, so that a kept-alive
// connection can serve the next request.
func do(c *http.Client, req *http.Request) error {
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	b, rerr := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return &httpError{resp.StatusCode, string(bytes.TrimSpace(b))}
	}
	if rerr != nil {
		return fmt.Errorf("reading the answer: %w", rerr)
	}
	return nil
}

// httpError is a non-200 answer.
type httpError struct {
	status int
	body   string
}

func (e *httpError) Error() string { return fmt.Sprintf("%d %s", e.status, e.body) }

// failureKind names a failed request's kind, to count failures by kind:
// "transport" for an error without an answer, else the status and the
// first words of the answer's error message.
func failureKind(err error) string {
	var he *httpError
	if !errors.As(err, &he) {
		return "transport"
	}
	var body struct {
		Error string `json:"error"`
	}
	msg := he.body
	if json.Unmarshal([]byte(he.body), &body) == nil && body.Error != "" {
		msg = body.Error
	}
	words := strings.Fields(msg)
	return fmt.Sprintf("%d %s", he.status, strings.Join(words[:min(len(words), 4)], " "))
}

// load is steady client traffic through the proxies of some nodes. On
// each proxy four workers write their own keys in sequence, one request
// at a time, each with a 15s timeout: two open a connection per request,
// and two keep their connection (a transport each) and mark their
// requests idempotent, so that their HTTP client may send one again on a
// connection the proxy closed while it was idle.
type load struct {
	halt    chan struct{}
	wg      sync.WaitGroup
	keep    []*http.Transport
	stopped sync.Once

	mu  sync.Mutex
	ok  []int // successes by worker
	res loadResult
}

// loadResult is what a load's workers saw.
type loadResult struct {
	requests int               // requests made
	acked    map[string]string // the writes answered 200: key -> value
	failed   int               // requests that failed: an error or a non-200 answer
	kinds    map[string]int    // failed requests by kind (see failureKind)
	samples  []string          // the first failure of each kind
	slowest  time.Duration     // the longest request, failed or not
}

// startLoad starts a load through the proxies of nodes, whose keys start
// with prefix. It stops at the latest at tb's cleanup.
func startLoad(tb testing.TB, nodes []*kvNode, prefix string) *load {
	l := &load{halt: make(chan struct{}), res: loadResult{acked: map[string]string{}, kinds: map[string]int{}}}
	for _, n := range nodes {
		for w := range 4 {
			c, keep := noReuse, w >= 2
			if keep {
				tr := &http.Transport{MaxIdleConnsPerHost: 1}
				l.keep = append(l.keep, tr)
				c = &http.Client{Timeout: 15 * time.Second, Transport: tr}
			}
			l.ok = append(l.ok, 0)
			worker := len(l.ok) - 1
			l.wg.Go(func() { l.work(worker, fmt.Sprintf("%s%s-%d-", prefix, n.id, w), n, c, keep) })
		}
	}
	tb.Cleanup(func() { l.end() })
	return l
}

func (l *load) work(worker int, prefix string, n *kvNode, c *http.Client, idempotent bool) {
	writeKeys(l.halt, prefix, func(k string) {
		req, err := http.NewRequest(http.MethodPut, proxyURL(n, k), strings.NewReader(k))
		if err != nil {
			panic(err) // the URL is well formed
		}
		if idempotent {
			// Lets Go's transport send the request again on a new
			// connection if a kept-alive one turns out to be closed
			// before any answer.
			req.Header.Set("Idempotency-Key", k)
		}
		begun := time.Now()
		err = do(c, req)
		took := time.Since(begun)
		l.mu.Lock()
		defer l.mu.Unlock()
		l.res.requests++
		l.res.slowest = max(l.res.slowest, took)
		if err != nil {
			l.res.failed++
			kind := failureKind(err)
			if l.res.kinds[kind] == 0 {
				l.res.samples = append(l.res.samples, fmt.Sprintf("PUT %s via %s's proxy (keep-alive %v) after %v: %v", k, n.id, idempotent, took.Round(time.Millisecond), err))
			}
			l.res.kinds[kind]++
			return
		}
		l.res.acked[k] = k
		l.ok[worker]++
	})
}

// writeKeys calls write with the keys prefix0, prefix1, ... in turn until
// halt is closed. A writer uses its key as the value too.
func writeKeys(halt <-chan struct{}, prefix string, write func(k string)) {
	for i := 0; ; i++ {
		select {
		case <-halt:
			return
		default:
		}
		write(prefix + strconv.Itoa(i))
	}
}

// acks returns how many writes were acknowledged so far.
func (l *load) acks() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.res.acked)
}

// allSucceeded is nil once every worker has had a write succeed: then
// the keep-alive workers hold a connection.
func (l *load) allSucceeded() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for w, n := range l.ok {
		if n == 0 {
			return fmt.Errorf("worker %d of %d has had no write succeed", w, len(l.ok))
		}
	}
	return nil
}

// end stops the workers, waits for their requests in flight (each
// bounded by its timeout), closes the kept connections and returns what
// the workers saw. Calls after the first only return it.
func (l *load) end() loadResult {
	l.stopped.Do(func() {
		close(l.halt)
		l.wg.Wait()
		for _, tr := range l.keep {
			tr.CloseIdleConnections()
		}
	})
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.res
	r.acked, r.kinds = maps.Clone(r.acked), maps.Clone(r.kinds)
	return r
}

// proxyStats reads GET /v1/proxies of n's node API: its kv proxy's
// counters (accepted, held, expired, refused, drained, ...).
func proxyStats(n *kvNode) (map[string]uint64, error) {
	resp, err := httpc.Get(fmt.Sprintf("http://127.0.0.1:%d/v1/proxies", n.api))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("GET /v1/proxies on %s: %d %s", n.id, resp.StatusCode, bytes.TrimSpace(b))
	}
	var ps []struct {
		Service string            `json:"service"`
		Stats   map[string]uint64 `json:"stats"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&ps); err != nil {
		return nil, fmt.Errorf("GET /v1/proxies on %s: %v", n.id, err)
	}
	for _, p := range ps {
		if p.Service == "kv" {
			return p.Stats, nil
		}
	}
	return nil, fmt.Errorf("node %s runs no proxy for kv: %+v", n.id, ps)
}

// proxyCounters sums the kv proxies' counters over nodes, and fails tb if
// one cannot be read or lacks a counter that the tests use.
func proxyCounters(tb testing.TB, nodes []*kvNode) map[string]uint64 {
	tb.Helper()
	sum := map[string]uint64{}
	for _, n := range nodes {
		s, err := proxyStats(n)
		if err != nil {
			tb.Fatal(err)
		}
		for _, name := range []string{"held", "drained", "expired", "refused"} {
			if _, ok := s[name]; !ok {
				tb.Fatalf("GET /v1/proxies on %s: the kv proxy has no %q counter: %v", n.id, name, s)
			}
		}
		for name, v := range s {
			sum[name] += v
		}
	}
	return sum
}

// since returns the increase of each counter of now over before.
func since(now, before map[string]uint64) map[string]uint64 {
	d := map[string]uint64{}
	for name, v := range now {
		d[name] = v - before[name]
	}
	return d
}
