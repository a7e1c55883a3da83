package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/concordha/concord/internal/poll"
)

// waitFor bounds every wait in these tests.
const waitFor = 5 * time.Second

// echoServer plays a primary: it echoes each connection until EOF, then
// closes it.
type echoServer struct {
	ln       net.Listener
	accepted atomic.Int64
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	wg       sync.WaitGroup
}

// startEcho starts an echo server on addr ("" for a free local port) and
// stops it when the test ends.
func startEcho(t testing.TB, addr string) *echoServer {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("echo server: listen on %s: %v", addr, err)
	}
	s := &echoServer{ln: ln, conns: make(map[net.Conn]struct{})}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			s.mu.Lock()
			s.conns[c] = struct{}{}
			s.mu.Unlock()
			s.wg.Go(func() {
				defer func() {
					s.mu.Lock()
					delete(s.conns, c)
					s.mu.Unlock()
					c.Close()
				}()
				io.Copy(c, c)
			})
		}
	})
	t.Cleanup(s.stop)
	return s
}

func (s *echoServer) stop() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *echoServer) addr() string { return s.ln.Addr().String() }

// endpoint returns a valid update naming s as the primary with token.
func (s *echoServer) endpoint(node string, token int64) Update {
	return Update{Valid: true, Endpoint: Endpoint{Node: node, Addr: s.addr(), Epoch: token, Token: token}}
}

// fakeSource is a Source the test pushes updates into.
type fakeSource struct {
	in   chan Update
	stop chan struct{} // closed to make the source end its channel early
}

func newFakeSource() *fakeSource {
	return &fakeSource{in: make(chan Update), stop: make(chan struct{})}
}

var _ Source = (*fakeSource)(nil)

func (s *fakeSource) Updates(ctx context.Context) <-chan Update {
	out := make(chan Update)
	go func() {
		defer close(out)
		for {
			var u Update
			select {
			case <-ctx.Done():
				return
			case <-s.stop:
				return
			case u = <-s.in:
			}
			select {
			case <-ctx.Done():
				return
			case out <- u:
			}
		}
	}()
	return out
}

func (s *fakeSource) push(t testing.TB, u Update) {
	t.Helper()
	select {
	case s.in <- u:
	case <-time.After(waitFor):
		t.Fatalf("source: nobody took update %+v within %v", u, waitFor)
	}
}

// logRecorder is a slog.Handler that keeps every record for the test.
type logRecorder struct {
	mu      *sync.Mutex
	records *[]string
	attrs   []slog.Attr
}

func newLogRecorder() *logRecorder {
	return &logRecorder{mu: new(sync.Mutex), records: new([]string)}
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	for _, a := range h.attrs {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
	}
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	*h.records = append(*h.records, b.String())
	return nil
}

func (h *logRecorder) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(append([]slog.Attr(nil), h.attrs...), as...)
	return &c
}

func (h *logRecorder) WithGroup(string) slog.Handler { return h }

// find returns the first record that contains every one of subs.
func (h *logRecorder) find(subs ...string) (string, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
next:
	for _, r := range *h.records {
		for _, s := range subs {
			if !strings.Contains(r, s) {
				continue next
			}
		}
		return r, true
	}
	return "", false
}

func (h *logRecorder) all() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return strings.Join(*h.records, "\n")
}

// running is a proxy under test.
type running struct {
	p      *Proxy
	src    *fakeSource
	log    *logRecorder
	cancel context.CancelFunc
	done   chan error
}

// startProxy runs a proxy for service "svc" on a free port with the
// given hold timeout, fed by a fake source, and stops it when the test
// ends.
func startProxy(t testing.TB, hold time.Duration) *running {
	t.Helper()
	r := &running{src: newFakeSource(), log: newLogRecorder(), done: make(chan error, 1)}
	p, err := New(Config{
		Service:     "svc",
		Listen:      "127.0.0.1:0",
		Source:      r.src,
		HoldTimeout: hold,
		DialTimeout: time.Second,
		Logger:      slog.New(r.log),
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	r.p = p
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- p.Run(ctx) }()
	poll.Eventually(t, waitFor, "proxy listening", func() error {
		if p.Addr() == nil {
			return errors.New("no address yet")
		}
		return nil
	})
	t.Cleanup(func() {
		if err := r.stop(); err != nil {
			t.Errorf("stopping the proxy: %v", err)
		}
	})
	return r
}

// stop cancels Run and waits for it to return; it may be called again.
func (r *running) stop() error {
	r.cancel()
	select {
	case err, ok := <-r.done:
		if ok {
			close(r.done)
		}
		return err
	case <-time.After(waitFor):
		return fmt.Errorf("Run did not return within %v of the cancel", waitFor)
	}
}

// dial connects a client to the proxy.
func (r *running) dial(t testing.TB) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", r.p.Addr().String(), waitFor)
	if err != nil {
		t.Fatalf("dial the proxy: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// waitStats polls until cond accepts the proxy's counters.
func (r *running) waitStats(t testing.TB, what string, cond func(Stats) bool) {
	t.Helper()
	poll.Eventually(t, waitFor, what, func() error {
		if s := r.p.Stats(); !cond(s) {
			return fmt.Errorf("stats %+v", s)
		}
		return nil
	})
}

// use pushes u into the source and waits until the proxy acts on it.
func (r *running) use(t testing.TB, u Update) {
	t.Helper()
	r.src.push(t, u)
	r.waitCurrent(t, fmt.Sprintf("the proxy acting on %+v", u), func(cur Update) bool { return cur == u })
}

// waitCurrent polls until the proxy acts on an update that cond accepts.
func (r *running) waitCurrent(t testing.TB, what string, cond func(Update) bool) {
	t.Helper()
	poll.Eventually(t, waitFor, what, func() error {
		if u := r.p.Current(); !cond(u) {
			return fmt.Errorf("current %+v", u)
		}
		return nil
	})
}

// roundTrip writes msg on c and expects it echoed back.
func roundTrip(t testing.TB, c net.Conn, msg string) {
	t.Helper()
	if err := echo(c, []byte(msg)); err != nil {
		t.Fatal(err)
	}
}

func echo(c net.Conn, msg []byte) error {
	c.SetDeadline(time.Now().Add(waitFor))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("write %d bytes: %w", len(msg), err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read the echo of %d bytes: %w", len(msg), err)
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo: got %q, want %q", got, msg)
	}
	return nil
}

// expectClosed fails the test unless the proxy closes c within d.
func expectClosed(t testing.TB, c net.Conn, d time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 64)
	for {
		n, err := c.Read(buf)
		if err == nil {
			t.Fatalf("read %q from a connection that should be closed", buf[:n])
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("connection still open after %v", d)
		}
		return // EOF or reset: closed
	}
}

// freeAddr returns a local address nothing listens on (for a while).
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
