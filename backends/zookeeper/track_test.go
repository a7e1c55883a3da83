package zookeeper

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/concordha/concord/backends/storetest"
	"github.com/concordha/concord/core"
)

func frame(body ...byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...)
}

func TestFrameReader(t *testing.T) {
	long := bytes.Repeat([]byte{7}, 3*headKeep)
	stream := slices.Concat(frame(1, 2, 3), frame(), frame(long...), frame(9))
	want := [][]byte{{1, 2, 3}, {}, long[:headKeep], {9}}
	for _, chunk := range []int{1, 2, 3, 5, 64, len(stream)} {
		var f frameReader
		var got [][]byte
		for b := stream; len(b) > 0; {
			n := min(chunk, len(b))
			f.feed(b[:n], func(head []byte) { got = append(got, bytes.Clone(head)) })
			b = b[n:]
		}
		if !slices.EqualFunc(got, want, bytes.Equal) {
			t.Errorf("chunks of %d: heads %v, want %v", chunk, got, want)
		}
	}
}

// fakeZK speaks enough of ZooKeeper's protocol to hold sessions: it
// opens and resumes them, answers pings, authentication and close
// requests, and can be told to go silent or to say that a session
// expired.
type fakeZK struct {
	t *testing.T
	l net.Listener

	mu      sync.Mutex
	silent  bool             // answer nothing more
	expired map[int64]bool   // sessions it treats as gone
	passwd  map[int64][]byte // live sessions' passwords
	opened  int              // sessions it opened
	dials   map[int64]int    // connect requests, by session ID (0: new)
	closed  []int64          // sessions ended by a close request
	conns   []net.Conn
	wg      sync.WaitGroup
}

func newFakeZK(t *testing.T) *fakeZK { return newFakeZKTLS(t, nil) }

// newFakeZKTLS is newFakeZK serving TLS with cfg, or plaintext if cfg is
// nil.
func newFakeZKTLS(t *testing.T, cfg *tls.Config) *fakeZK {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if cfg != nil {
		l = tls.NewListener(l, cfg)
	}
	f := &fakeZK{t: t, l: l, expired: map[int64]bool{}, passwd: map[int64][]byte{}, dials: map[int64]int{}}
	f.wg.Add(1)
	go f.accept()
	t.Cleanup(func() {
		l.Close()
		f.drop()
		f.wg.Wait()
	})
	return f
}

func (f *fakeZK) addr() string { return f.l.Addr().String() }

func (f *fakeZK) accept() {
	defer f.wg.Done()
	for {
		c, err := f.l.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		f.conns = append(f.conns, c)
		f.mu.Unlock()
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer c.Close()
			f.serve(c)
		}()
	}
}

// drop closes every connection, as a server that goes away.
func (f *fakeZK) drop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		c.Close()
	}
	f.conns = nil
}

func (f *fakeZK) set(fn func(f *fakeZK)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeZK) get(fn func(f *fakeZK)) { f.set(fn) }

func (f *fakeZK) serve(c net.Conn) {
	req, err := readFrame(c)
	if err != nil || len(req) < 28 {
		return
	}
	timeout := binary.BigEndian.Uint32(req[12:16])
	id := int64(binary.BigEndian.Uint64(req[16:24]))
	pw := req[28:]
	f.mu.Lock()
	f.dials[id]++
	if f.silent {
		f.mu.Unlock()
		_, _ = io.Copy(io.Discard, c)
		return
	}
	switch {
	case id == 0:
		f.opened++
		id = int64(0x1000 + f.opened)
		pw = bytes.Repeat([]byte{byte(f.opened)}, 16)
		f.passwd[id] = pw
	case f.expired[id] || !bytes.Equal(f.passwd[id], pw):
		id, timeout, pw = 0, 0, make([]byte, 16)
	}
	f.mu.Unlock()
	resp := binary.BigEndian.AppendUint32(nil, 0)
	resp = binary.BigEndian.AppendUint32(resp, timeout)
	resp = binary.BigEndian.AppendUint64(resp, uint64(id))
	resp = binary.BigEndian.AppendUint32(resp, uint32(len(pw)))
	resp = append(resp, pw...)
	if err := writeFrame(c, resp); err != nil || id == 0 {
		return
	}
	for {
		req, err := readFrame(c)
		if err != nil || len(req) < 8 {
			return
		}
		xid, op := req[0:4], int32(binary.BigEndian.Uint32(req[4:8]))
		f.mu.Lock()
		silent := f.silent
		if op == opcodeCloseSession && !silent {
			f.closed = append(f.closed, id)
			f.expired[id] = true
		}
		f.mu.Unlock()
		if silent {
			continue
		}
		reply := slices.Concat(xid, make([]byte, 8), make([]byte, 4)) // zxid 0, err 0
		if err := writeFrame(c, reply); err != nil || op == opcodeCloseSession {
			return
		}
	}
}

