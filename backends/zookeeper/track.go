package zookeeper

import (
	"bytes"
	"encoding/binary"
	"net"
	"slices"
	"sync"
	"time"
)

// ZooKeeper expires a session once it has heard nothing from the client
// for the session timeout: its clock restarts with every request it
// receives (pings included), and its expiry is rounded up to the next
// tick. go-zookeeper reports only changes of connection state, and late:
// it notices a silent server only after 2/3 of the timeout. So the
// connection of a core.Session is wrapped (see Store.dialer): every
// request written is stamped with the time its write began, and the
// answer to it, when read, confirms that the server received it, and so
// restarted its clock, no earlier than that stamp. The client's deadline
// is the latest confirmed stamp plus 90% of the negotiated timeout, which
// is earlier than the server's expiry by a tenth of the timeout at
// least.
//
// The wrapper also reads the connect response, where the session's ID,
// timeout and password are (go-zookeeper keeps the password private):
// ExpireSession needs the password, and the session needs to learn at
// once when ZooKeeper refuses a reconnection (the session expired) or
// gives it another session.

// Opcodes of ZooKeeper's protocol that the tracker and ExpireSession use.
const (
	opcodeCloseSession = -11
	xidNotification    = -1
)

// tracker follows the connections of one session.
type tracker struct {
	changed func() // wakes the session's monitor; must not block

	mu        sync.Mutex
	refuse    bool          // dial no more: the session has ended
	id        int64         // 0 until the session is open
	passwd    []byte        // the session's password
	timeout   time.Duration // as negotiated
	confirmed time.Time     // latest send time of a request answered
	expired   bool          // ZooKeeper refused to reconnect the session
	replaced  bool          // a connection got another session
	closeOK   bool          // ZooKeeper answered the close request
	up        chan struct{} // closed once the session is open
}

func newTracker(changed func()) *tracker {
	return &tracker{changed: changed, up: make(chan struct{})}
}

// trackState is a copy of what the tracker knows.
type trackState struct {
	id        int64
	passwd    []byte
	timeout   time.Duration
	confirmed time.Time
	expired   bool
	replaced  bool
	closeOK   bool
}

func (t *tracker) state() trackState {
	t.mu.Lock()
	defer t.mu.Unlock()
	return trackState{
		id: t.id, passwd: t.passwd, timeout: t.timeout, confirmed: t.confirmed,
		expired: t.expired, replaced: t.replaced, closeOK: t.closeOK,
	}
}

// refused tells whether the session has ended, so that no connection
// may be made for it.
func (t *tracker) refused() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.refuse
}

// stop makes the dialer refuse every later connection: go-zookeeper would
// otherwise open a new session, silently, in place of an expired one.
func (t *tracker) stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.refuse = true
}

// wrap returns c, watched for the session.
func (t *tracker) wrap(c net.Conn) net.Conn { return &trackedConn{Conn: c, t: t} }

// connected records a connect response read at the start of a
// connection whose connect request was written at sent.
func (t *tracker) connected(c *trackedConn, sent time.Time, body []byte) {
	if len(body) < 20 {
		return
	}
	timeout := time.Duration(int32(binary.BigEndian.Uint32(body[4:8]))) * time.Millisecond
	id := int64(binary.BigEndian.Uint64(body[8:16]))
	n := int(int32(binary.BigEndian.Uint32(body[16:20])))
	var passwd []byte
	if n > 0 && 20+n <= len(body) {
		passwd = bytes.Clone(body[20 : 20+n])
	}
	drop := false
	t.mu.Lock()
	switch {
	case id == 0 || timeout <= 0:
		// ZooKeeper answers so when it no longer has the session.
		t.expired, t.refuse = true, true
	case t.id == 0:
		t.id, t.passwd, t.timeout, t.confirmed = id, passwd, timeout, sent
		close(t.up)
	case id != t.id:
		t.replaced, t.refuse, drop = true, true, true
	default:
		t.timeout = timeout
		if sent.After(t.confirmed) {
			t.confirmed = sent
		}
	}
	t.mu.Unlock()
	if drop {
		_ = c.Conn.Close()
	}
	t.changed()
}

// answered records the answer to a request written at sent; closed says
// it answered a close request without error.
func (t *tracker) answered(sent time.Time, closed bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if sent.After(t.confirmed) {
		t.confirmed = sent
	}
	if closed {
		t.closeOK = true
	}
}

// maxUnanswered bounds the stamps a connection keeps for requests not
// answered yet; the oldest go first (which only makes the client's
// deadline earlier).
const maxUnanswered = 4096

// trackedConn is one TCP connection of a session. go-zookeeper writes
// each request (and the connect request) with one Write, from a single
// goroutine at a time, and reads from a single goroutine.
type trackedConn struct {
	net.Conn
	t *tracker

	mu      sync.Mutex
	hello   time.Time // write of the connect request; zero before it
	greeted bool      // the connect response was read
	pending []stamp
	frames  frameReader
}

