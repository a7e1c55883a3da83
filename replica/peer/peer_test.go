package peer

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/concordha/concord/core"
	"github.com/concordha/concord/internal/poll"
	"github.com/concordha/concord/internal/testpki"
)

var testSecret = []byte("concord-test-secret-0123456789")

// genReader yields size pseudo-random bytes without holding them, and
// hashes what it yielded.
type genReader struct {
	rng  *rand.ChaCha8
	left int64
	read atomic.Int64
	sum  hash.Hash
	// After returned is set, Reads count in late.
	returned atomic.Bool
	late     atomic.Int32
}

func newGenReader(size int64) *genReader {
	return &genReader{rng: rand.NewChaCha8([32]byte{1, 2, 3}), left: size, sum: sha256.New()}
}

func (g *genReader) Read(p []byte) (int, error) {
	if g.returned.Load() {
		g.late.Add(1)
	}
	if g.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > g.left {
		p = p[:g.left]
	}
	_, _ = g.rng.Read(p)
	g.sum.Write(p)
	g.left -= int64(len(p))
	g.read.Add(int64(len(p)))
	return len(p), nil
}

type fixture struct {
	srv   *Server
	hs    *httptest.Server
	addr  string
	spool string
	cli   *Client
}

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// newFixture starts a Server (configured by cfg after the defaults of
// the fixture) behind an httptest server, and a Client for it.
func newFixture(t testing.TB, cfg func(*ServerConfig)) *fixture {
	t.Helper()
	f := &fixture{spool: t.TempDir()}
	sc := ServerConfig{
		Node:     "receiver",
		Secret:   testSecret,
		SpoolDir: f.spool,
		Logger:   quietLogger(),
		Apply: func(ctx context.Context, h Header, body io.Reader, size int64) error {
			_, err := io.Copy(io.Discard, body)
			return err
		},
	}
	if cfg != nil {
		cfg(&sc)
	}
	srv, err := NewServer(sc)
	if err != nil {
		t.Fatal(err)
	}
	f.srv = srv
	mux := http.NewServeMux()
	mux.Handle(PathPrefix, srv)
	f.hs = httptest.NewServer(mux)
	t.Cleanup(f.hs.Close)
	f.addr = f.hs.Listener.Addr().String()
	f.cli = newClient(t, ClientConfig{Node: "sender", Secret: testSecret})
	return f
}

func newClient(t testing.TB, c ClientConfig) *Client {
	t.Helper()
	cli, err := NewClient(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cli.Close)
	return cli
}

// spoolEmpty waits (bounded) for the spool directory to be empty, and
// fails the test if it does not become so.
func (f *fixture) spoolEmpty(t *testing.T) {
	t.Helper()
	eventually(t, 5*time.Second, func() error {
		ents, err := os.ReadDir(f.spool)
		if err != nil {
			return err
		}
		if len(ents) > 0 {
			return fmt.Errorf("spool holds %d files, first %s", len(ents), ents[0].Name())
		}
		return nil
	})
}

// eventually polls cond until it returns nil or the deadline passes.
func eventually(t *testing.T, within time.Duration, cond func() error) {
	t.Helper()
	poll.Eventually(t, within, "condition", cond)
}

// holds polls cond for the whole of d and fails the test as soon as it
// returns an error: for checking that something does not happen.
func holds(t *testing.T, d time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(deadline) {
		if err := cond(); err != nil {
			t.Fatal(err)
		}
		<-tick.C
	}
}

func stamp(seq int64) core.Stamp { return core.Stamp{Epoch: 3, Token: 7, Seq: seq} }

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestCheckpointRoundTripStreams(t *testing.T) {
	const size = 50 << 20
	var (
		gotHeader Header
		gotSize   int64
		gotSum    []byte
		applied   atomic.Int32
	)
	f := newFixture(t, func(c *ServerConfig) {
		c.Apply = func(ctx context.Context, h Header, body io.Reader, n int64) error {
			if _, ok := body.(*os.File); !ok {
				return fmt.Errorf("body is %T, want *os.File", body)
			}
			sum := sha256.New()
			m, err := io.Copy(sum, body)
			if err != nil {
				return err
			}
			if m != n {
				return fmt.Errorf("read %d bytes, size says %d", m, n)
			}
			gotHeader, gotSize, gotSum = h, n, sum.Sum(nil)
			applied.Add(1)
			return nil
		}
	})
	gen := newGenReader(size)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	if err := f.cli.SendCheckpoint(testCtx(t), f.addr, Header{Service: "db", From: "ignored", Stamp: stamp(1)}, gen); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if applied.Load() != 1 {
		t.Fatalf("Apply called %d times before SendCheckpoint returned, want 1", applied.Load())
	}
	if gotSize != size || !bytes.Equal(gotSum, gen.sum.Sum(nil)) {
		t.Fatalf("received %d bytes with sha256 %x, sent %d with %x", gotSize, gotSum, size, gen.sum.Sum(nil))
	}
	if want := (Header{Service: "db", From: "sender", Stamp: stamp(1)}); gotHeader != want {
		t.Fatalf("Apply got header %+v, want %+v", gotHeader, want)
	}
	// Sender and receiver run in this process: together they allocated
	// far less than the body, so neither held it in memory.
	t.Logf("sent %d bytes, allocated %d", size, after.TotalAlloc-before.TotalAlloc)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > size/4 {
		t.Fatalf("sending %d bytes allocated %d bytes: the body is being buffered", size, alloc)
	}
	f.spoolEmpty(t)
}