func openFake(t *testing.T, f *fakeZK) *Store {
	t.Helper()
	// Three times: go-zookeeper waits a second before it tries a server
	// again when it has tried them all, which would hide a reconnection
	// after an expiry (it reconnects to the next server of the list).
	st, err := New(Config{Endpoints: []string{f.addr(), f.addr(), f.addr()}, DialTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func waitDone(t *testing.T, s core.Session, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	timer := time.NewTimer(within)
	defer timer.Stop()
	select {
	case <-s.Done():
		return time.Since(start)
	case <-timer.C:
		t.Fatalf("Done of session %s not closed after %v", s.ID(), within)
		return 0
	}
}

// noMoreDials checks that, for d, no connection resumes session id and
// no new session is asked for.
func noMoreDials(t *testing.T, f *fakeZK, id int64, d time.Duration) {
	t.Helper()
	var resumed, fresh int
	f.get(func(f *fakeZK) { resumed, fresh = f.dials[id], f.dials[0] })
	end := time.Now().Add(d)
	storetest.Eventually(t, d+time.Second, "no connection after the loss", func() error {
		f.get(func(f *fakeZK) {
			if f.dials[id] != resumed || f.dials[0] != fresh {
				t.Fatalf("after the session was lost: %d connections resumed it, %d asked for a new one; want none",
					f.dials[id]-resumed, f.dials[0]-fresh)
			}
		})
		if time.Now().Before(end) {
			return errors.New("still watching")
		}
		return nil
	})
}

// TestSessionLostWhenServerGoesSilent: a server that stops answering
// makes the session lost 90% of its timeout after the last request it
// answered was sent, before it could expire the session; the
// connection is then never made again.
func TestSessionLostWhenServerGoesSilent(t *testing.T) {
	f := newFakeZK(t)
	st := openFake(t, f)
	// The client's lead over the server is a tenth of this.
	const ttl = 2 * time.Second
	s, err := st.NewSession(ctxFor(t, 10*time.Second), core.SessionOptions{TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	f.set(func(f *fakeZK) { f.silent = true })
	took := waitDone(t, s, 3*ttl)
	if !errors.Is(s.Err(), core.ErrSessionLost) {
		t.Errorf("Err = %v, want ErrSessionLost", s.Err())
	}
	// The last answer came before the silence; the server's clock
	// restarted no later than that.
	if took >= ttl {
		t.Errorf("session lost %v after the server went silent, want less than its timeout %v", took, ttl)
	}
	t.Logf("lost %v after the silence: %v", took, s.Err())
	id, _ := parseSessionID(s.ID())
	noMoreDials(t, f, id, 1500*time.Millisecond)
	if _, err := s.Register(context.Background(), "k", nil); !errors.Is(err, core.ErrSessionLost) {
		t.Errorf("Register after the loss: %v, want ErrSessionLost", err)
	}
}

// TestSessionExpiredOnReconnect: when the server answers a reconnection
// that the session is gone, the session is lost at once, and no new
// session is opened in its place.
func TestSessionExpiredOnReconnect(t *testing.T) {
	f := newFakeZK(t)
	st := openFake(t, f)
	s, err := st.NewSession(ctxFor(t, 10*time.Second), core.SessionOptions{TTL: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	id, _ := parseSessionID(s.ID())
	// The Store's own connection and the session's.
	const opened = 2
	storetest.Eventually(t, 5*time.Second, "both connections up", func() error {
		var n int
		f.get(func(f *fakeZK) { n = f.opened })
		if n != opened {
			return fmt.Errorf("%d sessions opened", n)
		}
		return nil
	})
	f.set(func(f *fakeZK) { f.expired[id] = true })
	f.drop()
	waitDone(t, s, 5*time.Second)
	if !errors.Is(s.Err(), core.ErrSessionLost) || !strings.Contains(s.Err().Error(), "expired") {
		t.Errorf("Err = %v, want ErrSessionLost saying it expired", s.Err())
	}
	noMoreDials(t, f, id, 1500*time.Millisecond)
	f.get(func(f *fakeZK) {
		if f.dials[0] != opened {
			t.Errorf("%d new sessions asked for in all, want %d: go-zookeeper replaced the expired one", f.dials[0], opened)
		}
	})
}

// TestExpireSessionByPassword: ExpireSession resumes the session with the
// password read from its connect response and closes it; its holder
// learns first; a second call finds nothing.
func TestExpireSessionByPassword(t *testing.T) {
	f := newFakeZK(t)
	holder, operator := openFake(t, f), openFake(t, f)
	ctx := ctxFor(t, 10*time.Second)
	s, err := holder.NewSession(ctx, core.SessionOptions{TTL: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := operator.ExpireSession(ctx, s.ID()); err != nil {
		t.Fatalf("ExpireSession(%s): %v", s.ID(), err)
	}
	if !errors.Is(s.Err(), core.ErrSessionLost) {
		t.Errorf("holder's Err right after ExpireSession = %v, want ErrSessionLost", s.Err())
	}
	id, _ := parseSessionID(s.ID())
	f.get(func(f *fakeZK) {
		if !slices.Contains(f.closed, id) {
			t.Errorf("sessions closed at the server: %x, want %x among them", f.closed, id)
		}
	})
	if err := operator.ExpireSession(ctx, s.ID()); !errors.Is(err, core.ErrNotFound) {
		t.Errorf("second ExpireSession: %v, want ErrNotFound", err)
	}
	// A session the server has forgotten while this process remembers it.
	s2, err := holder.NewSession(ctx, core.SessionOptions{TTL: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	id2, _ := parseSessionID(s2.ID())
	f.set(func(f *fakeZK) { f.expired[id2] = true })
	if err := operator.ExpireSession(ctx, s2.ID()); !errors.Is(err, core.ErrNotFound) {
		t.Errorf("ExpireSession of a session the server no longer has: %v, want ErrNotFound", err)
	}
}

// TestSessionClose: Close fires Done with ErrSessionClosed and says
// whether the server confirmed.
func TestSessionClose(t *testing.T) {
	f := newFakeZK(t)
	st := openFake(t, f)
	ctx := ctxFor(t, 10*time.Second)
	s, err := st.NewSession(ctx, core.SessionOptions{TTL: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(ctx); err != nil {
		t.Errorf("Close with a server that confirms: %v", err)
	}
	if !errors.Is(s.Err(), core.ErrSessionClosed) {
		t.Errorf("Err after Close = %v, want ErrSessionClosed", s.Err())
	}
	if err := st.ExpireSession(ctx, s.ID()); !errors.Is(err, core.ErrNotFound) {
		t.Errorf("ExpireSession of a closed session: %v, want ErrNotFound", err)
	}

	s2, err := st.NewSession(ctx, core.SessionOptions{TTL: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f.set(func(f *fakeZK) { f.silent = true })
	if err := s2.Close(ctx); !errors.Is(err, core.ErrUnavailable) {
		t.Errorf("Close with a silent server: %v, want ErrUnavailable", err)
	}
	if !errors.Is(s2.Err(), core.ErrSessionClosed) {
		t.Errorf("Err after Close = %v, want ErrSessionClosed", s2.Err())
	}
}

// TestTracker: what the tracker learns from connect responses and
// answers.
func TestTracker(t *testing.T) {
	tr := newTracker(func() {})
	c := tr.wrap(nopConn{}).(*trackedConn)
	sent := time.Now()
	c.hello = sent
	body := binary.BigEndian.AppendUint32(nil, 0)
	body = binary.BigEndian.AppendUint32(body, 400)
	body = binary.BigEndian.AppendUint64(body, 0x42)
	body = binary.BigEndian.AppendUint32(body, 2)
	body = append(body, 'p', 'w')
	c.frames.feed(frame(body...), c.frame)
	st := tr.state()
	if st.id != 0x42 || st.timeout != 400*time.Millisecond || string(st.passwd) != "pw" || !st.confirmed.Equal(sent) {
		t.Fatalf("tracker after a connect response: %+v", st)
	}
	// A ping written later and answered moves the confirmed time.
	ping := frame(0xff, 0xff, 0xff, 0xfe, 0, 0, 0, 11)
	before := time.Now()
	if _, err := c.Write(ping); err != nil {
		t.Fatal(err)
	}
	c.frames.feed(frame(slices.Concat([]byte{0xff, 0xff, 0xff, 0xfe}, make([]byte, 12))...), c.frame)
	if st := tr.state(); st.confirmed.Before(before) {
		t.Errorf("confirmed %v after an answered ping written at %v", st.confirmed, before)
	}
	// A notification (xid -1) confirms nothing.
	c.frames.feed(frame(slices.Concat([]byte{0xff, 0xff, 0xff, 0xff}, make([]byte, 12))...), c.frame)
	// Another connection's session: the session is replaced, and no
	// connection is made again.
	c2 := tr.wrap(nopConn{}).(*trackedConn)
	c2.hello = time.Now()
	binary.BigEndian.PutUint64(body[8:16], 0x43)
	c2.frames.feed(frame(body...), c2.frame)
	if st := tr.state(); !st.replaced || !tr.refused() {
		t.Errorf("tracker after another session: %+v, refused %v", st, tr.refused())
	}
}

type nopConn struct{ net.Conn }

func (nopConn) Write(b []byte) (int, error) { return len(b), nil }
func (nopConn) Close() error                { return nil }