// stamp is a request written and not answered yet.
type stamp struct {
	xid    int32
	opcode int32
	at     time.Time
}

func (c *trackedConn) Write(b []byte) (int, error) {
	now := time.Now() // before the write: the server cannot have it earlier
	c.mu.Lock()
	switch {
	case c.hello.IsZero():
		c.hello = now
	case len(b) >= 12:
		if len(c.pending) == maxUnanswered {
			c.pending = slices.Delete(c.pending, 0, 1)
		}
		c.pending = append(c.pending, stamp{
			xid:    int32(binary.BigEndian.Uint32(b[4:8])),
			opcode: int32(binary.BigEndian.Uint32(b[8:12])),
			at:     now,
		})
	}
	c.mu.Unlock()
	return c.Conn.Write(b)
}

func (c *trackedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.frames.feed(b[:n], c.frame)
	}
	return n, err
}

// frame handles the head of one frame read from the server: the connect
// response first, then answers (whose reply header is xid, zxid, error
// code) and notifications.
func (c *trackedConn) frame(head []byte) {
	c.mu.Lock()
	if !c.greeted {
		c.greeted = true
		sent := c.hello
		c.mu.Unlock()
		c.t.connected(c, sent, head)
		return
	}
	if len(head) < 16 {
		c.mu.Unlock()
		return
	}
	xid := int32(binary.BigEndian.Uint32(head[0:4]))
	code := int32(binary.BigEndian.Uint32(head[12:16]))
	if xid == xidNotification {
		c.mu.Unlock()
		return
	}
	i := slices.IndexFunc(c.pending, func(s stamp) bool { return s.xid == xid })
	if i < 0 {
		c.mu.Unlock()
		return
	}
	s := c.pending[i]
	c.pending = slices.Delete(c.pending, i, i+1)
	c.mu.Unlock()
	c.t.answered(s.at, s.opcode == opcodeCloseSession && code == 0)
}

// headKeep is how much of each frame's body frameReader keeps: all of a
// connect response (36 or 37 bytes), and the reply header of an answer.
const headKeep = 64

// frameReader cuts the byte stream from the server into frames (a
// 4-byte length, then the body) and hands the head of each body to a
// callback. It keeps no more than headKeep bytes of a frame.
type frameReader struct {
	size  [4]byte
	nsize int
	left  int // body bytes still to come
	head  []byte
	body  bool
}

func (f *frameReader) feed(b []byte, done func(head []byte)) {
	for len(b) > 0 {
		if !f.body {
			k := copy(f.size[f.nsize:], b)
			f.nsize += k
			b = b[k:]
			if f.nsize < len(f.size) {
				return
			}
			f.nsize = 0
			f.left = int(binary.BigEndian.Uint32(f.size[:]))
			f.head = f.head[:0]
			f.body = true
			if f.left == 0 {
				f.body = false
				done(f.head)
				continue
			}
		}
		k := min(len(b), f.left)
		if room := headKeep - len(f.head); room > 0 {
			f.head = append(f.head, b[:min(k, room)]...)
		}
		f.left -= k
		b = b[k:]
		if f.left == 0 {
			f.body = false
			done(f.head)
		}
	}
}

// registry holds the sessions this process opened, by ID, with what
// ExpireSession needs to end them: ZooKeeper ends a session only for a
// client that presents its ID and password. A session lost by its holder
// (the client gave up first) may still live at the server, and stays
// here so that its holder can end it; it is forgotten once ended, or
// after lostRetention.
type registry struct {
	mu sync.Mutex
	m  map[int64]*registered
}

type registered struct {
	passwd  []byte
	timeout time.Duration
	ss      *session  // the live session, nil once lost
	lostAt  time.Time // when it was lost
}

var sessions = &registry{m: make(map[int64]*registered)}

// lostRetention is how long a lost session is remembered: long past the
// moment ZooKeeper expires it, unless ZooKeeper restarts over and over
// (it gives every session a fresh timeout when it starts).
func lostRetention(timeout time.Duration) time.Duration {
	return max(time.Minute, 20*timeout)
}

func (r *registry) add(id int64, passwd []byte, timeout time.Duration, ss *session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.m[id] = &registered{passwd: passwd, timeout: timeout, ss: ss}
}

// lost records that the holder of id gave the session up.
func (r *registry) lost(id int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.m[id]; e != nil && e.ss != nil {
		e.ss, e.lostAt = nil, time.Now()
	}
}

func (r *registry) remove(id int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.m, id)
}

// get returns a copy of what is known of id, or nil.
func (r *registry) get(id int64) *registered {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	for k, e := range r.m {
		if e.ss == nil && now.Sub(e.lostAt) > lostRetention(e.timeout) {
			delete(r.m, k)
		}
	}
	e := r.m[id]
	if e == nil {
		return nil
	}
	c := *e
	return &c
}