func TestAdmitRefusalIsStaleAndSkipsTheBody(t *testing.T) {
	var applied atomic.Int32
	f := newFixture(t, func(c *ServerConfig) {
		gate := &core.Gate{}
		gate.Applied(stamp(5))
		c.Admit = func(h Header) error { return gate.Admit(h.Stamp) }
		c.Apply = func(context.Context, Header, io.Reader, int64) error { applied.Add(1); return nil }
	})
	gen := newGenReader(1 << 30)
	err := f.cli.SendCheckpoint(testCtx(t), f.addr, Header{Service: "db", Stamp: stamp(4)}, gen)
	if !errors.Is(err, core.ErrStaleCheckpoint) || !errors.Is(err, ErrRefused) {
		t.Fatalf("got %v, want an error wrapping core.ErrStaleCheckpoint and ErrRefused", err)
	}
	if !strings.Contains(err.Error(), "not newer than the one applied") || !strings.Contains(err.Error(), f.addr) || !strings.Contains(err.Error(), `"db"`) {
		t.Fatalf("error %q lacks the receiver's reason, the address or the service", err)
	}
	t.Logf("read %d bytes of the refused body", gen.read.Load())
	if n := gen.read.Load(); n > 1<<20 { // none, as the request said "Expect: 100-continue"
		t.Fatalf("the sender read %d bytes of a refused checkpoint's body", n)
	}
	if applied.Load() != 0 {
		t.Fatal("Apply called for a refused checkpoint")
	}
	// That nothing was read rests on 100-continue, which the sender asks
	// for (a receiver that does not answer in time gets the body anyway).
	req, _, err := f.cli.checkpointRequest(testCtx(t), f.addr, Header{Service: "db", Stamp: stamp(4)}, gen)
	if err != nil || req.Header.Get("Expect") != "100-continue" {
		t.Fatalf("checkpoint request (%v) does not expect 100-continue", err)
	}
	// A refusal that is not about staleness is a plain refusal.
	f2 := newFixture(t, func(c *ServerConfig) {
		c.Admit = func(Header) error { return errors.New("this node is not a secondary of db") }
	})
	err = f2.cli.SendCheckpoint(testCtx(t), f2.addr, Header{Service: "db", Stamp: stamp(1)}, strings.NewReader("x"))
	if !errors.Is(err, ErrRefused) || errors.Is(err, core.ErrStaleCheckpoint) || !strings.Contains(err.Error(), "not a secondary") {
		t.Fatalf("got %v, want ErrRefused with the reason and not stale", err)
	}
	f.spoolEmpty(t)
}

func TestWrongSecretIsUnauthorized(t *testing.T) {
	var called atomic.Int32
	f := newFixture(t, func(c *ServerConfig) {
		c.Admit = func(Header) error { called.Add(1); return nil }
		c.Apply = func(context.Context, Header, io.Reader, int64) error { called.Add(1); return nil }
	})
	if err := f.srv.Handle("ping", func(context.Context, string, json.RawMessage) (any, error) { called.Add(1); return "pong", nil }); err != nil {
		t.Fatal(err)
	}
	bad := newClient(t, ClientConfig{Node: "sender", Secret: []byte("some-other-secret-of-the-cluster")})
	err := bad.SendCheckpoint(testCtx(t), f.addr, Header{Service: "db", Stamp: stamp(1)}, strings.NewReader("state"))
	if !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("checkpoint: got %v, want ErrUnauthorized", err)
	}
	if strings.Contains(err.Error(), string(testSecret)) {
		t.Fatalf("the refusal reveals the secret: %v", err)
	}
	err = bad.Call(testCtx(t), f.addr, "ping", nil, nil)
	if !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("call: got %v, want ErrUnauthorized", err)
	}
	if called.Load() != 0 {
		t.Fatal("the application was called for an unauthenticated request")
	}
	f.spoolEmpty(t)
}

// flipProxy relays TCP connections to target and flips one byte of the
// first request body it sees, at offset at after the request's headers.
type flipProxy struct {
	ln     net.Listener
	target string
	at     int
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
	closed bool
}

func newFlipProxy(t *testing.T, target string, at int) *flipProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &flipProxy{ln: ln, target: target, at: at}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *flipProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.conns = append(p.conns, c)
	return true
}

func (p *flipProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		if !p.track(c) || !p.track(s) {
			c.Close()
			s.Close()
			return
		}
		p.wg.Add(2)
		go func() { defer p.wg.Done(); _, _ = io.Copy(c, s); c.Close() }()
		go func() { defer p.wg.Done(); p.flipCopy(s, c); s.Close() }()
	}
}

func (p *flipProxy) flipCopy(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	var seen []byte // the stream up to the end of the headers
	body := -1      // bytes of body relayed, once the headers ended
	for {
		n, err := src.Read(buf)
		chunk := buf[:n]
		for i := range chunk {
			if body < 0 {
				seen = append(seen, chunk[i])
				if bytes.HasSuffix(seen, []byte("\r\n\r\n")) {
					body = 0
				}
				continue
			}
			if body == p.at {
				chunk[i] ^= 0x01
			}
			body++
		}
		if _, werr := dst.Write(chunk); werr != nil || err != nil {
			return
		}
	}
}

func (p *flipProxy) close() {
	p.mu.Lock()
	p.closed = true
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.ln.Close()
	p.wg.Wait()
}

func TestTamperedBodyIsRefusedBeforeApply(t *testing.T) {
	var applied atomic.Int32
	f := newFixture(t, func(c *ServerConfig) {
		c.Apply = func(context.Context, Header, io.Reader, int64) error { applied.Add(1); return nil }
	})
	h := Header{Service: "db", Stamp: stamp(1)}

	t.Run("proxy flips a byte", func(t *testing.T) {
		// Offset 100 of the chunked body is in the first chunk's data
		// (its size line is a few bytes long).
		p := newFlipProxy(t, f.addr, 100)
		err := f.cli.SendCheckpoint(testCtx(t), p.ln.Addr().String(), h, newGenReader(1<<20))
		if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "body MAC does not verify") {
			t.Fatalf("got %v, want ErrUnauthorized for the body MAC", err)
		}
		// The same path without the flip works: the proxy is faithful.
		q := newFlipProxy(t, f.addr, -1)
		if err := f.cli.SendCheckpoint(testCtx(t), q.ln.Addr().String(), h, newGenReader(1<<20)); err != nil {
			t.Fatal(err)
		}
		if applied.Load() != 1 {
			t.Fatalf("Apply called %d times, want once (for the faithful proxy)", applied.Load())
		}
		applied.Store(0)
	})

	send := func(t *testing.T, trailer http.Header) error {
		req, _, err := f.cli.checkpointRequest(testCtx(t), f.addr, h, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Body = io.NopCloser(strings.NewReader("the state"))
		req.Trailer = trailer
		resp, err := f.cli.hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		return readAnswerError(resp, true)
	}
	t.Run("wrong trailer", func(t *testing.T) {
		err := send(t, http.Header{hBodyMAC: {hex.EncodeToString(make([]byte, 32))}})
		if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "body MAC does not verify") {
			t.Fatalf("got %v, want ErrUnauthorized for the body MAC", err)
		}
	})
	t.Run("no trailer", func(t *testing.T) {
		err := send(t, nil)
		if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "lacks the Concord-Body-MAC") {
			t.Fatalf("got %v, want ErrUnauthorized for the missing body MAC", err)
		}
	})
	t.Run("truncated body", func(t *testing.T) {
		// The MAC of the full body, with the last byte not sent.
		req, br, err := f.cli.checkpointRequest(testCtx(t), f.addr, h, strings.NewReader("the state"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadAll(br); err != nil {
			t.Fatal(err)
		}
		req.Body = io.NopCloser(strings.NewReader("the stat"))
		resp, err := f.cli.hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if err := readAnswerError(resp, true); !errors.Is(err, ErrUnauthorized) {
			t.Fatalf("got %v, want ErrUnauthorized", err)
		}
	})
	if applied.Load() != 0 {
		t.Fatal("Apply called for a tampered checkpoint")
	}
	f.spoolEmpty(t)
}

func TestReplayIsRefused(t *testing.T) {
	var calls atomic.Int32
	f := newFixture(t, nil)
	if err := f.srv.Handle("handover", func(context.Context, string, json.RawMessage) (any, error) {
		calls.Add(1)
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	req, err := f.cli.callRequest(testCtx(t), f.addr, "handover", []byte(`{"to":"b"}`))
	if err != nil {
		t.Fatal(err)
	}
	replay := req.Clone(req.Context())
	replay.Body, _ = req.GetBody()
	for i, r := range []*http.Request{req, replay} {
		resp, err := f.cli.hc.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		err = readAnswerError(resp, false)
		resp.Body.Close()
		switch {
		case i == 0 && resp.StatusCode != http.StatusOK:
			t.Fatalf("first send: %v", err)
		case i == 1 && (!errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "replayed")):
			t.Fatalf("replay: got %v, want ErrUnauthorized for a replay", err)
		}
	}
	if calls.Load() != 1 {
		t.Fatalf("handler called %d times, want 1", calls.Load())
	}
}

func TestTimestampOutsideTheWindowIsRefused(t *testing.T) {
	f := newFixture(t, func(c *ServerConfig) { c.ClockSkew = 2 * time.Minute })
	g := newFixture(t, func(c *ServerConfig) { c.ClockSkew = 5 * time.Minute })
	for _, off := range []time.Duration{3 * time.Minute, -3 * time.Minute} {
		cli := newClient(t, ClientConfig{Node: "sender", Secret: testSecret, Clock: core.NewManualClock(time.Now().Add(off))})
		err := cli.SendCheckpoint(testCtx(t), f.addr, Header{Service: "db", Stamp: stamp(1)}, strings.NewReader("s"))
		if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "synchronise") {
			t.Fatalf("clock off by %v: got %v, want ErrUnauthorized for the clock", off, err)
		}
		// A wider window admits it.
		if err := cli.SendCheckpoint(testCtx(t), g.addr, Header{Service: "db", Stamp: stamp(1)}, strings.NewReader("s")); err != nil {
			t.Fatalf("clock off by %v, window 5m: %v", off, err)
		}
	}
	f.spoolEmpty(t)
	g.spoolEmpty(t)
}

func TestMaxBytesIs413(t *testing.T) {
	var applied atomic.Int32
	f := newFixture(t, func(c *ServerConfig) {
		c.MaxBytes = 1 << 20
		c.Apply = func(context.Context, Header, io.Reader, int64) error { applied.Add(1); return nil }
	})
	err := f.cli.SendCheckpoint(testCtx(t), f.addr, Header{Service: "db", Stamp: stamp(1)}, newGenReader(4<<20))
	var re *remoteError
	if !errors.As(err, &re) || re.status != http.StatusRequestEntityTooLarge || !errors.Is(err, ErrRefused) {
		t.Fatalf("got %v, want ErrRefused with HTTP 413", err)
	}
	if applied.Load() != 0 {
		t.Fatal("Apply called for a checkpoint over MaxBytes")
	}

	// Exactly MaxBytes is accepted.
	if err := f.cli.SendCheckpoint(testCtx(t), f.addr, Header{Service: "db", Stamp: stamp(2)}, newGenReader(1<<20)); err != nil {
		t.Fatal(err)
	}
	f.spoolEmpty(t)
}

func TestApplyErrorsReachTheSenderAndSpoolIsCleaned(t *testing.T) {
	var spooled atomic.Value
	f := newFixture(t, func(c *ServerConfig) {
		c.Apply = func(ctx context.Context, h Header, body io.Reader, size int64) error {
			spooled.Store(body.(*os.File).Name())
			switch h.Stamp.Seq {
			case 1:
				return errors.New("restore script exited with status 3")
			case 2:
				return fmt.Errorf("%w: applied seq 9 meanwhile", core.ErrStaleCheckpoint)
			}
			return nil
		}
	})
	err := f.cli.SendCheckpoint(testCtx(t), f.addr, Header{Service: "db", Stamp: stamp(1)}, strings.NewReader("state"))
	if !errors.Is(err, ErrRemote) || errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "restore script exited with status 3") {
		t.Fatalf("got %v, want ErrRemote with Apply's text", err)
	}
	if _, err := os.Stat(spooled.Load().(string)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("spool file after a failed Apply: %v", err)
	}
	err = f.cli.SendCheckpoint(testCtx(t), f.addr, Header{Service: "db", Stamp: stamp(2)}, strings.NewReader("state"))
	if !errors.Is(err, core.ErrStaleCheckpoint) || !strings.Contains(err.Error(), "applied seq 9 meanwhile") {
		t.Fatalf("got %v, want core.ErrStaleCheckpoint with Apply's text", err)
	}
	if err := f.cli.SendCheckpoint(testCtx(t), f.addr, Header{Service: "db", Stamp: stamp(3)}, strings.NewReader("state")); err != nil {
		t.Fatal(err)
	}
	f.spoolEmpty(t)
}

func TestCancelledSendEndsApplyAndCleansSpool(t *testing.T) {
	started := make(chan struct{})
	var ended atomic.Int32
	f := newFixture(t, func(c *ServerConfig) {
		c.Apply = func(ctx context.Context, h Header, body io.Reader, size int64) error {
			close(started)
			<-ctx.Done()
			ended.Add(1)
			return ctx.Err()
		}
	})
	ctx, cancel := context.WithCancel(testCtx(t))
	done := make(chan error, 1)
	go func() {
		done <- f.cli.SendCheckpoint(ctx, f.addr, Header{Service: "db", Stamp: stamp(1)}, strings.NewReader("state"))
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("Apply not called")
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	eventually(t, 5*time.Second, func() error {
		if ended.Load() != 1 {
			return errors.New("Apply still running after the sender went away")
		}
		return nil
	})
	f.spoolEmpty(t)
}

// stallingReader yields one block, then blocks in Read until released,
// and counts the Reads that start after the test said SendCheckpoint
// returned.
type stallingReader struct {
	calls    atomic.Int32
	inRead   atomic.Bool
	stalled  chan struct{}
	release  chan struct{}
	returned atomic.Bool
	late     atomic.Int32
}

func (r *stallingReader) Read(p []byte) (int, error) {
	if r.returned.Load() {
		r.late.Add(1)
	}
	r.inRead.Store(true)
	defer r.inRead.Store(false)
	if r.calls.Add(1) == 2 {
		close(r.stalled)
		<-r.release
	}
	return copy(p, make([]byte, 1024)), nil
}

func TestSendDoesNotReadTheBodyAfterItReturned(t *testing.T) {
	f := newFixture(t, nil)
	src := &stallingReader{stalled: make(chan struct{}), release: make(chan struct{})}
	ctx, cancel := context.WithCancel(testCtx(t))
	done := make(chan error, 1)
	go func() { done <- f.cli.SendCheckpoint(ctx, f.addr, Header{Service: "db", Stamp: stamp(1)}, src) }()
	select {
	case <-src.stalled:
	case <-time.After(10 * time.Second):
		t.Fatal("the body was not read")
	}
	cancel()
	// While a Read of the body is pending, SendCheckpoint must not
	// return, even though ctx ended.
	holds(t, 100*time.Millisecond, func() error {
		select {
		case err := <-done:
			return fmt.Errorf("SendCheckpoint returned (%v) during a Read of its body", err)
		default:
			return nil
		}
	})
	close(src.release)
	err := <-done
	src.returned.Store(true)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	if src.inRead.Load() {
		t.Fatal("SendCheckpoint returned during a Read of its body")
	}
	// End the connections: any Read the transport still had in mind would
	// have happened by the time its goroutines are gone (leakcheck waits
	// for that after the tests; here we close, then check).
	f.cli.Close()
	f.hs.Close()
	if n := src.late.Load(); n != 0 {
		t.Fatalf("%d Reads of the body after SendCheckpoint returned", n)
	}
	f.spoolEmpty(t)
}

// TestSendStopsReadingWhenTheReceiverAnswersEarly uses a receiver that
// answers a refusal (admitting the connection could be kept) while it
// goes on reading the body: the transport would go on sending the body
// after SendCheckpoint returned.
func TestSendStopsReadingWhenTheReceiverAnswersEarly(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	conns := make(chan net.Conn, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		conns <- c
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if line == "\r\n" {
				break
			}
		}
		_, _ = io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n")
		if _, err := io.ReadFull(br, make([]byte, 1<<10)); err != nil {
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 409 Conflict\r\nContent-Length: 8\r\n\r\ngo away\n")
		_, _ = io.Copy(io.Discard, br)
	}()
	t.Cleanup(func() {
		ln.Close()
		select {
		case c := <-conns:
			c.Close()
		default:
		}
		wg.Wait()
	})
	cli := newClient(t, ClientConfig{Node: "sender", Secret: testSecret})
	gen := newGenReader(1 << 30)
	err = cli.SendCheckpoint(testCtx(t), ln.Addr().String(), Header{Service: "db", Stamp: stamp(1)}, gen)
	gen.returned.Store(true)
	if !errors.Is(err, core.ErrStaleCheckpoint) || !strings.Contains(err.Error(), "go away") {
		t.Fatalf("got %v, want a stale refusal", err)
	}
	holds(t, 200*time.Millisecond, func() error {
		if n := gen.late.Load(); n > 0 {
			return fmt.Errorf("%d Reads of the body after SendCheckpoint returned", n)
		}
		return nil
	})
}

func TestApplySerializedPerService(t *testing.T) {
	var active, most atomic.Int32
	gate := make(chan struct{})
	f := newFixture(t, func(c *ServerConfig) {
		c.Apply = func(ctx context.Context, h Header, body io.Reader, size int64) error {
			if h.Service != "a" {
				return nil // "b" must get through while "a" is held
			}
			n := active.Add(1)
			defer active.Add(-1)
			for {
				m := most.Load()
				if n <= m || most.CompareAndSwap(m, n) {
					break
				}
			}
			select {
			case <-gate:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	})
	const senders = 4
	errs := make(chan error, senders)
	for i := range senders {
		go func() {
			errs <- f.cli.SendCheckpoint(testCtx(t), f.addr, Header{Service: "a", Stamp: stamp(int64(i + 1))}, strings.NewReader("state"))
		}()
	}
	// All four are received; one applies, three wait for it.
	eventually(t, 10*time.Second, func() error {
		f.srv.mu.Lock()
		defer f.srv.mu.Unlock()
		if l := f.srv.locks["a"]; l == nil || l.refs != senders {
			return errors.New("the checkpoints of a are not all waiting to apply")
		}
		return nil
	})
	if err := f.cli.SendCheckpoint(testCtx(t), f.addr, Header{Service: "b", Stamp: stamp(1)}, strings.NewReader("state")); err != nil {
		t.Fatalf("service b while a applies: %v", err)
	}
	close(gate)
	for range senders {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if most.Load() != 1 {
		t.Fatalf("%d Apply calls of one service overlapped", most.Load())
	}
	f.srv.mu.Lock()
	left := len(f.srv.locks)
	f.srv.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d service locks left after all applied", left)
	}
}

func TestCallRoundTripAndErrors(t *testing.T) {
	f := newFixture(t, nil)
	type req struct{ To string }
	type resp struct {
		From string
		To   string
		N    int
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(f.srv.Handle("handover", func(ctx context.Context, from string, raw json.RawMessage) (any, error) {
		var r req
		if err := json.Unmarshal(raw, &r); err != nil {
			return nil, fmt.Errorf("%w: %v", core.ErrInvalidArgument, err)
		}
		if r.To == "nobody" {
			return nil, errors.New("node nobody is not a member")
		}
		if r.To == "demoted" {
			return nil, fmt.Errorf("%w of db", core.ErrNotPrimary)
		}
		return resp{From: from, To: r.To, N: 42}, nil
	}))
	if err := f.srv.Handle("handover", func(context.Context, string, json.RawMessage) (any, error) { return nil, nil }); err == nil {
		t.Fatal("second handler for one call accepted")
	}
	if err := f.srv.Handle("bad/name", func(context.Context, string, json.RawMessage) (any, error) { return nil, nil }); err == nil {
		t.Fatal("invalid call name accepted")
	}
	if err := f.srv.Handle("nil", nil); err == nil {
		t.Fatal("nil handler accepted")
	}

	var got resp
	must(f.cli.Call(testCtx(t), f.addr, "handover", req{To: "b"}, &got))
	if got != (resp{From: "sender", To: "b", N: 42}) {
		t.Fatalf("got %+v", got)
	}
	err := f.cli.Call(testCtx(t), f.addr, "handover", req{To: "nobody"}, &got)
	if !errors.Is(err, ErrRemote) || !strings.Contains(err.Error(), "node nobody is not a member") || !strings.Contains(err.Error(), f.addr) {
		t.Fatalf("got %v, want ErrRemote with the handler's text and the address", err)
	}
	err = f.cli.Call(testCtx(t), f.addr, "handover", req{To: "demoted"}, &got)
	if !errors.Is(err, core.ErrNotPrimary) || !errors.Is(err, ErrRefused) {
		t.Fatalf("got %v, want core.ErrNotPrimary and ErrRefused", err)
	}
	err = f.cli.Call(testCtx(t), f.addr, "handover", "not an object", &got)
	if !errors.Is(err, core.ErrInvalidArgument) || !errors.Is(err, ErrRefused) {
		t.Fatalf("got %v, want core.ErrInvalidArgument and ErrRefused", err)
	}
	err = f.cli.Call(testCtx(t), f.addr, "nosuch", nil, nil)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), `no call "nosuch"`) {
		t.Fatalf("got %v, want ErrRefused for an unknown call", err)
	}
	err = f.cli.Call(testCtx(t), "127.0.0.1:1", "handover", nil, nil)
	if err == nil || errors.Is(err, ErrRefused) || errors.Is(err, ErrRemote) || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("unreachable peer: got %v, want a transport error naming the address", err)
	}
	err = f.cli.Call(testCtx(t), "no-port", "handover", nil, nil)
	if !errors.Is(err, core.ErrInvalidArgument) {
		t.Fatalf("bad address: got %v, want core.ErrInvalidArgument", err)
	}
}

func TestTLSRoundTrip(t *testing.T) {
	pki := testpki.New(t, t.TempDir())
	caPEM, err := os.ReadFile(pki.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatal("no CA certificate in", pki.CAFile)
	}
	serverCert, err := tls.LoadX509KeyPair(pki.ServerCert, pki.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	clientCert, err := tls.LoadX509KeyPair(pki.ClientCert, pki.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	spool := t.TempDir()
	var sum []byte
	srv, err := NewServer(ServerConfig{
		Node: "receiver", Secret: testSecret, SpoolDir: spool, Logger: quietLogger(),
		Apply: func(ctx context.Context, h Header, body io.Reader, size int64) error {
			s := sha256.New()
			_, err := io.Copy(s, body)
			sum = s.Sum(nil)
			return err
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Handle("echo", func(ctx context.Context, from string, req json.RawMessage) (any, error) { return req, nil }); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewUnstartedServer(srv)
	hs.TLS = &tls.Config{
		Certificates: []tls.Certificate{serverCert},
		ClientCAs:    roots,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}
	hs.Config.ErrorLog = log.New(io.Discard, "", 0) // the untrusting client's failed handshake
	hs.StartTLS()
	t.Cleanup(hs.Close)
	addr := hs.Listener.Addr().String()

	cli := newClient(t, ClientConfig{Node: "sender", Secret: testSecret, TLS: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{clientCert}}})
	gen := newGenReader(3 << 20)
	if err := cli.SendCheckpoint(testCtx(t), addr, Header{Service: "db", Stamp: stamp(1)}, gen); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sum, gen.sum.Sum(nil)) {
		t.Fatal("the checkpoint arrived altered over TLS")
	}
	var echo map[string]int
	if err := cli.Call(testCtx(t), addr, "echo", map[string]int{"n": 7}, &echo); err != nil || echo["n"] != 7 {
		t.Fatalf("call over TLS: %v, %v", echo, err)
	}
	// A client that does not trust the CA does not get through.
	untrusting := newClient(t, ClientConfig{Node: "sender", Secret: testSecret, TLS: &tls.Config{Certificates: []tls.Certificate{clientCert}}})
	if err := untrusting.Call(testCtx(t), addr, "echo", 1, nil); err == nil || errors.Is(err, ErrRefused) {
		t.Fatalf("client without the CA: got %v, want a TLS error", err)
	}
	ents, err := os.ReadDir(spool)
	if err != nil || len(ents) != 0 {
		t.Fatalf("spool after the TLS round trip: %v, %v", ents, err)
	}
}

// TestGarbageIsRefused sends malformed requests straight to ServeHTTP:
// each gets its status, and none reaches the application.
func TestGarbageIsRefused(t *testing.T) {
	var called atomic.Int32
	f := newFixture(t, func(c *ServerConfig) {
		c.Admit = func(Header) error { called.Add(1); return nil }
		c.Apply = func(context.Context, Header, io.Reader, int64) error { called.Add(1); return nil }
	})
	if err := f.srv.Handle("ping", func(context.Context, string, json.RawMessage) (any, error) { called.Add(1); return nil, nil }); err != nil {
		t.Fatal(err)
	}
	signed := func(method, path string, hdr map[string]string, body string) *http.Request {
		r := httptest.NewRequest(method, path, strings.NewReader(body))
		for k, v := range hdr {
			r.Header.Set(k, v)
		}
		f.cli.sign(r)
		return r
	}
	unsigned := func(method, path string, hdr map[string]string) *http.Request {
		r := httptest.NewRequest(method, path, strings.NewReader("x"))
		for k, v := range hdr {
			r.Header.Set(k, v)
		}
		return r
	}
	meta := func(kv ...string) map[string]string {
		m := map[string]string{hService: "db", hEpoch: "1", hToken: "1", hSeq: "1"}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	// forged is a request with the given sender, time and nonce, signed
	// with the secret: checks past the MAC.
	forged := func(from, at, nonce string) *http.Request {
		r := httptest.NewRequest("POST", PathPrefix+"call/ping", strings.NewReader("{}"))
		r.Header.Set(hFrom, from)
		r.Header.Set(hTime, at)
		r.Header.Set(hNonce, nonce)
		r.Header.Set(hAuth, hex.EncodeToString(requestMAC(testSecret, r.Method, r.URL.Path, r.Header)))
		return r
	}
	now := fmt.Sprint(time.Now().UnixNano())
	goodNonce := strings.Repeat("ab", nonceLen)
	tamper := func(r *http.Request, k, v string) *http.Request { r.Header.Set(k, v); return r }
	addValue := func(r *http.Request, k, v string) *http.Request { r.Header.Add(k, v); return r }
	cases := []struct {
		name   string
		req    *http.Request
		status int
	}{
		{"root", unsigned("POST", "/", nil), 404},
		{"no kind", unsigned("POST", PathPrefix, nil), 404},
		{"unknown kind", unsigned("POST", PathPrefix+"state/db", nil), 404},
		{"GET", unsigned("GET", PathPrefix+"checkpoint/db", nil), 405},
		{"bad service", unsigned("POST", PathPrefix+"checkpoint/.hidden", nil), 400},
		{"nested service", unsigned("POST", PathPrefix+"checkpoint/a/b", nil), 400},
		{"empty service", unsigned("POST", PathPrefix+"checkpoint/", nil), 400},
		{"unsigned", unsigned("POST", PathPrefix+"checkpoint/db", meta()), 401},
		{"garbage auth", unsigned("POST", PathPrefix+"checkpoint/db", map[string]string{hFrom: "x", hTime: "1", hNonce: "zz", hAuth: "\x00\xff"}), 401},
		{"altered stamp", tamper(signed("POST", PathPrefix+"checkpoint/db", meta(), "x"), hSeq, "2"), 401},
		{"altered sender", tamper(signed("POST", PathPrefix+"checkpoint/db", meta(), "x"), hFrom, "other"), 401},
		{"duplicate header", addValue(signed("POST", PathPrefix+"checkpoint/db", meta(), "x"), hSeq, "2"), 401},
		{"other path", func() *http.Request {
			r := signed("POST", PathPrefix+"checkpoint/db", meta(), "x")
			r.URL.Path = PathPrefix + "checkpoint/db2"
			return r
		}(), 401},
		{"bad epoch", signed("POST", PathPrefix+"checkpoint/db", meta(hEpoch, "one"), "x"), 400},
		{"service mismatch", signed("POST", PathPrefix+"checkpoint/db", meta(hService, "db2"), "x"), 400},
		{"no metadata", signed("POST", PathPrefix+"checkpoint/db", nil, "x"), 400},
		{"call without body MAC", signed("POST", PathPrefix+"call/ping", nil, "{}"), 401},
		{"long nonce", forged("sender", now, goodNonce+"abab"), 401},
		{"short nonce", forged("sender", now, goodNonce[2:]), 401},
		{"non-hex nonce", forged("sender", now, strings.Repeat("zz", nonceLen)), 401},
		{"time not a number", forged("sender", "yesterday", goodNonce), 401},
		{"time far off", forged("sender", "-9223372036854775808", goodNonce), 401},
		{"bad sender name", forged("a b", now, goodNonce), 401},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			f.srv.ServeHTTP(w, c.req)
			if w.Code != c.status {
				t.Fatalf("status %d (%s), want %d", w.Code, strings.TrimSpace(w.Body.String()), c.status)
			}
			if strings.TrimSpace(w.Body.String()) == "" {
				t.Fatal("no reason given")
			}
		})
	}
	if called.Load() != 0 {
		t.Fatal("a malformed request reached the application")
	}
	f.spoolEmpty(t)
}

func TestConfigValidation(t *testing.T) {
	apply := func(context.Context, Header, io.Reader, int64) error { return nil }
	for _, c := range []struct {
		cfg  ServerConfig
		want string
	}{
		{ServerConfig{Node: "n", Secret: []byte("short"), Apply: apply}, "ServerConfig.Secret is 5 bytes"},
		{ServerConfig{Node: "", Secret: testSecret, Apply: apply}, "ServerConfig.Node is empty"},
		{ServerConfig{Node: "n", Secret: testSecret}, "ServerConfig.Apply is nil"},
		{ServerConfig{Node: "n", Secret: testSecret, Apply: apply, SpoolDir: "does-not-exist"}, "ServerConfig.SpoolDir"},
		{ServerConfig{Node: "n", Secret: testSecret, Apply: apply, MaxBytes: -1}, "ServerConfig.MaxBytes"},
		{ServerConfig{Node: "n", Secret: testSecret, Apply: apply, ClockSkew: -1}, "ServerConfig.ClockSkew"},
	} {
		if _, err := NewServer(c.cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("NewServer: got %v, want an error naming %q", err, c.want)
		}
	}
	for _, c := range []struct {
		cfg  ClientConfig
		want string
	}{
		{ClientConfig{Node: "n", Secret: make([]byte, MinSecretLen-1)}, "ClientConfig.Secret is 15 bytes"},
		{ClientConfig{Node: "bad node", Secret: testSecret}, "ClientConfig.Node"},
		{ClientConfig{Node: "n", Secret: testSecret, Timeout: -time.Second}, "ClientConfig.Timeout"},
	} {
		if _, err := NewClient(c.cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("NewClient: got %v, want an error naming %q", err, c.want)
		}
	}
	cli := newClient(t, ClientConfig{Node: "n", Secret: testSecret})
	if err := cli.SendCheckpoint(testCtx(t), "127.0.0.1:1", Header{Service: "a b", Stamp: stamp(1)}, strings.NewReader("")); !errors.Is(err, core.ErrInvalidArgument) {
		t.Errorf("invalid service: got %v, want core.ErrInvalidArgument", err)
	}
	if err := cli.SendCheckpoint(testCtx(t), "127.0.0.1:1", Header{Service: "db", Stamp: stamp(1)}, nil); !errors.Is(err, core.ErrInvalidArgument) {
		t.Errorf("nil body: got %v, want core.ErrInvalidArgument", err)
	}
	err := cli.SendCheckpoint(testCtx(t), "127.0.0.1:1", Header{Service: "db", Stamp: stamp(1)}, strings.NewReader("s"))
	if err == nil || errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "127.0.0.1:1") || !strings.Contains(err.Error(), `"db"`) {
		t.Errorf("unreachable peer: got %v, want a transport error naming the address and service", err)
	}
}

// FuzzSignedRequest feeds the server requests that pass the MAC (signed
// with the secret) but carry arbitrary values: none may panic, fail with
// a 5xx, or reach the application without a body MAC.
func FuzzSignedRequest(f *testing.F) {
	now := fmt.Sprint(time.Now().UnixNano())
	f.Add("checkpoint", "db", "sender", now, strings.Repeat("ab", nonceLen), "db", "1", "2", "3", "body")
	f.Add("call", "ping", "sender", now, strings.Repeat("cd", nonceLen), "", "", "", "", "{}")
	f.Add("checkpoint", "db", "", "", "", "", "", "", "", "")
	f.Add("call", "x\n", "s\x00", "1e9", "zz", "\xff", "-1", "9999999999999999999", "0x10", "[")
	f.Fuzz(func(t *testing.T, kind, name, from, at, nonce, service, epoch, token, seq, body string) {
		srv, err := NewServer(ServerConfig{
			Node: "receiver", Secret: testSecret, SpoolDir: t.TempDir(), Logger: quietLogger(),
			Admit: func(Header) error { return nil },
			Apply: func(context.Context, Header, io.Reader, int64) error {
				t.Error("Apply called without a body MAC")
				return nil
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.Handle("ping", func(context.Context, string, json.RawMessage) (any, error) {
			t.Error("call handler reached without a body MAC")
			return nil, nil
		}); err != nil {
			t.Fatal(err)
		}
		r := httptest.NewRequest("POST", "/", strings.NewReader(body))
		r.URL.Path = PathPrefix + kind + "/" + name
		for k, v := range map[string]string{hFrom: from, hTime: at, hNonce: nonce, hService: service, hEpoch: epoch, hToken: token, hSeq: seq} {
			r.Header.Set(k, v)
		}
		r.Header.Set(hAuth, hex.EncodeToString(requestMAC(testSecret, r.Method, r.URL.Path, r.Header)))
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, r)
		if w.Code < 400 || w.Code >= 500 {
			t.Fatalf("status %d (%s), want a 4xx", w.Code, w.Body.String())
		}
	})
}
